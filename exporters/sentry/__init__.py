"""The Sentry exporter: OpenTelemetry traces and logs as Sentry transactions, errors and logs."""

from collector.component import TRACES_AND_LOGS, Kind
from exporters.sentry.exporter import SentryExporter, SentrySettings

# Registered as an entry point (pyproject.toml). Traces and logs: Sentry takes no OTLP metrics.
KIND = Kind(SentrySettings, SentryExporter, TRACES_AND_LOGS)

__all__ = ["KIND", "SentryExporter", "SentrySettings"]
