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
