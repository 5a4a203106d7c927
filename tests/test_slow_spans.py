"""Slow spans: marked with slow=true and logged as the slow-request JSON line, before sampling."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector.attributes import first
from collector.processors.slow_spans import SlowSpans, SlowSpansSettings
from collector.signals import Signal
from collector.telemetry import LineBudget
from tests.sidecar import BASIC_CONFIG, Sidecar, attributes, spans_in
from tests.test_receivers import grpc_export

MS = 1_000_000
START = 1_700_000_000_000_000_000


def span_batch(kind: int, duration_ms: float, **attrs: Any) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    span = (
        request.resource_spans.add()
        .scope_spans.add()
        .spans.add(
            trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
            span_id=os.urandom(8),
            name="span",
            kind=kind,
            start_time_unix_nano=START,
            end_time_unix_nano=START + int(duration_ms * MS),
        )
    )
    for key, value in attrs.items():
        any_value = span.attributes.add(key=key.replace("__", ".")).value
        if isinstance(value, int):
            any_value.int_value = value
        else:
            any_value.string_value = value
    return request


def run(batch: ExportTraceServiceRequest, **settings: float) -> list[dict[str, Any]]:
    processor = SlowSpans("slow_spans", SlowSpansSettings(**settings), Signal.TRACES, None)
    with structlog.testing.capture_logs() as logs:
        processor.mark(batch)
    return logs


def the_span(batch: ExportTraceServiceRequest) -> Span:
    return batch.resource_spans[0].scope_spans[0].spans[0]


class TestServerSpans:
    def test_stable_conventions(self) -> None:
        batch = span_batch(
            Span.SPAN_KIND_SERVER,
            1523.45,
            http__route="/api/execute",
            http__request__method="POST",
            enduser__id="123",
        )
        (line,) = run(batch)
        assert line == {
            "event": "slow_request",
            "log_level": "warning",
            "path": "/api/execute",
            "method": "POST",
            "duration_ms": 1523.45,
            "threshold_ms": 1000.0,
            "user_id": "123",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
        }
        assert first(the_span(batch).attributes, "slow") is True

    def test_old_conventions_and_no_user(self) -> None:
        batch = span_batch(
            Span.SPAN_KIND_SERVER, 2000, http__target="/items?id=4", http__method="GET"
        )
        (line,) = run(batch)
        assert (line["path"], line["method"], line["user_id"]) == ("/items", "GET", None)

    def test_url_path_when_no_route(self) -> None:
        batch = span_batch(Span.SPAN_KIND_SERVER, 1001, url__path="/health")
        assert run(batch)[0]["path"] == "/health"

    def test_under_threshold_is_silent_and_unmarked(self) -> None:
        batch = span_batch(Span.SPAN_KIND_SERVER, 999.9, http__route="/fast")
        assert run(batch) == []
        assert first(the_span(batch).attributes, "slow") is None

    def test_threshold_is_configurable(self) -> None:
        batch = span_batch(Span.SPAN_KIND_SERVER, 300, http__route="/x")
        (line,) = run(batch, threshold_ms=250)
        assert line["threshold_ms"] == 250.0

    def test_client_spans_without_db_are_not_slow_requests(self) -> None:
        assert run(span_batch(Span.SPAN_KIND_CLIENT, 5000, http__request__method="GET")) == []
        assert run(span_batch(Span.SPAN_KIND_INTERNAL, 5000)) == []


class TestDbSpans:
    @pytest.mark.parametrize(
        ("statement_key", "system_key"),
        [("db__query__text", "db__system__name"), ("db__statement", "db__system")],
        ids=["stable", "old"],
    )
    def test_slow_query_line_with_scrubbed_statement(
        self, statement_key: str, system_key: str
    ) -> None:
        batch = span_batch(
            Span.SPAN_KIND_CLIENT,
            150.5,
            **{
                statement_key: "SELECT * FROM users WHERE email = 'a@b.example' AND id = 42",
                system_key: "postgresql",
                "enduser__id": "7",
            },
        )
        (line,) = run(batch)
        assert line == {
            "event": "slow_query",
            "log_level": "warning",
            "statement": "SELECT * FROM users WHERE email = ? AND id = ?",
            "db_system": "postgresql",
            "duration_ms": 150.5,
            "threshold_ms": 100.0,
            "user_id": "7",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
        }
        assert first(the_span(batch).attributes, "slow") is True

    def test_fast_query_is_silent(self) -> None:
        batch = span_batch(Span.SPAN_KIND_CLIENT, 99, db__system="sqlite", db__statement="x")
        assert run(batch) == []


def test_secrets_in_the_line_are_scrubbed() -> None:
    batch = span_batch(
        Span.SPAN_KIND_SERVER, 1500, url__path="/reset/Bearer abcdefghijklmnopqrstuvwxyz0123456789"
    )
    line = run(batch)[0]
    assert "abcdefghijklmnopqrstuvwxyz0123456789" not in str(line)


SLOW_CONFIG = BASIC_CONFIG.replace(
    "processors:\n", "processors:\n  slow_spans: {}\n  sampler: {rate: 0}\n"
).replace(
    "processors: [batch], exporters: [file]}\n    logs",
    "processors: [slow_spans, sampler, batch], exporters: [file]}\n    logs",
)


def test_sidecar_logs_slow_spans_of_traces_the_sampler_drops(tmp_path: Path) -> None:
    """slow_spans runs before the sampler: even at rate 0 every slow request is logged."""
    with Sidecar(tmp_path, SLOW_CONFIG) as sidecar:
        batch = span_batch(
            Span.SPAN_KIND_SERVER, 1200, http__route="/slow", http__request__method="GET"
        )
        assert isinstance(grpc_export(sidecar, batch.SerializeToString()), bytes)
        assert sidecar.stop() == 0
    (line,) = sidecar.named("slow_request")
    assert (line["path"], line["duration_ms"], line["level"]) == ("/slow", 1200.0, "warning")
    assert spans_in(sidecar.lines()) == []


def test_slow_attribute_reaches_the_exporters(tmp_path: Path) -> None:
    config = SLOW_CONFIG.replace("sampler: {rate: 0}", "sampler: {rate: 1}")
    with Sidecar(tmp_path, config) as sidecar:
        batch = span_batch(Span.SPAN_KIND_SERVER, 1200, http__route="/slow")
        assert isinstance(grpc_export(sidecar, batch.SerializeToString()), bytes)
        assert sidecar.stop() == 0
    ((_, span),) = spans_in(sidecar.lines())
    assert attributes(span)["slow"] is True


def test_configured_scrub_rules_apply_to_the_log_line(tmp_path: Path) -> None:
    """The pipeline's scrubber rules, custom ones included, scrub the slow_request line."""
    config = SLOW_CONFIG.replace(
        "sampler: {rate: 0}", 'sampler: {rate: 0}\n  scrubber: {filter_values: ["ACME-[0-9]{8}"]}'
    ).replace("[slow_spans, sampler, batch]", "[slow_spans, sampler, scrubber, batch]")
    with Sidecar(tmp_path, config) as sidecar:
        batch = span_batch(Span.SPAN_KIND_SERVER, 1200, url__path="/orders/ACME-12345678")
        assert isinstance(grpc_export(sidecar, batch.SerializeToString()), bytes)
        assert sidecar.stop() == 0
    (line,) = sidecar.named("slow_request")
    assert line["path"] == "/orders/[Filtered]"


