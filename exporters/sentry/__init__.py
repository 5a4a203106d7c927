"""The Sentry exporter: OpenTelemetry traces and logs as Sentry transactions, errors and logs."""

from exporters.sentry.exporter import SentryExporter, SentrySettings

__all__ = ["SentryExporter", "SentrySettings"]
