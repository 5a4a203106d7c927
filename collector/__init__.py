"""otel-sidecar: an OpenTelemetry sidecar collector for Python services."""

import sys
from importlib.metadata import PackageNotFoundError, version


def _import_structlog_without_pretty_tracebacks() -> None:
    """structlog imports its development renderer, which imports rich or better_exceptions
    when they are installed, for pretty tracebacks the sidecar never prints (it writes JSON
    lines): 15 MiB of memory and 0.1 s of start-up. They are hidden from that first import
    only; a component that wants rich still gets it."""
    hidden = [name for name in ("rich", "better_exceptions") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


_import_structlog_without_pretty_tracebacks()

try:
    __version__ = version("otel-sidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
