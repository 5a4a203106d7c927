"""otel-sidecar's zero-code side, installed into the app's environment.

With it installed, ``opentelemetry-instrument uvicorn app:app`` sends the app's traces and logs
to the sidecar on localhost: the ``otel_sidecar`` distro sets the defaults
(:mod:`~otel_sidecar.instrumentation.settings`) and the configurator sets up the SDK, the
exception frames and the log capture. It imports neither the sidecar nor anything heavy here.

Optional enrichment with sentry_sdk's signatures (see :mod:`~otel_sidecar.instrumentation.scope`)::

    from otel_sidecar.instrumentation import capture_exception, set_context, set_tag, set_user
"""

from __future__ import annotations

from typing import Any

__all__ = ["capture_exception", "set_context", "set_tag", "set_user"]


def __getattr__(name: str) -> Any:
    # The helpers need the OpenTelemetry SDK; the distro's entry point must not pay for it.
    if name in __all__:
        from otel_sidecar.instrumentation import scope

        return getattr(scope, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
