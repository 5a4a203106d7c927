"""The environment variables of otel-sidecar-instrumentation.

Registered as an ``opentelemetry_environment_variables`` entry point, so each is also an option
of ``opentelemetry-instrument`` (``OTEL_SIDECAR_APP_LOG_LEVEL`` → ``--sidecar_app_log_level``).
Defaults and meanings: :data:`otel_sidecar.instrumentation.settings.SIDECAR_SETTINGS`.
"""

OTEL_SIDECAR_APP_LOG_LEVEL = "OTEL_SIDECAR_APP_LOG_LEVEL"
"""The lowest level of the app's log records that are sent (``debug`` .. ``critical``)."""

OTEL_SIDECAR_APP_UVICORN_LOG_LEVEL = "OTEL_SIDECAR_APP_UVICORN_LOG_LEVEL"
"""The same for uvicorn's own loggers (``uvicorn.error``, ``uvicorn.access``)."""

OTEL_SIDECAR_APP_LOCAL_VARIABLES = "OTEL_SIDECAR_APP_LOCAL_VARIABLES"
"""``false``: exceptions carry no local variables of their frames."""

OTEL_SIDECAR_APP_SOURCE_CONTEXT = "OTEL_SIDECAR_APP_SOURCE_CONTEXT"
"""``false``: exceptions carry no source lines around their frames."""

OTEL_SIDECAR_APP_ASGI_EXCLUDE_SPANS = "OTEL_SIDECAR_APP_ASGI_EXCLUDE_SPANS"
"""ASGI ``receive`` / ``send`` spans left out of each request (comma-separated; empty: none)."""

OTEL_SIDECAR_APP_DB_CONNECT_SPANS = "OTEL_SIDECAR_APP_DB_CONNECT_SPANS"
"""``true``: SQLAlchemy's ``connect`` spans (a new pooled connection) are kept."""

OTEL_SIDECAR_APP_INSTRUMENTATION_METRICS = "OTEL_SIDECAR_APP_INSTRUMENTATION_METRICS"
"""``true``: the instrumentations record their own request, query and connection metrics."""
