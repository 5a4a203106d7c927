"""The OpenTelemetry SDK's own OTLP exporters, over gRPC and HTTP, send to a sidecar started
through its CLI; everything arrives in the file output with ids, attributes and resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from grpc import Compression as GrpcCompression
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, set_span_in_context

from tests.sidecar import Sidecar, attributes, logs_in, spans_in

RESOURCE = Resource.create({"service.name": "checkout", "service.version": "1.2.3"})


def grpc_exporters(sidecar: Sidecar, compression: Any = None) -> tuple[Any, Any]:
    endpoint = sidecar.endpoints["otlp_grpc"]
    return (
        GrpcSpans(endpoint=endpoint, insecure=True, compression=compression),
        GrpcLogs(endpoint=endpoint, insecure=True, compression=compression),
    )


def http_exporters(sidecar: Sidecar, compression: Any = None) -> tuple[Any, Any]:
    return (
        HttpSpans(endpoint=sidecar.url("/v1/traces"), compression=compression),
        HttpLogs(endpoint=sidecar.url("/v1/logs"), compression=compression),
    )


def grpc_gzip(sidecar: Sidecar) -> tuple[Any, Any]:
    return grpc_exporters(sidecar, GrpcCompression.Gzip)


def http_gzip(sidecar: Sidecar) -> tuple[Any, Any]:
    return http_exporters(sidecar, HttpCompression.Gzip)


@pytest.mark.parametrize(
    "transport",
    [grpc_exporters, http_exporters, grpc_gzip, http_gzip],
    ids=["grpc", "http", "grpc-gzip", "http-gzip"],
)
def test_spans_and_logs_arrive_intact(
    sidecar: Sidecar, transport: Callable[[Sidecar], tuple[Any, Any]]
) -> None:
    """Every span and log record reaches the file with the same ids, attributes and resource."""
    span_exporter, log_exporter = transport(sidecar)
    tracer_provider = TracerProvider(resource=RESOURCE)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=RESOURCE)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    tracer = tracer_provider.get_tracer("tests")
    logger = logger_provider.get_logger("tests")

    sent_spans = {}
    with tracer.start_as_current_span(
        "GET /items/{id}",
        kind=SpanKind.SERVER,
        attributes={"http.route": "/items/{id}", "http.response.status_code": 200},
    ) as root:
        for index in range(3):
            with tracer.start_as_current_span(
                "SELECT items", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite", "n": index}
            ) as c:
                sent_spans[c.get_span_context().span_id] = c
        logger.emit(
            body="item fetched",
            severity_number=SeverityNumber.INFO,
            attributes={"item.id": 42},
            context=set_span_in_context(root),
        )
    sent_spans[root.get_span_context().span_id] = root
    tracer_provider.shutdown()
    logger_provider.shutdown()
    assert sidecar.stop() == 0

    lines = sidecar.lines()
    received = {span["spanId"]: (resource, span) for resource, span in spans_in(lines)}
    assert set(received) == {f"{sid:016x}" for sid in sent_spans}
    for span_id, sent in sent_spans.items():
        resource, span = received[f"{span_id:016x}"]
        assert span["traceId"] == f"{sent.get_span_context().trace_id:032x}"
        assert span["name"] == sent.name
        assert attributes(span) == dict(sent.attributes)
        assert attributes(resource)["service.name"] == "checkout"
        assert attributes(resource)["service.version"] == "1.2.3"
        if sent.parent is not None:
            assert span["parentSpanId"] == f"{sent.parent.span_id:016x}"

    ((resource, record),) = logs_in(lines)
    assert record["body"] == {"stringValue": "item fetched"}
    assert record["severityNumber"] == SeverityNumber.INFO.value
    assert record["traceId"] == f"{root.get_span_context().trace_id:032x}"
    assert record["spanId"] == f"{root.get_span_context().span_id:016x}"
    assert attributes(record) == {"item.id": 42}
    assert attributes(resource)["service.name"] == "checkout"