def test_array_and_map_values_are_scrubbed_in_the_log_line() -> None:
    """A client controls the types: an array route or a map user must not carry secrets out."""
    batch = span_batch(Span.SPAN_KIND_SERVER, 1500, http__request__method="GET")
    attributes = the_span(batch).attributes
    route = attributes.add(key="http.route").value.array_value.values
    route.add().string_value = "/x?token=S3cr3tValue9"
    route.add().string_value = "Bearer S3cr3tTok2abcdefgh"
    user = attributes.add(key="enduser.id").value.kvlist_value.values
    user.add(key="password").value.string_value = "hunter2-secret"
    line = run(batch)[0]
    assert "S3cr3t" not in str(line) and "hunter2" not in str(line)
    query = span_batch(Span.SPAN_KIND_CLIENT, 1500, db__system="postgresql")
    statements = the_span(query).attributes.add(key="db.statement").value.array_value.values
    statements.add().string_value = "SELECT * FROM u WHERE pw = 'hunter2-secret'"
    assert "hunter2" not in str(run(query)[0])


def test_log_lines_are_rate_limited_and_what_was_skipped_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every slow span is marked and counted; the log carries at most the burst, then says how
    many it left out (100 huge slow requests once wrote 11.6 MiB of log)."""
    clock = [1000.0]
    monkeypatch.setattr("collector.telemetry.time.monotonic", lambda: clock[0])

    def slow_batch(count: int) -> ExportTraceServiceRequest:
        batch = ExportTraceServiceRequest()
        spans = batch.resource_spans.add().scope_spans.add().spans
        for number in range(count):
            span = spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="GET /x",
                             kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=0,
                             end_time_unix_nano=1_500 * 1_000_000)  # fmt: skip
            span.attributes.add(key="url.path").value.string_value = f"/x/{number}/" + "y" * 50_000
        return batch

    settings = SlowSpansSettings(log_lines_per_second=1)
    processor = SlowSpans("slow_spans", settings, Signal.TRACES, None)
    first = slow_batch(50)
    with structlog.testing.capture_logs() as logs:
        assert processor.mark(first) == 50
        clock[0] += 2.0  # two more lines' worth
        processor.mark(slow_batch(1))
    events = [log["event"] for log in logs]
    assert events.count("slow_request") == 11  # the burst of ten, then one after the wait
    skipped = [log for log in logs if log["event"] == "slow_lines_skipped"]
    assert [(log["count"], log["processor"]) for log in skipped] == [(40, "slow_spans")]
    assert all(len(log["path"]) <= 1025 for log in logs if log["event"] == "slow_request")
    spans = first.resource_spans[0].scope_spans[0].spans
    marked = [s for s in spans if any(kv.key == "slow" and kv.value.bool_value
                                      for kv in s.attributes)]  # fmt: skip
    assert len(marked) == 50  # every one marked, logged or not


def test_a_lasting_flood_is_summed_up_every_ten_seconds_not_before_every_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a flood that outlasts the burst, a summary before each allowed line would double
    the lines written: one summary per interval says the same; flush tells the rest."""
    clock = [1000.0]
    monkeypatch.setattr("collector.telemetry.time.monotonic", lambda: clock[0])
    budget = LineBudget(2, "lines_skipped", processor="p")
    with structlog.testing.capture_logs() as logs:
        allowed = 0
        for _ in range(30 * 10):  # 10 attempts a second for 30 s, at 2 lines a second
            allowed += budget.allow()
            clock[0] += 0.1
        budget.flush()
    summaries = [log["count"] for log in logs if log["event"] == "lines_skipped"]
    assert allowed == 20 + 2 * 30 - 1  # the burst, then the rate (the last 0.5 s: no token)
    assert len(summaries) == 4  # at 10, 20, 30 s (before an allowed line), and the flush
    assert sum(summaries) == 300 - allowed

    closed = LineBudget(0.01, "lines_skipped")  # not one line ever allowed
    with structlog.testing.capture_logs() as logs:
        for _ in range(25):
            assert not closed.allow()
            clock[0] += 1.0
    # Told during the flood, every ten seconds of it, not only at shutdown.
    assert [log["count"] for log in logs] == [11, 11]  # at 10 s and at 21 s


