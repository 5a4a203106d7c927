"""otel-sidecar: an OpenTelemetry sidecar collector for Python services."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("otel-sidecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
