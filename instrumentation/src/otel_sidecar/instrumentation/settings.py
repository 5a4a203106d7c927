"""Every default of the zero-code side, in one table (the README's table is checked against it).

``OTEL_DEFAULTS`` are standard OpenTelemetry variables: the distro sets each one only where the
app's environment does not, so the user's own value always wins. ``SIDECAR_SETTINGS`` are this
distribution's own variables, read where they are used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass

from otel_sidecar.instrumentation import environment_variables as env

GRPC_ENDPOINT = "http://127.0.0.1:4317"
HTTP_ENDPOINT = "http://127.0.0.1:4318"

# Kubernetes probes, metrics scrapes and browsers' icon requests: noise, not requests to trace.
EXCLUDED_URLS = ",".join(
    [
        r"//[^/]+/health(/[^?]*)?([?].*)?$",
        r"//[^/]+/metrics([?].*)?$",
        r"//[^/]+/favicon\.ico([?].*)?$",
    ]
)
# Headers that help debugging and carry no credential. Cookie and Authorization are never
# captured by default; the sidecar removes them anyway if a user opts in.
REQUEST_HEADERS = "user-agent,content-type,x-request-id,referer,x-forwarded-for,forwarded"


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    meaning: str


OTEL_DEFAULTS = (
    Setting("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "`http/protobuf` sends to port 4318"),
    Setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        GRPC_ENDPOINT,
        f"the sidecar in the same pod (`{HTTP_ENDPOINT}` with `http/protobuf`)",
    ),
    Setting("OTEL_TRACES_EXPORTER", "otlp", "traces go to the sidecar"),
    Setting("OTEL_LOGS_EXPORTER", "otlp", "logs go to the sidecar (`none`: no log capture)"),
    Setting(
        "OTEL_METRICS_EXPORTER",
        "otlp",
        "metrics the app records itself go to the sidecar's metrics pipelines (the default "
        "config writes them to its file; Sentry takes none)",
    ),
    Setting(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "128",
        "spans encoded per export (SDK: 512): shorter pauses of the app's requests, p99 -30 %",
    ),
    Setting("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "128", "the same for log records"),
    Setting(
        "OTEL_TRACES_SAMPLER",
        "otel_sidecar",
        "keep every request; drop database and HTTP-client spans outside any request "
        "(start-up work). The sidecar samples, consistently by trace id",
    ),
    Setting(
        "OTEL_PYTHON_EXCLUDED_URLS",
        EXCLUDED_URLS,
        "no spans for `/health*`, `/metrics`, `/favicon.ico`",
    ),
    Setting(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        REQUEST_HEADERS,
        "request headers recorded on the server span",
    ),
    Setting(
        "OTEL_PYTHON_CONFIGURATOR",
        "otel_sidecar",
        "this distribution's SDK set-up, even when other distros are installed",
    ),
)

SIDECAR_SETTINGS = (
    Setting(env.OTEL_SIDECAR_APP_LOG_LEVEL, "info", "lowest level of app log records sent"),
    Setting(env.OTEL_SIDECAR_APP_UVICORN_LOG_LEVEL, "info", "the same for `uvicorn.*` loggers"),
    Setting(
        env.OTEL_SIDECAR_APP_LOCAL_VARIABLES,
        "true",
        "exceptions carry each frame's local variables (repr, trimmed)",
    ),
    Setting(
        env.OTEL_SIDECAR_APP_SOURCE_CONTEXT,
        "true",
        "exceptions carry 5 source lines before and after each frame's line",
    ),
    Setting(
        env.OTEL_SIDECAR_APP_ASGI_EXCLUDE_SPANS,
        "receive,send",
        "ASGI message spans left out of requests (empty: keep them)",
    ),
    Setting(env.OTEL_SIDECAR_APP_DB_CONNECT_SPANS, "false", "SQLAlchemy `connect` spans"),
    Setting(
        env.OTEL_SIDECAR_APP_INSTRUMENTATION_METRICS,
        "false",
        "`true`: the FastAPI/ASGI, SQLAlchemy, httpx and requests instrumentations record "
        "their metrics (`http.server.duration`, `db.client.connections.usage`, "
        "`http.client.duration`, ...) in the app, ~0.5 ms of its CPU a request. Off, the "
        "sidecar's `key_metrics` gives request, query and outgoing-call durations and errors "
        "from every span (`http_server_request_duration_seconds`, ...); metrics the app "
        "records itself are sent either way",
    ),
)
_SIDECAR_DEFAULTS = {setting.name: setting.default for setting in SIDECAR_SETTINGS}

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def apply_otel_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each standard variable the app's environment leaves unset (or empty, as an env
    file's ``NAME=`` leaves it)."""
    for setting in OTEL_DEFAULTS:
        if environ.get(setting.name, "").strip():
            continue
        if setting.name == "OTEL_EXPORTER_OTLP_ENDPOINT":
            http = environ["OTEL_EXPORTER_OTLP_PROTOCOL"].startswith("http")
            environ[setting.name] = HTTP_ENDPOINT if http else GRPC_ENDPOINT
        else:
            environ[setting.name] = setting.default


def text(name: str) -> str:
    return os.environ.get(name, _SIDECAR_DEFAULTS[name]).strip()


def flag(name: str) -> bool:
    return text(name).lower() in ("true", "1", "yes", "on")


def names(name: str) -> list[str]:
    return [part.strip() for part in text(name).split(",") if part.strip()]


def level(name: str) -> int:
    """A log level by name; an unknown name falls back to the default, with a warning."""
    value = text(name).lower()
    if value not in _LEVELS:
        logging.getLogger(__name__).warning(
            "%s=%r is not a log level (debug, info, warning, error, critical); using %s",
            name,
            value,
            _SIDECAR_DEFAULTS[name],
        )
        value = _SIDECAR_DEFAULTS[name]
    return _LEVELS[value]
