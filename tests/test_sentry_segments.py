"""The Sentry exporter's trace buffer holds what it keeps in the memory limiter's count, and
bounds it in bytes: spans whose parent never comes (50 KB of attributes each) cannot grow it
past ``max_bytes``; the oldest traces leave as they are, none is lost."""

from __future__ import annotations

import os

from collector.memory import HELD
from exporters.sentry.records import LogRecord, record_cost, spans_of
from exporters.sentry.segments import TraceBuffer
from tests.test_receivers import trace_request

KB = 1024


def orphans(traces: int, attribute_bytes: int) -> list:
    """Spans whose parent never arrives, one trace each, ``attribute_bytes`` of attributes."""
    records = []
    for _ in range(traces):
        request = trace_request(spans=1)
        span = request.resource_spans[0].scope_spans[0].spans[0]
        span.parent_span_id = os.urandom(8)
        span.attributes.add(key="payload").value.string_value = "x" * attribute_bytes
        records.extend(spans_of(request))
    return records


def log_of(trace_id: str, size: int) -> LogRecord:
    return LogRecord(trace_id, None, 1, 9, "INFO", "line", {}, {}, "app", size=size)


def test_buffered_bytes_are_held_and_released() -> None:
    before = HELD.value
    buffer = TraceBuffer(1.0, 30.0, max_traces=100, max_spans=100, max_bytes=10 * 1024 * KB)
    spans = orphans(3, 50 * KB)
    assert buffer.add_spans(spans, now=0.0) == []
    assert buffer.bytes == sum(span.size for span in spans) > 3 * 50 * KB
    assert spans[0].size >= record_cost(50 * KB)
    trace_id = spans[0].trace_id
    buffer.add_logs([log_of(trace_id, 1000) for _ in range(150)], now=0.0)  # 100 are kept
    assert buffer.bytes == sum(span.size for span in spans) + 100 * 1000
    assert HELD.value - before == buffer.bytes
    groups = buffer.due(now=31.0)  # their parents never came: they leave as they are
    assert sorted(span.span_id for group in groups for span in group.spans) == sorted(
        span.span_id for span in spans
    )
    assert buffer.bytes == 0 and HELD.value == before


def test_a_flood_of_orphans_is_bounded_in_bytes_and_loses_nothing() -> None:
    before = HELD.value
    buffer = TraceBuffer(1.0, 30.0, max_traces=10_000, max_spans=20_000, max_bytes=1024 * KB)
    spans = orphans(130, 50 * KB)
    out = [group for span in spans for group in buffer.add_spans([span], now=0.0)]
    assert buffer.bytes <= 1024 * KB
    assert HELD.value - before == buffer.bytes
    left = [span.span_id for group in out + buffer.flush_all() for span in group.spans]
    assert sorted(left) == sorted(span.span_id for span in spans)
    assert HELD.value == before


def test_due_takes_what_has_settled_or_gone_quiet_and_nothing_else() -> None:
    """A tick finds its work at the front of the buffer's order: segments by arrival, quiet
    traces by last sight. A trace seen again moves back; its segment still settles."""
    buffer = TraceBuffer(2.0, 30.0, max_traces=100, max_spans=100, max_bytes=10 * 1024 * KB)
    roots = [next(iter(spans_of(trace_request(spans=1)))) for _ in range(3)]
    orphan = orphans(1, 10)
    buffer.add_spans(orphan, now=0.0)
    buffer.add_spans([roots[0]], now=1.0)
    buffer.add_spans([roots[1]], now=2.0)
    buffer.add_logs([log_of(orphan[0].trace_id, 10)], now=5.0)  # the orphan's trace, seen again
    buffer.add_spans([roots[2]], now=20.0)
    assert buffer.due(now=2.5) == []
    assert [g.segment.span_id for g in buffer.due(now=3.0)] == [roots[0].span_id]
    assert [g.segment.span_id for g in buffer.due(now=4.0)] == [roots[1].span_id]
    assert [g.segment.span_id for g in buffer.due(now=34.9)] == [roots[2].span_id]
    assert len(buffer) == 2  # the first two roots' traces went quiet at 31 and 32
    (quiet,) = buffer.due(now=35.0)
    assert [span.span_id for span in quiet.spans] == [orphan[0].span_id]
    assert len(buffer) == 1