def test_array_values_log_as_their_scrubbed_json_and_long_ones_are_cut() -> None:
    """An array route is logged as the JSON it is (non-ASCII kept), scrubbed; a value of
    exactly MAX_FIELD_CHARS is whole, one character more is cut and marked."""
    from collector.processors.slow_spans import MAX_FIELD_CHARS

    batch = span_batch(Span.SPAN_KIND_SERVER, 1500)
    route = the_span(batch).attributes.add(key="http.route").value.array_value.values
    route.add().string_value = "/café?token=S3cr3tValue9"
    assert run(batch)[0]["path"] == '["/café?token=[Filtered]"]'
    whole = "/" + "a" * (MAX_FIELD_CHARS - 1)
    for route, logged in ((whole, whole), (whole + "b", whole + "…")):
        long = span_batch(Span.SPAN_KIND_SERVER, 1500, http__route=route)
        assert run(long)[0]["path"] == logged


def test_counted_per_processor_exactly_over_the_thresholds_and_marked_once() -> None:
    """At the threshold is not over it; a span marked already keeps one ``slow``; ``mark``
    counts what it logged, per processor on ``otelsidecar_slow_spans_total``."""
    from collector.telemetry import REGISTRY

    name = f"slow_spans/{os.urandom(4).hex()}"
    processor = SlowSpans(name, SlowSpansSettings(), Signal.TRACES, None)
    at_server = span_batch(Span.SPAN_KIND_SERVER, 1000, http__route="/edge")
    at_db = span_batch(Span.SPAN_KIND_CLIENT, 100, db__system="sqlite")
    between = span_batch(Span.SPAN_KIND_SERVER, 500, http__route="/between")  # over the DB's
    for batch in (at_server, at_db, between):
        assert processor.mark(batch) == 0
    marked = span_batch(Span.SPAN_KIND_SERVER, 1500, http__route="/marked")
    the_span(marked).attributes.add(key="slow").value.bool_value = True
    queries = span_batch(Span.SPAN_KIND_CLIENT, 101, db__system="sqlite")
    with structlog.testing.capture_logs():
        assert processor.mark(marked) == 1 and processor.mark(queries) == 1
    assert [kv.key for kv in the_span(marked).attributes].count("slow") == 1

    def count(event: str) -> float | None:
        return REGISTRY.get_sample_value(
            "otelsidecar_slow_spans_total", {"processor": name, "event": event}
        )

    assert (count("slow_request"), count("slow_query")) == (1.0, 1.0)


