"""The ``otel_sidecar`` configurator: the OpenTelemetry SDK as the environment describes it, plus
what the sidecar's Sentry mapping needs from inside the app.

After the SDK's own set-up (exporters, sampler, resource, from the ``OTEL_*`` variables and the
distro's defaults) it adds: the resource attributes the environment leaves unset
(:mod:`~otel_sidecar.instrumentation.resource`), the local-root tracking behind ``set_user`` and
friends, exception frames on recorded exceptions, and the capture of stdlib and structlog logs
(unless ``OTEL_LOGS_EXPORTER=none``), the OTLP exporters' faster encoder
(:mod:`~otel_sidecar.instrumentation.encoding`), and a flush when uvicorn stops
(:mod:`~otel_sidecar.instrumentation.shutdown`). The SDK's own root-logger handler stays off: it
would send every stdlib record a second time.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from otel_sidecar.instrumentation import encoding, exceptions, logs, resource, settings, shutdown
from otel_sidecar.instrumentation import environment_variables as env
from otel_sidecar.instrumentation.scope import LOCAL_ROOTS


class SidecarConfigurator(_OTelSDKConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        kwargs.setdefault("setup_logging_handler", False)
        kwargs.setdefault("resource_attributes", resource.default_attributes())
        kwargs["span_processors"] = [*kwargs.get("span_processors", []), LOCAL_ROOTS]
        super()._configure(**kwargs)
        resource.hash_once(getattr(trace.get_tracer_provider(), "resource", None))
        encoding.install()
        detail = exceptions.Detail(
            variables=settings.flag(env.OTEL_SIDECAR_APP_LOCAL_VARIABLES),
            source=settings.flag(env.OTEL_SIDECAR_APP_SOURCE_CONTEXT),
        )
        exceptions.install(detail)
        shutdown.install()
        if os.environ.get("OTEL_LOGS_EXPORTER", "").strip().lower() != "none":
            logs.install(
                logs.Capture(
                    level=settings.level(env.OTEL_SIDECAR_APP_LOG_LEVEL),
                    uvicorn_level=settings.level(env.OTEL_SIDECAR_APP_UVICORN_LOG_LEVEL),
                    detail=detail,
                )
            )
