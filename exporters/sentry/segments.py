"""Assembles Sentry segments (a transaction: a segment span and its descendants) from spans
that arrive in any order, across batches, in a bounded per-trace buffer.

A segment is emitted ``settle_s`` after its segment span arrived, so children that end after
their parent (background work) still join it. Spans whose segment never comes are emitted
"as is" ``max_wait_s`` after the trace's last span: each top-most remaining span becomes a
transaction of its own. Spans arriving after their segment left are late: their errors still
go out, their timing is dropped and counted. Bounds: ``max_traces`` traces, ``max_spans``
spans and ``max_bytes`` bytes in all; past them the oldest traces are emitted as they are,
never silently lost. The bytes (each record's estimated ``size``) are held in
:data:`~collector.memory.HELD` while buffered, so that the memory limiter counts them.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from collector.memory import HELD
from exporters.sentry.records import LogRecord, SpanRecord

MAX_LOGS_PER_TRACE = 100  # kept for breadcrumbs and exception logs
MAX_EMITTED_IDS = 10_000  # per trace, to recognise late children


@dataclass(slots=True)
class Group:
    """What one emission carries: a segment (None for spans left without one), its spans
    (segment first), the trace's logs (for breadcrumbs), and the exception logs whose error
    events belong to this group."""

    segment: SpanRecord | None
    spans: list[SpanRecord]
    logs: list[LogRecord]
    exception_logs: list[LogRecord] = field(default_factory=list)
    late: bool = False


@dataclass(slots=True)
class _Trace:
    spans: dict[str, SpanRecord] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)  # not yet taken, in arrival order
    logs: deque[LogRecord] = field(default_factory=lambda: deque(maxlen=MAX_LOGS_PER_TRACE))
    exception_logs: list[LogRecord] = field(default_factory=list)
    emitted: set[str] = field(default_factory=set)
    last_seen: float = 0.0


class TraceBuffer:
    def __init__(
        self, settle_s: float, max_wait_s: float, max_traces: int, max_spans: int, max_bytes: int
    ) -> None:
        self.settle_s = settle_s
        self.max_wait_s = max_wait_s
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self.span_count = 0
        self.bytes = 0
        self._traces: OrderedDict[str, _Trace] = OrderedDict()  # least recently seen first
        # (trace id, segment id) -> arrival, in arrival order: the next to settle comes first
        self._settling: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._traces)

    def add_spans(self, spans: Iterable[SpanRecord], now: float) -> list[Group]:
        """Buffer spans; returns what must leave at once (late spans, evicted traces)."""
        out: list[Group] = []
        for span in spans:
            trace = self._trace(span.trace_id, now)
            if span.parent_span_id == span.span_id:
                span.parent_span_id = None  # its own parent: no parent we could wait for
            if span.span_id in trace.spans or span.span_id in trace.emitted:
                continue  # a duplicate (an SDK retry): the first copy stands
            if span.parent_span_id in trace.emitted and not span.is_segment:
                if len(trace.emitted) < MAX_EMITTED_IDS:
                    trace.emitted.add(span.span_id)
                out.append(Group(None, [span], list(trace.logs), late=True))
                continue
            self.span_count += 1
            self._hold(span.size)
            trace.spans[span.span_id] = span
            if span.is_segment:
                trace.segments.append(span.span_id)
                self._settling[span.trace_id, span.span_id] = now
        out.extend(self._enforce_bounds())
        return out

    def add_logs(
        self, logs: Iterable[LogRecord], now: float, exception: bool = False
    ) -> list[Group]:
        """Buffer a trace's logs: plain ones as breadcrumbs, exception ones until their span's
        group leaves (so their error event gets its request and user). Returns what must
        leave at once: exception logs past the per-trace bound, evicted traces."""
        out: list[Group] = []
        for record in logs:
            assert record.trace_id, "logs without a trace are not buffered"
            trace = self._trace(record.trace_id, now)
            if not exception:
                if len(trace.logs) == trace.logs.maxlen:
                    self._release(trace.logs[0].size)  # the oldest breadcrumb makes room
                trace.logs.append(record)
                self._hold(record.size)
            elif len(trace.exception_logs) < MAX_LOGS_PER_TRACE:
                trace.exception_logs.append(record)
                self._hold(record.size)
            else:
                out.append(Group(None, [], list(trace.logs), [record]))
        out.extend(self._enforce_bounds())
        return out

    def due(self, now: float) -> list[Group]:
        """Traces quiet for ``max_wait_s``, and segments that have settled. Both are found
        from the front of an ordered index (least recently seen, earliest arrival), so a
        tick costs what is due, not what is buffered."""
        out: list[Group] = []
        while self._traces:
            trace_id, trace = next(iter(self._traces.items()))
            if now - trace.last_seen < self.max_wait_s:
                break
            out.extend(self._flush(trace_id))
        settled: dict[str, list[str]] = {}
        for (trace_id, segment_id), arrival in self._settling.items():
            if now - arrival < self.settle_s:
                break
            settled.setdefault(trace_id, []).append(segment_id)
        for trace_id, segment_ids in settled.items():
            trace = self._traces[trace_id]
            children = _children(trace)
            out.extend(self._take_segment(trace, sid, children) for sid in segment_ids)
        return out

    def flush_all(self) -> list[Group]:
        out: list[Group] = []
        for trace_id in list(self._traces):
            out.extend(self._flush(trace_id))
        return out

    def _trace(self, trace_id: str, now: float) -> _Trace:
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = _Trace()
        else:
            self._traces.move_to_end(trace_id)
        trace.last_seen = now
        return trace

    def _take_segment(
        self, trace: _Trace, segment_id: str, children: dict[str, list[SpanRecord]]
    ) -> Group:
        trace.segments.remove(segment_id)
        segment = trace.spans[segment_id]
        del self._settling[segment.trace_id, segment_id]
        return self._take(trace, segment, children, segment=True)

    def _take(
        self,
        trace: _Trace,
        root: SpanRecord,
        children: dict[str, list[SpanRecord]],
        segment: bool,
    ) -> Group:
        members = [root, *_descendants(trace, root.span_id, children)]
        self._remove(trace, members)
        logs = self._exception_logs(trace, members)
        return Group(root if segment else None, members, list(trace.logs), logs)

    def _exception_logs(self, trace: _Trace, members: list[SpanRecord]) -> list[LogRecord]:
        ids = {span.span_id for span in members}
        mine = [r for r in trace.exception_logs if r.span_id in ids]
        if mine:
            trace.exception_logs = [r for r in trace.exception_logs if r.span_id not in ids]
            self._release(sum(r.size for r in mine))
        return mine

    def _flush(self, trace_id: str) -> list[Group]:
        """Everything of a trace, now: settled or not, segment or not."""
        trace = self._traces[trace_id]
        children = _children(trace)
        out = [self._take_segment(trace, sid, children) for sid in list(trace.segments)]
        while trace.spans:
            # Top-most remaining spans (parent absent) stand in for their missing segment;
            # in a parent cycle there is none, and any span will do.
            top = next(
                (s for s in trace.spans.values() if s.parent_span_id not in trace.spans),
                next(iter(trace.spans.values())),
            )
            out.append(self._take(trace, top, children, segment=False))
        if trace.exception_logs:
            out.append(Group(None, [], list(trace.logs), trace.exception_logs))
        self._release(sum(r.size for r in (*trace.logs, *trace.exception_logs)))
        del self._traces[trace_id]
        return out

    def _remove(self, trace: _Trace, spans: list[SpanRecord]) -> None:
        for span in spans:
            if trace.spans.pop(span.span_id, None) is not None:
                self.span_count -= 1
                self._release(span.size)
            if len(trace.emitted) < MAX_EMITTED_IDS:
                trace.emitted.add(span.span_id)

    def _enforce_bounds(self) -> list[Group]:
        out: list[Group] = []
        while self._traces and (
            len(self._traces) > self.max_traces
            or self.span_count > self.max_spans
            or self.bytes > self.max_bytes
        ):
            out.extend(self._flush(next(iter(self._traces))))
        return out

    def _hold(self, size: int) -> None:
        self.bytes += size
        HELD.hold(size)

    def _release(self, size: int) -> None:
        self.bytes -= size
        HELD.release(size)


def _children(trace: _Trace) -> dict[str, list[SpanRecord]]:
    """Non-segment spans by parent id, built once per pass over a trace."""
    children: dict[str, list[SpanRecord]] = {}
    for span in trace.spans.values():
        if span.parent_span_id and not span.is_segment:
            children.setdefault(span.parent_span_id, []).append(span)
    return children


def _descendants(
    trace: _Trace, root_id: str, children: dict[str, list[SpanRecord]]
) -> list[SpanRecord]:
    """Buffered spans under ``root_id``, down to (not into) other segments; each span once,
    whatever cycles bad parent ids make."""
    found, seen, stack = [], {root_id}, [root_id]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child.span_id not in seen and child.span_id in trace.spans:
                seen.add(child.span_id)
                found.append(child)
                stack.append(child.span_id)
    return found
