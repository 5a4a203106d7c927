"""The ``otel_sidecar`` OpenTelemetry distro: defaults first, then each instrumentation with the
options that keep Sentry free of noise.

``opentelemetry-instrument`` calls :meth:`SidecarDistro.configure` before the configurator
and the instrumentations load, so every default it sets (only where the app's environment sets
nothing) is in place when they read the environment.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.metrics import NoOpMeterProvider

from otel_sidecar.instrumentation import settings
from otel_sidecar.instrumentation.environment_variables import (
    OTEL_SIDECAR_APP_ASGI_EXCLUDE_SPANS,
    OTEL_SIDECAR_APP_DB_CONNECT_SPANS,
    OTEL_SIDECAR_APP_INSTRUMENTATION_METRICS,
)

_log = logging.getLogger(__name__)


class SidecarDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        settings.apply_otel_defaults()

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        options = dict(kwargs)
        if not settings.flag(OTEL_SIDECAR_APP_INSTRUMENTATION_METRICS):
            # The sidecar's key_metrics computes the same request and query numbers from every
            # span; recording them here too cost the app ~0.5 ms of CPU a request (the SDK
            # hashes and aggregates each measurement under a lock).
            options.setdefault("meter_provider", NoOpMeterProvider())
        if entry_point.name == "fastapi":
            from otel_sidecar.instrumentation import server  # imports the ASGI instrumentation

            server.install()
            options["exclude_spans"] = settings.names(OTEL_SIDECAR_APP_ASGI_EXCLUDE_SPANS)
        elif entry_point.name == "logging":
            # Trace ids for the app's own log format stay available; records are sent by our
            # capture (logs.py), not by a second handler on the root logger.
            options["enable_log_auto_instrumentation"] = False
        super().load_instrumentor(entry_point, **options)
        if entry_point.name == "sqlalchemy" and not settings.flag(
            OTEL_SIDECAR_APP_DB_CONNECT_SPANS
        ):
            _without_connect_spans()


def _without_connect_spans() -> None:
    """The SQLAlchemy instrumentation wraps ``Engine.connect`` in a ``connect`` span for every
    connection the pool opens: a span per pool miss that says nothing about the request."""
    try:
        from opentelemetry.instrumentation.utils import unwrap
        from sqlalchemy.engine.base import Engine

        unwrap(Engine, "connect")
    except Exception as error:  # a newer instrumentation may wrap it differently: keep going
        _log.debug("could not remove SQLAlchemy connect spans: %s", error)


def keep_child_processes_instrumented() -> None:
    """Once set up (an ``opentelemetry_post_instrument`` hook): the auto-instrumentation's
    directory back on ``PYTHONPATH``, so that the processes the app starts (uvicorn's
    ``--workers`` and ``--reload`` servers, which are spawned, not forked) set up too.
    opentelemetry-instrumentation takes it off while it sets up, lest a process started then
    set up again; before 0.63 (the last that runs on Python 3.9) it never put it back, and a
    worker's telemetry never arrived. Only where it was on ``PYTHONPATH`` when the process
    started, which put it on ``sys.path``."""
    from opentelemetry.instrumentation import auto_instrumentation

    directory = os.path.dirname(os.path.abspath(auto_instrumentation.__file__))
    current = os.environ.get("PYTHONPATH", "")
    started_with_it = directory in (os.path.abspath(entry) for entry in sys.path if entry)
    if started_with_it and directory not in current.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [directory, current]))
