"""The Sentry exporter against a capturing Sentry server: segment assembly across batches,
orphans, rate limits per category, 429 without headers, 413, 500-then-200, client reports."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector.component import Refused
from collector.settings import ConfigError, Duration
from exporters.retry import QueueSettings, RetrySettings
from exporters.sentry import SentryExporter, SentrySettings
from tests.sentry_sink import SentrySink

NOW = time.time_ns()
MS = 1_000_000


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    with SentrySink() as running:
        yield running
    assert running.referee_errors == []


def settings(sink: SentrySink, **overrides: Any) -> SentrySettings:
    base: dict[str, Any] = {
        "dsn": sink.dsn,
        "environment": "test",
        "transaction_wait": Duration(0.05),
        "max_trace_wait": Duration(0.5),
        "retry_on_failure": RetrySettings(
            initial_interval=Duration(0.05),
            max_interval=Duration(0.1),
            max_elapsed_time=Duration(1),
        ),
    }
    return SentrySettings(**{**base, **overrides})


def run(
    sink: SentrySink, scenario: Callable[[SentryExporter], Awaitable[None]], **overrides: Any
) -> None:
    async def main() -> None:
        exporter = SentryExporter("sentry", settings(sink, **overrides))
        await exporter.start()
        try:
            await scenario(exporter)
        finally:
            await exporter.shutdown()

    asyncio.run(main())


class Trace:
    """Spans of one trace, built as the OTel SDK would export them."""

    def __init__(self) -> None:
        self.trace_id = os.urandom(16)

    def span(
        self,
        name: str,
        parent: Span | None = None,
        kind: int = Span.SPAN_KIND_INTERNAL,
        error: bool = False,
        **attributes: Any,
    ) -> Span:
        span = Span(
            trace_id=self.trace_id,
            span_id=os.urandom(8),
            name=name,
            kind=kind,
            parent_span_id=parent.span_id if parent else b"",
            start_time_unix_nano=NOW,
            end_time_unix_nano=NOW + 5 * MS,
        )
        for key, value in attributes.items():
            span.attributes.add(key=key).value.string_value = value
        if error:
            event = span.events.add(name="exception", time_unix_nano=NOW + MS)
            event.attributes.add(key="exception.type").value.string_value = "KeyError"
            event.attributes.add(key="exception.message").value.string_value = "'sku'"
        return span


def batch(*spans: Span) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "shop"
    resource_spans.scope_spans.add().spans.extend(spans)
    return request


async def until(condition: Callable[[], Any], within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_segment_assembled_across_batches(sink: SentrySink) -> None:
    """Children sent before their root and one sent after it all join one transaction."""
    trace = Trace()
    root = trace.span(
        "GET /cart",
        kind=Span.SPAN_KIND_SERVER,
        **{"http.request.method": "GET", "http.route": "/cart"},
    )
    db = trace.span(
        "SELECT", root, Span.SPAN_KIND_CLIENT, **{"db.system": "sqlite", "db.statement": "SELECT 1"}
    )
    internal = trace.span("render", root)
    late_child = trace.span("audit", internal)

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(db, internal))
        await asyncio.sleep(0.1)
        await exporter.consume(batch(root))
        await exporter.consume(batch(late_child))  # within transaction_wait of the root
        await until(lambda: sink.events("transaction"))

    run(sink, scenario, transaction_wait=Duration(0.3), transaction_style="method_route")
    (event,) = sink.events("transaction")
    assert event["transaction"] == "GET /cart"  # the style chosen
    assert sorted(s["description"] for s in event["spans"]) == ["SELECT 1", "audit", "render"]
    by_id = {s["span_id"]: s for s in event["spans"]}
    assert by_id[late_child.span_id.hex()]["parent_span_id"] == internal.span_id.hex()


def test_orphans_are_emitted_as_is_after_the_wait(sink: SentrySink) -> None:
    """Spans whose segment never comes leave after max_trace_wait, the top-most as root."""
    trace = Trace()
    missing_root = trace.span("GET /lost", kind=Span.SPAN_KIND_SERVER)
    orphan = trace.span("work", missing_root)
    grandchild = trace.span("SELECT", orphan, Span.SPAN_KIND_CLIENT, **{"db.system": "sqlite"})

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(orphan, grandchild))
        await asyncio.sleep(0.2)
        assert sink.events("transaction") == []  # still waiting for the root
        await until(lambda: sink.events("transaction"))

    run(sink, scenario)
    (event,) = sink.events("transaction")
    assert event["transaction"] == "work"
    assert event["contexts"]["trace"]["span_id"] == orphan.span_id.hex()
    assert [s["span_id"] for s in event["spans"]] == [grandchild.span_id.hex()]


def test_late_span_after_its_segment_left_is_counted_not_sent(sink: SentrySink) -> None:
    trace = Trace()
    root = trace.span("GET /", kind=Span.SPAN_KIND_SERVER)

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(root))
        await until(lambda: sink.events("transaction"))
        await exporter.consume(batch(trace.span("too late", root, error=True)))
        await until(lambda: sink.events("event"))  # its error still goes out

    run(sink, scenario)
    assert len(sink.events("transaction")) == 1


def test_rate_limited_category_is_dropped_before_sending(sink: SentrySink) -> None:
    """X-Sentry-Rate-Limits on transactions: transactions are dropped and reported, errors
    still go."""
    sink.answer(200, X_Sentry_Rate_Limits="60:transaction:organization")

    async def scenario(exporter: SentryExporter) -> None:
        first = Trace()
        await exporter.consume(batch(first.span("GET /a", kind=Span.SPAN_KIND_SERVER)))
        await until(lambda: len(sink.received) == 1)
        second = Trace()
        await exporter.consume(batch(second.span("GET /b", kind=Span.SPAN_KIND_SERVER, error=True)))
        await until(lambda: sink.events("event"))

    run(sink, scenario)
    assert [e["transaction"] for e in sink.events("transaction")] == ["GET /a"]
    assert len(sink.events("event")) == 1
    assert {"reason": "ratelimit_backoff", "category": "transaction", "quantity": 1} in (
        sink.client_reports()
    )


def test_429_without_headers_blocks_everything_for_60_s(sink: SentrySink) -> None:
    sink.answer(429)

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(Trace().span("GET /a", kind=Span.SPAN_KIND_SERVER)))
        await until(lambda: len(sink.received) == 1)
        for _ in range(3):
            await exporter.consume(batch(Trace().span("x", kind=Span.SPAN_KIND_SERVER, error=True)))
        await asyncio.sleep(0.5)
        assert exporter._transport is not None and exporter._transport.is_limited("error")

    run(sink, scenario)
    assert len(sink.received) == 1  # nothing else was even tried


def test_413_is_dropped_not_retried_and_reported(sink: SentrySink) -> None:
    sink.answer(413)

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(Trace().span("GET /big", kind=Span.SPAN_KIND_SERVER)))
        await until(lambda: len(sink.received) == 1)
        await asyncio.sleep(0.3)
        assert len(sink.received) == 1
        await exporter.consume(batch(Trace().span("GET /next", kind=Span.SPAN_KIND_SERVER)))
        await until(lambda: sink.events("transaction"))

    run(sink, scenario)
    assert [e["transaction"] for e in sink.events("transaction")] == ["GET /next"]
    assert {"reason": "send_error", "category": "transaction", "quantity": 1} in (
        sink.client_reports()
    )


def test_500_then_200_is_retried_and_delivered_once(sink: SentrySink) -> None:
    sink.answer(500)
    sink.answer(503)

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(Trace().span("GET /flaky", kind=Span.SPAN_KIND_SERVER)))
        await until(lambda: sink.events("transaction"))

    run(sink, scenario)
    assert [r.status for r in sink.received] == [500, 503, 200]
    assert len(sink.events("transaction")) == 1


def test_dead_sentry_gives_up_after_max_elapsed_time(sink: SentrySink) -> None:
    sink.answer(500, times=100)

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(Trace().span("GET /", kind=Span.SPAN_KIND_SERVER)))
        await asyncio.sleep(1.5)

    run(sink, scenario)
    attempts = len(sink.received)
    assert 2 <= attempts < 30  # bounded by max_elapsed_time, not forever
    assert sink.events("transaction") == []


def test_full_queue_refuses_at_the_door_and_drops_nothing(sink: SentrySink) -> None:
    """Sentry failing: while the queue is full the exporter refuses new batches (the
    pipeline's door asks it first; the client sends them again later); what it let in is
    delivered once Sentry answers, nothing dropped."""
    sink.answer(500, times=8)  # the first envelope is retried while the second waits

    async def scenario(exporter: SentryExporter) -> None:
        def refuses() -> bool:
            try:
                exporter.admit()
            except Refused as refusal:
                return refusal.reason == "queue_full"
            return False

        for _ in range(2):
            exporter.admit()
            await exporter.consume(batch(Trace().span("GET /", kind=Span.SPAN_KIND_SERVER)))
        await until(refuses)
        await until(lambda: len(sink.events("transaction")) == 2)
        assert not refuses()

    retry = RetrySettings(initial_interval=Duration(0.2), max_interval=Duration(0.2),
                          max_elapsed_time=Duration(10))  # fmt: skip
    run(sink, scenario, sending_queue=QueueSettings(queue_size=1, num_consumers=1),
        retry_on_failure=retry)  # fmt: skip
    assert not [r for r in sink.client_reports() if r["reason"] == "queue_overflow"]


def test_full_queue_drops_and_reports_overflow_when_told_to(sink: SentrySink) -> None:
    sink.answer(500, times=3)

    async def scenario(exporter: SentryExporter) -> None:
        for _ in range(5):  # one in flight, one queued, three overflow
            await exporter.consume(batch(Trace().span("GET /", kind=Span.SPAN_KIND_SERVER)))
            await asyncio.sleep(0.1)
        await until(lambda: any(r.items("client_report") for r in sink.received))

    queue = QueueSettings(queue_size=1, num_consumers=1, when_full="drop")
    run(sink, scenario, sending_queue=queue)
    reports = [r for r in sink.client_reports() if r["reason"] == "queue_overflow"]
    assert sum(r["quantity"] for r in reports) >= 2


def test_empty_dsn_is_disabled() -> None:
    exporter = SentryExporter("sentry", SentrySettings(dsn=""))
    assert exporter.status() == ("disabled", "no DSN configured (set SENTRY_DSN)")
    asyncio.run(exporter.consume(batch(Trace().span("x"))))  # takes it, sends nothing


def test_invalid_dsn_fails_the_start_without_showing_it() -> None:
    secret = "https://not-a-dsn-but-a-secret"
    with pytest.raises(ConfigError) as error:
        SentrySettings(dsn=secret).check("exporters.sentry")
    assert str(error.value).startswith("exporters.sentry.dsn: not a valid Sentry DSN")
    assert secret not in str(error.value)


def test_status_names_project_never_key(sink: SentrySink) -> None:
    exporter = SentryExporter("sentry", settings(sink))
    state, message = exporter.status()
    assert state == "healthy" and "project 42" in message
    assert "0123456789abcdef" not in message


def test_awkward_values_still_give_valid_events(sink: SentrySink) -> None:
    """Bytes, NaN, infinite status codes and credential-bearing URLs are sent, not fatal."""
    trace = Trace()
    root = trace.span("GET /odd", kind=Span.SPAN_KIND_SERVER, **{"http.request.method": "GET"})
    root.attributes.add(key="raw").value.bytes_value = b"\x00\xff"
    root.attributes.add(key="ratio").value.double_value = float("nan")
    root.attributes.add(key="http.response.status_code").value.double_value = float("inf")
    client = trace.span(
        "GET",
        root,
        Span.SPAN_KIND_CLIENT,
        **{"http.request.method": "GET", "url.full": "https://[Filtered]@api.example/x"},
    )
    broken = trace.span(
        "GET",
        root,
        Span.SPAN_KIND_CLIENT,
        error=True,
        **{"http.request.method": "GET", "url.full": "http://[::1/x"},
    )

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(client, broken, root))
        await until(lambda: sink.events("transaction") and sink.events("event"))
        assert exporter._tick is not None and not exporter._tick.done()

    run(sink, scenario)
    (event,) = sink.events("transaction")
    assert event["contexts"]["trace"]["data"]["ratio"] == "nan"
    assert event["contexts"]["trace"]["data"]["raw"] == "AP8="


@pytest.mark.parametrize("shape", ["self-parent", "cycle", "duplicate-id"])
def test_bad_parent_ids_never_hang_or_stop_the_exporter(sink: SentrySink, shape: str) -> None:
    trace = Trace()
    a = trace.span("a")
    b = trace.span("b", a)
    if shape == "self-parent":
        a.parent_span_id = a.span_id
        spans = [a]
    elif shape == "cycle":
        a.parent_span_id = b.span_id
        spans = [a, b]
    else:  # a server span, then another span re-using its id with itself as parent
        a.kind = Span.SPAN_KIND_SERVER
        twin = trace.span("twin", a)
        twin.span_id = a.span_id
        spans = [a, twin]

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(*spans))
        await exporter.consume(batch(Trace().span("GET /after", kind=Span.SPAN_KIND_SERVER)))
        await until(lambda: "GET /after" in [e["transaction"] for e in sink.events("transaction")])

    run(sink, scenario)


def test_a_transaction_keeps_at_most_1000_spans(sink: SentrySink) -> None:
    trace = Trace()
    root = trace.span("GET /big", kind=Span.SPAN_KIND_SERVER)
    children = [trace.span(f"step {i}", root) for i in range(1500)]

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(*children, root))
        await until(lambda: sink.events("transaction"))

    run(sink, scenario)
    assert len(sink.events("transaction")[0]["spans"]) == 1000


def test_retry_after_is_bounded(sink: SentrySink) -> None:
    from exporters.sentry.transport import MAX_RATE_LIMIT_S, parse_rate_limits, retry_after_seconds

    assert retry_after_seconds("1e999") == MAX_RATE_LIMIT_S
    assert parse_rate_limits("1e999::organization", 0.0) == {"*": MAX_RATE_LIMIT_S}
    assert parse_rate_limits("60:error;transaction:key, junk", 10.0) == {
        "error": 70.0,
        "transaction": 70.0,
    }


def test_an_exception_escaping_nested_spans_is_one_error(sink: SentrySink) -> None:
    """Recorded on the HTTP client span, then again on the request's: one error event, from
    the outermost record. The same error on two sibling spans is two errors."""
    trace = Trace()
    root = trace.span("GET /cart", kind=Span.SPAN_KIND_SERVER, error=True)
    client = trace.span("GET pricing", root, Span.SPAN_KIND_CLIENT, error=True)
    connect = trace.span("connect", client, error=True)
    siblings = Trace()
    job = siblings.span("job", kind=Span.SPAN_KIND_SERVER)
    retries = [siblings.span("attempt", job, error=True) for _ in range(2)]

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(connect, client, root, *retries, job))
        await until(lambda: len(sink.events()) >= 3)
        await asyncio.sleep(0.3)  # nothing more comes

    run(sink, scenario)
    errors = sink.events()
    assert sorted(e["contexts"]["trace"]["span_id"] for e in errors) == sorted(
        [root.span_id.hex(), *(r.span_id.hex() for r in retries)]
    )


def test_an_oversized_error_sheds_its_variables_and_still_leaves(sink: SentrySink) -> None:
    """Sentry refuses events over 1 MiB: 400,000 CJK characters in variables are 1.2 MB as
    UTF-8 JSON; the event leaves without them, frames intact."""
    frame = {"function": "f", "filename": "app.py", "lineno": 3, "in_app": True,
             "context_line": "    boom()", "vars": {"text": "字" * 400_000}}  # fmt: skip
    chain = json.dumps([{"type": "E", "value": "v", "frames": [frame]}], ensure_ascii=False)
    trace = Trace()
    root = trace.span("GET /x", kind=Span.SPAN_KIND_SERVER, error=True)
    root.events[0].attributes.add(key="otel_sidecar.exception.chain").value.string_value = chain

    async def scenario(exporter: SentryExporter) -> None:
        await exporter.consume(batch(root))
        await until(lambda: sink.events())

    run(sink, scenario)
    (error,) = sink.events()
    (sent,) = error["exception"]["values"][-1]["stacktrace"]["frames"]
    assert sent["context_line"] == "    boom()" and "vars" not in sent