def test_the_status_page_gets_a_template_or_a_system_never_a_raw_path() -> None:
    from collector.telemetry import RECENT_SLOW

    processor = SlowSpans("slow_spans", SlowSpansSettings(), Signal.TRACES, None)
    batches = [
        span_batch(
            Span.SPAN_KIND_SERVER, 1234.567, http__route="/users/{id}", url__path="/users/42"
        ),
        span_batch(Span.SPAN_KIND_SERVER, 1500, url__path="/users/42?token=S3cr3t"),
        span_batch(
            Span.SPAN_KIND_CLIENT,
            150,
            db__system__name="postgresql",
            db__statement="SELECT 'S3cr3t'",
        ),
        span_batch(Span.SPAN_KIND_SERVER, 1500, http__route="/pay/Bearer abcdefghijklmnop1234"),
    ]
    with structlog.testing.capture_logs():
        for batch in batches:
            processor.mark(batch)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    assert list(RECENT_SLOW)[-4:] == [
        {"event": "slow_request", "where": "/users/{id}", "duration_ms": 1234.57,
         "trace_id": trace_id},
        {"event": "slow_request", "where": "", "duration_ms": 1500.0, "trace_id": trace_id},
        {"event": "slow_query", "where": "postgresql", "duration_ms": 150.0,
         "trace_id": trace_id},
        {"event": "slow_request", "where": "/pay/Bearer [Filtered]", "duration_ms": 1500.0,
         "trace_id": trace_id},
    ]  # fmt: skip
