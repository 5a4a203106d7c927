"""The Sentry exporter end to end: the OpenTelemetry SDK sends to a sidecar started through its
CLI, which sends envelopes to a capturing Sentry server; Relay's normaliser referees them."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from collector import sampling
from tests.sentry_sink import PUBLIC_KEY, SentrySink
from tests.sidecar import Sidecar

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
processors:
  sampler: {rate: RATE}
  scrubber: {}
  batch: {timeout: 20ms}
exporters:
  sentry:
    dsn: "DSN"
    environment: test
    release: shop@1.2.3
    transaction_wait: 100ms
    max_trace_wait: 1s
    retry_on_failure: {initial_interval: 50ms, max_interval: 100ms, max_elapsed_time: 1s}
service:
  grace_period: 10s
  pipelines:
    traces: {receivers: [otlp], processors: [sampler, scrubber, batch], exporters: [sentry]}
    logs: {receivers: [otlp], processors: [scrubber, batch], exporters: [sentry]}
"""
RESOURCE = Resource.create({"service.name": "shop", "service.version": "9.9.9"})


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    with SentrySink() as running:
        yield running
    assert running.referee_errors == [], "Relay's normaliser found errors"


def sidecar_for(sink: SentrySink, tmp_path: Path, rate: float = 1.0) -> Sidecar:
    config = CONFIG.replace("DSN", sink.dsn).replace("RATE", str(rate))
    return Sidecar(tmp_path, config)


class App:
    """An instrumented app: the SDK's own OTLP exporters pointed at the sidecar."""

    def __init__(self, sidecar: Sidecar, transport: str = "otlp_grpc") -> None:
        endpoint = sidecar.endpoints[transport]
        self.tracer_provider = TracerProvider(resource=RESOURCE)
        self.tracer_provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True))
        )
        self.logger_provider = LoggerProvider(resource=RESOURCE)
        self.logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True))
        )
        self.tracer = self.tracer_provider.get_tracer("shop")
        self.logger = self.logger_provider.get_logger("shop.api")

    def request(self, fail: str | None = None, trace_id: int | None = None) -> Any:
        """GET /items/{item_id}: a DB query, an HTTP call, a log line, maybe an exception."""
        attributes = {
            "http.request.method": "GET",
            "http.route": "/items/{item_id}",
            "url.path": "/items/7",
            "url.query": "token=abc123secret&page=2",
            "url.scheme": "https",
            "server.address": "shop.example",
            "http.request.header.authorization": ["Bearer abcdefghijklmnop"],
            "http.request.header.user-agent": ["pytest"],
            "enduser.id": "user-7",
            "sentry.tag.feature": "checkout",
            "sentry.context.code_execution.language": "python",
        }
        context = None
        if trace_id is not None:
            from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

            parent = SpanContext(trace_id, 1, is_remote=True, trace_flags=TraceFlags(1))
            context = set_span_in_context(NonRecordingSpan(parent))
        with self.tracer.start_as_current_span(
            "GET /items/{item_id}",
            kind=SpanKind.SERVER,
            attributes=attributes,
            context=context,
            record_exception=False,
            set_status_on_exception=False,
        ) as server:
            with self.tracer.start_as_current_span(
                "SELECT items",
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system.name": "postgresql",
                    "db.query.text": "SELECT * FROM items WHERE id = 7",
                },
            ):
                pass
            with self.tracer.start_as_current_span(
                "GET",
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": "GET",
                    "url.full": "http://pricing/v1/7?x=1",
                    "http.response.status_code": 200,
                },
            ):
                pass
            self.logger.emit(
                body="item loaded",
                severity_number=SeverityNumber.INFO,
                attributes={"item_id": 7},
                context=set_span_in_context(server),
            )
            if fail:
                try:
                    load_item(fail)
                except LookupError as error:
                    server.record_exception(error, attributes={"exception.escaped": True})
                    server.set_status(Status(StatusCode.ERROR))
                    server.set_attribute("http.response.status_code", 500)
            else:
                server.set_attribute("http.response.status_code", 200)
        return server

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()


def load_item(message: str) -> None:
    raise LookupError(message)


def trace_id_at(rate: float, kept: bool) -> int:
    """A random trace id that the sampler at ``rate`` keeps (or drops)."""
    while True:
        trace_id = os.urandom(16)
        if (sampling.randomness(trace_id) >= sampling.threshold(rate)) == kept:
            return int.from_bytes(trace_id, "big")


