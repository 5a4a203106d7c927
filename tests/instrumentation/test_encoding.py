"""The app side's OTLP encoder against the SDK's own: every batch decodes to the message the
OpenTelemetry exporters' encoder builds, and the exporters send what it writes."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry import _logs, trace
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from otel_sidecar.instrumentation import encoding

VALUES: dict[str, Any] = {
    "text": "GET /api/lessons/{id}",
    "unicode": "Grüße, 世界 🚀",
    "empty": "",
    "yes": True,
    "no": False,
    "one": 1,  # the same key and value as a bool below must not share its encoding
    "zero": 0,
    "negative": -42,
    "big": 2**63 - 1,
    "smallest": -(2**63),
    "ratio": 0.25,
    "nan-free": -1e300,
    "words": ("a", "b", ""),
    "flags": (True, False),
    "numbers": (1, -1, 2**40),
    "floats": (1.5, -0.0),
    "nothing": (),
}


def spans_of(*providers: TracerProvider) -> list[Any]:
    return [span for provider in providers for span in provider.exported.get_finished_spans()]


def provider(resource: dict[str, Any], **limits: Any) -> TracerProvider:
    described = Resource(resource, schema_url="https://opentelemetry.io/schemas/1.21.0")
    made = TracerProvider(resource=described, span_limits=SpanLimits(**limits))
    made.exported = InMemorySpanExporter()
    made.add_span_processor(SimpleSpanProcessor(made.exported))
    return made


def varied_spans() -> list[Any]:
    """Spans of two resources and three scopes, interleaved, with every value type, events,
    links, statuses, trace state, remote and local parents and dropped counts."""
    app = provider({"service.name": "shop", "host.name": "pod-1", "build": 7})
    worker = provider({"service.name": "worker"}, max_span_attributes=3, max_events=1, max_links=1)
    http = app.get_tracer("opentelemetry.instrumentation.fastapi", "0.60b0")
    db = app.get_tracer("sqlalchemy", schema_url="https://opentelemetry.io/schemas/1.21.0",
                        attributes={"scope.kind": "orm"})  # fmt: skip
    jobs = worker.get_tracer("jobs")
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "x"), ("sentry", "s:1")]))  # fmt: skip
    with http.start_as_current_span(
        "GET /api/lessons/{id}", context=trace.set_span_in_context(trace.NonRecordingSpan(remote)),
        kind=SpanKind.SERVER, attributes=VALUES,
    ) as server:  # fmt: skip
        server.add_event("exception", {"exception.type": "ValueError", "exception.escaped": True})
        server.add_event("plain")
        with db.start_as_current_span("SELECT shop", kind=SpanKind.CLIENT) as query:
            query.set_attribute("db.statement", "SELECT 1")
            query.set_status(Status(StatusCode.ERROR, "no such table"))
        links = [Link(remote, {"why": "retry"}), Link(server.get_span_context())]
        with jobs.start_as_current_span("job", links=links) as job:
            for name, value in VALUES.items():
                job.set_attribute(name, value)  # over the limit of 3: dropped, counted
            job.add_event("one")
            job.add_event("two")  # over the limit of 1
        server.set_attribute("one", True)
        server.set_status(Status(StatusCode.OK))
    for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
        http.start_span("kind", kind=kind).end()
    return spans_of(app, worker)


def varied_logs() -> list[Any]:
    exported = InMemoryLogRecordExporter()
    made = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    limited = LoggerProvider(resource=Resource({"service.name": "proxy"}, schema_url="https://s"),
                             log_record_limits=LogRecordLimits(max_attributes=3))  # fmt: skip
    for each in (made, limited):
        each.add_log_record_processor(SimpleLogRecordProcessor(exported))
    app = made.get_logger("helloagents", "1.0", attributes={"scope.kind": "app"})
    access = made.get_logger("uvicorn.access")
    limited.get_logger("proxy").emit(_logs.LogRecord(body="dropping", attributes=VALUES))
    context = trace.set_span_in_context(
        trace.NonRecordingSpan(SpanContext(0xABC, 0xDEF, False, TraceFlags(1)))
    )
    app.emit(_logs.LogRecord(
        timestamp=1_700_000_000_000_000_001, observed_timestamp=1_700_000_000_000_000_002,
        context=context, severity_number=_logs.SeverityNumber.ERROR, severity_text="ERROR",
        body="lesson failed", event_name="lesson.failed",
        attributes={**VALUES, "user": {"id": 5, "tags": ["a", 1]}},
    ))  # fmt: skip
    access.emit(_logs.LogRecord(body={"message": "GET /", "status": 200, "nested": {"x": [1.5]}}))
    access.emit(_logs.LogRecord(body=["a", 2, None, b"\x00\xff"], severity_text="INFO"))
    app.emit(_logs.LogRecord(body=None, attributes={"only": "attributes"}))
    app.emit(_logs.LogRecord(body=b"raw bytes", severity_number=_logs.SeverityNumber.DEBUG))
    return list(exported.get_finished_logs())


def test_spans_decode_to_what_the_sdk_encodes() -> None:
    batch = varied_spans()
    ours = ExportTraceServiceRequest.FromString(encoding.spans_request(batch))
    assert ours == encode_spans(batch)
    assert len(ours.resource_spans) == 2 and len(ours.resource_spans[0].scope_spans) == 2


@pytest.mark.filterwarnings("ignore::UserWarning")  # the SDK's, for the attributes it drops
def test_log_records_decode_to_what_the_sdk_encodes() -> None:
    batch = varied_logs()
    ours = ExportLogsServiceRequest.FromString(encoding.logs_request(batch))
    assert ours == encode_logs(batch)
    assert ours.resource_logs[1].scope_logs[0].log_records[0].attributes  # not vacuous
    assert ours.resource_logs[0].scope_logs[0].log_records[0].dropped_attributes_count


def test_kept_encodings_stay_right_when_the_cache_starts_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoding, "_CACHE_SIZE", 8)
    monkeypatch.setattr(encoding, "_encoded", {})
    batch = varied_spans()
    for _ in range(3):  # cold, warm, and across clearings
        assert ExportTraceServiceRequest.FromString(encoding.spans_request(batch)) == encode_spans(
            batch
        )
    assert len(encoding._encoded) <= 8


@pytest.mark.parametrize(
    "values",
    [[(1, 2), (1.0, 2.0), (True, False), (1, True)], [0.0, -0.0], [1, True, 1.0]],
    ids=["tuples", "zeros", "numbers"],
)
def test_values_that_compare_equal_keep_their_own_types(values: list[Any]) -> None:
    """(1,) == (True,) == (1.0,) and 0.0 == -0.0 in Python: the encoding kept for one must not
    be sent for the other, one batch after another."""
    app = provider({"service.name": "shop"})
    for value in values:
        app.get_tracer("t").start_span("s", attributes={"same.key": value}).end()
        (span,) = app.exported.get_finished_spans()
        app.exported.clear()
        assert ExportTraceServiceRequest.FromString(encoding.spans_request([span])) == (
            encode_spans([span])
        ), value


def test_scopes_equal_but_for_their_attributes_types_are_told_apart() -> None:
    for flag in (1, True):
        scope = InstrumentationScope("t", attributes={"flag": flag})
        span = ReadableSpan(name="s", context=SpanContext(1, 2, False), resource=Resource({}),
                            instrumentation_scope=scope)  # fmt: skip
        ours = ExportTraceServiceRequest.FromString(encoding.spans_request([span]))
        assert ours == encode_spans([span]), flag


def test_a_span_class_that_overrides_its_attributes_is_encoded_as_it_says() -> None:
    """A redacting subclass: its public attributes are what is sent, not the raw ones."""

    class Redacted(ReadableSpan):
        @property
        def attributes(self) -> Any:
            return {key: "***" for key in super().attributes}

    span = Redacted(name="login", context=SpanContext(1, 2, False),
                    attributes={"password": "hunter2"}, resource=Resource({}))  # fmt: skip
    ours = ExportTraceServiceRequest.FromString(encoding.spans_request([span]))
    assert ours == encode_spans([span])
    assert b"hunter2" not in encoding.spans_request([span])


def test_a_value_otlp_cannot_carry_is_left_out_as_the_sdk_leaves_it_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Opaque:
        pass

    app = provider({"service.name": "shop"})
    span = app.get_tracer("t").start_span("s")
    span._attributes._dict["weird"] = Opaque()  # past the SDK's checks, as a buggy hook could
    span._attributes._dict["huge"] = 2**63  # a valid Python int, too big for OTLP's int64
    span._attributes._dict["fine"] = "yes"
    span.end()
    batch = spans_of(app)
    with caplog.at_level(logging.ERROR):
        ours = ExportTraceServiceRequest.FromString(encoding.spans_request(batch))
    assert ours == encode_spans(batch)
    assert [a.key for a in ours.resource_spans[0].scope_spans[0].spans[0].attributes] == ["fine"]
    assert "weird" in caplog.text and "huge" in caplog.text


class Sink:
    """A gRPC server with the OTLP trace and logs services, keeping what it is sent."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        handlers = {
            "opentelemetry.proto.collector.trace.v1.TraceService": (
                ExportTraceServiceRequest,
                ExportTraceServiceResponse,
            ),
            "opentelemetry.proto.collector.logs.v1.LogsService": (
                ExportLogsServiceRequest,
                ExportLogsServiceResponse,
            ),
        }
        for service, (request, response) in handlers.items():
            self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._keep(response), request.FromString, response.SerializeToString
                )
            })])  # fmt: skip
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _keep(self, response: Any) -> Any:
        def export(request: Any, context: Any) -> Any:
            self.requests.append(request)
            return response()

        return export


