"""The ``sampler`` processor (traces): keeps whole traces at ``rate``, decided from the trace id.

The decision needs nothing but the trace id (see :mod:`collector.sampling`), so it is made
before any attribute is read. Error spans of dropped traces (an ``exception`` event or status
ERROR) are not lost: they move to ResourceSpans marked errors-only, which reach only the
exporters with an error path, and so does the count of the dropped traces' other requests (for
release health). Every span it keeps carries its threshold in its tracestate (``ot=th:…``,
:func:`collector.sampling.with_threshold`), so that exporters read the rate each span was
kept at; the error path's resource says the rate its traces were dropped at. Counted: kept
and dropped spans.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from collector import sampling
from collector.component import TRACES, Consumer, Kind, Processor
from collector.settings import setting
from collector.signals import Signal
from collector.telemetry import SAMPLED

_ERROR = Status.STATUS_CODE_ERROR
_SERVER = Span.SPAN_KIND_SERVER


@dataclass(frozen=True)
class SamplerSettings:
    rate: float = setting(1.0, minimum=0.0, maximum=1.0)


class Sampler(Processor):
    def __init__(self, name: str, settings: SamplerSettings, signal: Signal, next: Consumer):
        super().__init__(name, signal, next)
        self.rate = settings.rate
        self._threshold = sampling.threshold(settings.rate)
        self._mark = f"ot=th:{sampling.threshold_hex(self._threshold)}"
        self._kept = SAMPLED.labels(name)
        self._dropped = self.drops("sampled_out")

    async def consume(self, batch: ExportTraceServiceRequest) -> None:
        kept, dropped = self.sample(batch)
        self._kept.inc(kept)
        self._dropped.inc(dropped)
        if batch.resource_spans:
            await self._next.consume(batch)

    def sample(self, batch: ExportTraceServiceRequest) -> tuple[int, int]:
        """Drop the spans of unsampled traces in place; returns (kept, dropped) span counts.

        A dropped trace with an error keeps its spans of this batch on the error path, so
        the error event can carry the request, user and breadcrumbs of its trace.
        """
        if self._threshold == 0:
            return sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans), 0
        threshold = self._threshold
        kept = dropped = 0
        errors: list[ResourceSpans] = []
        for resource_spans in batch.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans = list(scope_spans.spans)
                # sampling.randomness, inlined: this runs on every span.
                keeps = [int.from_bytes(s.trace_id[-7:], "big") >= threshold for s in spans]
                if all(keeps):
                    kept += len(spans)
                    self._mark_threshold(spans)
                    continue
                lost = [s for s, k in zip(spans, keeps, strict=True) if not k]
                failed_traces = _error_traces(lost)
                if failed_traces:
                    failed = [s for s in lost if s.trace_id in failed_traces]
                    errors.append(_errors_only(resource_spans, scope_spans, failed, self.rate))
                requests = _healthy_requests(lost, failed_traces)
                if requests:
                    errors.append(_unsampled_sessions(resource_spans, requests))
                kept += len(spans) - len(lost)
                dropped += len(lost)
                self._mark_threshold([s for s, k in zip(spans, keeps, strict=True) if k])
                _delete_dropped(scope_spans.spans, keeps)
        _remove_empty(batch)
        batch.resource_spans.extend(errors)
        return kept, dropped

    def _mark_threshold(self, spans: list[Span]) -> None:
        mark, threshold = self._mark, self._threshold
        for span in spans:
            state = span.trace_state
            span.trace_state = sampling.with_threshold(state, threshold) if state else mark


def _error_traces(spans: list[Span]) -> set[bytes]:
    """Trace ids with an error among these spans, checked once per trace.

    Runs on every dropped span, so it is written for speed: no generator, events looked at
    only when there are some.
    """
    failed: set[bytes] = set()
    for span in spans:
        trace_id = span.trace_id
        if trace_id in failed:
            continue
        if span.status.code == _ERROR:
            failed.add(trace_id)
            continue
        events = span.events
        if events:
            for event in events:
                if event.name == "exception":
                    failed.add(trace_id)
                    break
    return failed


def _healthy_requests(spans: list[Span], failed_traces: set[bytes]) -> Counter[int]:
    """Per minute, the SERVER spans among ``spans`` whose trace did not fail here (those that
    did reach the error path themselves)."""
    minutes: Counter[int] = Counter()
    for span in spans:
        if span.kind == _SERVER and span.trace_id not in failed_traces:
            seconds = span.start_time_unix_nano // 1_000_000_000
            minutes[seconds - seconds % 60] += 1
    return minutes


def _unsampled_sessions(resource_spans: ResourceSpans, requests: Counter[int]) -> ResourceSpans:
    marked = ResourceSpans(schema_url=resource_spans.schema_url)
    marked.resource.CopyFrom(resource_spans.resource)
    marked.resource.attributes.add(key=sampling.ERRORS_ONLY).value.bool_value = True
    counts = marked.resource.attributes.add(key=sampling.UNSAMPLED_SESSIONS).value.kvlist_value
    for minute, count in sorted(requests.items()):
        counts.values.add(key=str(minute)).value.int_value = count
    return marked


def _delete_dropped(spans: RepeatedCompositeFieldContainer[Span], keeps: list[bool]) -> None:
    """Delete the dropped spans in runs, from the end, so kept spans are never copied."""
    end = len(keeps)
    while end > 0:
        while end > 0 and keeps[end - 1]:
            end -= 1
        start = end
        while start > 0 and not keeps[start - 1]:
            start -= 1
        if start < end:
            del spans[start:end]
        end = start


def _errors_only(
    resource_spans: ResourceSpans, scope_spans: ScopeSpans, spans: list[Span], rate: float
) -> ResourceSpans:
    marked = ResourceSpans(schema_url=resource_spans.schema_url)
    marked.resource.CopyFrom(resource_spans.resource)
    marked.resource.attributes.add(key=sampling.ERRORS_ONLY).value.bool_value = True
    marked.resource.attributes.add(key=sampling.UNSAMPLED_RATE).value.double_value = rate
    scope = marked.scope_spans.add(schema_url=scope_spans.schema_url)
    scope.scope.CopyFrom(scope_spans.scope)
    scope.spans.extend(spans)
    return marked


def _remove_empty(batch: ExportTraceServiceRequest) -> None:
    for resource_spans in batch.resource_spans:
        if any(not ss.spans for ss in resource_spans.scope_spans):
            live = [ss for ss in resource_spans.scope_spans if ss.spans]
            del resource_spans.scope_spans[:]
            resource_spans.scope_spans.extend(live)
    if any(not rs.scope_spans for rs in batch.resource_spans):
        live = [rs for rs in batch.resource_spans if rs.scope_spans]
        del batch.resource_spans[:]
        batch.resource_spans.extend(live)


KIND = Kind(SamplerSettings, Sampler, TRACES)  # registered as an entry point (pyproject.toml)
