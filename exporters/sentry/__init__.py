"""The Sentry exporter: OpenTelemetry traces and logs as Sentry transactions, errors and logs."""

from collector.component import Kind
from exporters.sentry.exporter import SentryExporter, SentrySettings

KIND = Kind(SentrySettings, SentryExporter)  # registered as an entry point (pyproject.toml)

__all__ = ["KIND", "SentryExporter", "SentrySettings"]