def test_transaction_with_its_spans_request_user_tags(sink: SentrySink, tmp_path: Path) -> None:
    with sidecar_for(sink, tmp_path) as sidecar:
        app = App(sidecar)
        server = app.request()
        app.close()
        sink.wait_for(lambda: sink.events("transaction") and sink.logs())
        assert sidecar.stop() == 0
    (event,) = sink.events("transaction")
    trace_id = f"{server.get_span_context().trace_id:032x}"
    assert event["transaction"] == "/items/{item_id}"
    assert event["transaction_info"] == {"source": "route"}
    assert event["contexts"]["trace"]["trace_id"] == trace_id
    assert event["contexts"]["trace"]["op"] == "http.server"
    assert event["contexts"]["trace"]["status"] == "ok"
    assert event["contexts"]["code_execution"] == {"language": "python"}
    assert event["contexts"]["otel"]["resource"]["service.name"] == "shop"
    ops = sorted((span["op"], span["description"]) for span in event["spans"])
    assert ops == [
        ("db", "SELECT * FROM items WHERE id = ?"),
        ("http.client", "GET http://pricing/v1/7"),
    ]
    assert event["request"]["method"] == "GET"
    assert event["request"]["url"] == "https://shop.example/items/7"
    assert event["request"]["query_string"] == [["token", "[Filtered]"], ["page", "2"]]
    assert "authorization" not in event["request"]["headers"]
    assert event["user"] == {"id": "user-7"}
    assert event["tags"]["feature"] == "checkout"
    assert event["tags"]["http.status_code"] == "200"
    assert event["tags"]["service"] == "shop"
    assert (event["environment"], event["release"], event["platform"]) == (
        "test",
        "shop@1.2.3",
        "python",
    )
    assert "abcdefghijklmnop" not in str(sink.received[0].envelope.serialize())

    request = next(r for r in sink.received if r.items("transaction"))
    assert request.headers["X-Sentry-Auth"].startswith(f"Sentry sentry_key={PUBLIC_KEY}, ")
    assert "sentry_version=7, sentry_client=otel-sidecar/" in request.headers["X-Sentry-Auth"]
    assert request.headers["Content-Encoding"] == "gzip"
    header = request.envelope.headers
    assert header["event_id"] == event["event_id"]
    assert header["dsn"] == sink.dsn and header["sent_at"]
    assert header["trace"]["trace_id"] == trace_id
    assert header["trace"]["public_key"] == PUBLIC_KEY
    assert header["trace"]["sample_rate"] == "1.0"
    assert header["trace"]["sampled"] == "true"
    assert float(header["trace"]["sample_rand"]) < 1.0
    assert header["trace"]["transaction"] == "/items/{item_id}"

    (log,) = sink.logs()
    assert log["body"] == "item loaded"
    assert log["level"] == "info"
    assert log["trace_id"] == trace_id
    assert log["attributes"]["item_id"] == {"value": 7, "type": "integer"}
    assert log["attributes"]["sentry.environment"] == {"value": "test", "type": "string"}
    assert log["attributes"]["sentry.release"] == {"value": "shop@1.2.3", "type": "string"}


def test_error_event_has_frames_request_and_breadcrumbs(sink: SentrySink, tmp_path: Path) -> None:
    with sidecar_for(sink, tmp_path) as sidecar:
        app = App(sidecar)
        server = app.request(fail="item 7 is gone")
        app.close()
        sink.wait_for(lambda: sink.events("event") and sink.events("transaction"))
        assert sidecar.stop() == 0
    (error,) = sink.events("event")
    (value,) = error["exception"]["values"]
    assert (value["type"], value["value"]) == ("LookupError", "item 7 is gone")
    assert value["mechanism"]["handled"] is False  # exception.escaped
    frames = value["stacktrace"]["frames"]
    assert frames[-1]["function"] == "load_item"
    assert frames[-1]["in_app"] is True
    assert frames[-1]["abs_path"] == __file__
    assert frames[-1]["context_line"] == "raise LookupError(message)"
    assert error["transaction"] == "/items/{item_id}"
    assert error["contexts"]["trace"]["span_id"] == f"{server.get_span_context().span_id:016x}"
    assert error["request"]["method"] == "GET"
    assert error["user"] == {"id": "user-7"}
    crumbs = error["breadcrumbs"]["values"]
    assert [c["category"] for c in crumbs] == ["query", "httplib", "shop.api"]
    request = next(r for r in sink.received if r.items("event"))
    assert request.envelope.headers["trace"]["sampled"] == "true"