@pytest.fixture
def sink() -> Iterator[Sink]:
    made = Sink()
    yield made
    made.server.stop(None)


@pytest.fixture
def installed() -> Iterator[None]:
    encoding.install()
    yield
    encoding.uninstall()


def sent(exporter: Any, batch: Sequence[Any]) -> Any:
    try:
        exporter.export(batch)
    finally:
        exporter.shutdown()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_sdks_grpc_exporters_send_what_this_encodes(
    sink: Sink, installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    for name in ("spans_request", "logs_request"):
        real = getattr(encoding, name)
        monkeypatch.setattr(encoding, name, lambda b, real=real: calls.append(len(b)) or real(b))
    encoding.uninstall()
    encoding.install()  # with the counting encoders
    spans, logs = varied_spans(), varied_logs()
    endpoint = f"127.0.0.1:{sink.port}"
    sent(OTLPSpanExporter(endpoint=endpoint, insecure=True), spans)
    sent(OTLPLogExporter(endpoint=endpoint, insecure=True), logs)
    assert calls == [len(spans), len(logs)]
    assert sink.requests == [encode_spans(spans), encode_logs(logs)]


def test_a_batch_this_cannot_encode_goes_to_the_sdks_encoder(
    sink: Sink, installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(item: Any) -> bytes:
        raise AttributeError("an SDK this encoder does not know")

    monkeypatch.setattr(encoding, "span", broken)
    spans = varied_spans()
    sent(OTLPSpanExporter(endpoint=f"127.0.0.1:{sink.port}", insecure=True), spans)
    assert sink.requests == [encode_spans(spans)]


def test_uninstall_puts_the_sdks_encoder_back(installed: None) -> None:
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    assert trace_exporter.encode_spans is not encode_spans
    encoding.uninstall()
    assert trace_exporter.encode_spans is encode_spans
