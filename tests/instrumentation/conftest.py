"""The zero-code side's capture, installed once in this process as the configurator installs it,
sending to the OpenTelemetry SDK's in-memory exporters (set as the global providers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import structlog
from opentelemetry import _logs, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_sidecar.instrumentation import exceptions, logs
from otel_sidecar.instrumentation.scope import LOCAL_ROOTS


@dataclass
class Captured:
    logs: InMemoryLogRecordExporter
    spans: InMemorySpanExporter
    tracer: trace.Tracer

    def records(self) -> list[_logs.LogRecord]:
        return [data.log_record for data in self.logs.get_finished_logs()]

    def clear(self) -> None:
        self.logs.clear()
        self.spans.clear()


@pytest.fixture(scope="package")
def installed() -> Iterator[Captured]:
    """For this package's tests only: the rest of the suite runs the SDK unpatched."""
    log_exporter, span_exporter = InMemoryLogRecordExporter(), InMemorySpanExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    _logs.set_logger_provider(logger_provider)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(LOCAL_ROOTS)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    trace.set_tracer_provider(tracer_provider)
    exceptions.install(exceptions.Detail())
    logs.install(logs.Capture(level=logging.INFO, uvicorn_level=logging.WARNING))
    yield Captured(log_exporter, span_exporter, tracer_provider.get_tracer("tests"))
    logs.uninstall()
    exceptions.uninstall()


@pytest.fixture
def captured(installed: Captured) -> Iterator[Captured]:
    installed.clear()
    yield installed
    structlog.reset_defaults()