def test_errors_of_unsampled_traces_still_arrive(sink: SentrySink, tmp_path: Path) -> None:
    """At rate 0.01 a dropped trace gives no transaction, but its error event arrives."""
    with sidecar_for(sink, tmp_path, rate=0.01) as sidecar:
        app = App(sidecar)
        app.request(fail="dropped but reported", trace_id=trace_id_at(0.01, kept=False))
        app.close()
        sink.wait_for(lambda: sink.events("event"))
        assert sidecar.stop() == 0
    assert sink.events("transaction") == []
    (error,) = sink.events("event")
    assert error["exception"]["values"][-1]["value"] == "dropped but reported"
    assert error["user"] == {"id": "user-7"}  # the dropped trace's segment came along
    request = next(r for r in sink.received if r.items("event"))
    trace = request.envelope.headers["trace"]
    assert trace["sampled"] == "false"
    assert trace["sample_rate"] == "0.01"
    assert not float(trace["sample_rand"]) < 0.01


TWO_RATES = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
  otlp/sampled: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
processors:
  sampler/half: {rate: 0.5}
  scrubber: {}
exporters:
  sentry: {dsn: "DSN", transaction_wait: 100ms, max_trace_wait: 1s}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [scrubber], exporters: [sentry]}
    traces/sampled:
      receivers: [otlp/sampled]
      processors: [sampler/half, scrubber]
      exporters: [sentry]
    logs: {receivers: [otlp, otlp/sampled], processors: [scrubber], exporters: [sentry]}
"""


def test_each_pipeline_s_rate_reaches_the_trace_header(sink: SentrySink, tmp_path: Path) -> None:
    """One Sentry exporter fed by two traces pipelines, one sampling at 0.5: each transaction's
    trace header carries the rate its own pipeline kept it at (the sampler writes it into the
    spans' tracestate, ``ot=th:8``)."""
    kept = trace_id_at(0.5, kept=True)
    with Sidecar(tmp_path, TWO_RATES.replace("DSN", sink.dsn)) as sidecar:
        for transport in ("otlp_grpc", "otlp/sampled_grpc"):
            app = App(sidecar, transport)
            app.request(trace_id=kept)
            app.close()
        sink.wait_for(lambda: len(sink.events("transaction")) == 2)
    headers = [r.envelope.headers["trace"] for r in sink.received if r.items("transaction")]
    assert sorted(h["sample_rate"] for h in headers) == ["0.5", "1.0"]
    assert all(h["sampled"] == "true" for h in headers)


def test_exception_logs_become_errors_once(sink: SentrySink, tmp_path: Path) -> None:
    """A log record with exception.* (as FastAPI emits) becomes an error event; the same
    exception also recorded on the span is not sent twice."""
    with sidecar_for(sink, tmp_path) as sidecar:
        app = App(sidecar)
        with app.tracer.start_as_current_span(
            "GET /pay",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/pay"},
        ) as span:
            try:
                load_item("payment service down")
            except LookupError as error:
                span.record_exception(error)
                app.logger.emit(
                    body="request failed",
                    severity_number=SeverityNumber.ERROR,
                    exception=error,
                    context=set_span_in_context(span),
                )
        app.logger.emit(
            body="no trace here",
            severity_number=SeverityNumber.ERROR,
            attributes={"exception.type": "ValueError", "exception.message": "bad input"},
        )
        app.close()
        sink.wait_for(lambda: len(sink.events("event")) >= 2 and sink.events("transaction"))
        assert sidecar.stop() == 0
    errors = sorted(sink.events("event"), key=lambda e: e["exception"]["values"][-1]["type"])
    assert [e["exception"]["values"][-1]["type"] for e in errors] == ["LookupError", "ValueError"]
    assert errors[0]["transaction"] == "/pay"
    assert errors[1]["logger"] == "shop.api"
    assert {log["level"] for log in sink.logs()} == {"error"}


def test_sentry_never_seen_in_sidecar_output(sink: SentrySink, tmp_path: Path) -> None:
    """No DSN or key in the sidecar's own logs."""
    sink.answer(500, times=50)
    with sidecar_for(sink, tmp_path) as sidecar:
        app = App(sidecar)
        app.request(fail="x")
        app.close()
        sink.wait_for(lambda: len(sink.received) >= 2)
        assert sidecar.stop() == 0
    output = str(sidecar.events) + sidecar.stderr
    assert PUBLIC_KEY not in output
    assert sink.dsn not in output


def test_gzip_body_is_a_valid_envelope(sink: SentrySink) -> None:
    """Sanity of the sink itself: it reads what sentry_sdk writes."""
    import urllib.request

    from sentry_sdk.envelope import Envelope

    envelope = Envelope(headers={"event_id": "a" * 32})
    envelope.add_event({"event_id": "a" * 32, "message": "hi"})
    request = urllib.request.Request(
        f"http://127.0.0.1:{sink.port}/api/42/envelope/",
        method="POST",
        data=gzip.compress(envelope.serialize()),
        headers={"Content-Encoding": "gzip"},
    )
    urllib.request.urlopen(request, timeout=10).read()
    assert sink.events("event")[0]["message"] == "hi"


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("the sidecar targets Linux pods")
