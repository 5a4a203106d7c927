"""otel-sidecar: an OpenTelemetry sidecar collector for Python services."""

import sys
from importlib.metadata import PackageNotFoundError, version

# structlog imports its development renderer, which imports rich or better_exceptions when
# they are installed, for pretty tracebacks the sidecar never prints (it writes JSON lines):
# 15 MiB of memory and 0.1 s of start-up for nothing. They stay out of the sidecar's process.
for _pretty in ("rich", "better_exceptions"):
    sys.modules.setdefault(_pretty, None)  # type: ignore[assignment]

try:
    __version__ = version("otel-sidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
