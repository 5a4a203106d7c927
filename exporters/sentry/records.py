"""Spans and log records as the Sentry exporter keeps them: small Python objects, made only for
what reaches Sentry (sampled traces and the error spans of dropped ones), never on the
processors' hot path.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from collector.attributes import plain
from collector.sampling import (
    MARKERS,
    UNSAMPLED_SESSIONS,
    is_errors_only,
    rate_of,
    unsampled_rate,
)

SERVER, CLIENT, CONSUMER = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_CONSUMER
# Span.flags bits 8 and 9: "the parent's is_remote is known" and "the parent is remote".
_REMOTE_PARENT = 0x300
# What a record costs in memory, from its wire size: measured 0.6-2.4 KB for ordinary spans and
# records, 1x the wire for one long string, 7x for thousands of tiny attributes (which the
# memory limiter's watch on the resident size covers).
_RECORD_BASE_BYTES = 512
_RECORD_FACTOR = 4


def record_cost(wire_bytes: int) -> int:
    return _RECORD_BASE_BYTES + _RECORD_FACTOR * wire_bytes


def attribute_dict(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    out = {}
    for kv in attributes:
        value = kv.value
        text = value.string_value  # most are strings, and need nothing more (plain's first test)
        out[kv.key] = text if text else jsonable(plain(value))
    return out


_AS_IS = (str, bool, int)  # a tuple: `str | bool | int` is built anew at every call (4x slower)


def jsonable(value: Any) -> Any:
    """What JSON (and so Sentry) can carry: bytes as base64, NaN and infinities as text."""
    if isinstance(value, _AS_IS) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    return str(value)


@dataclass(slots=True)
class Event:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    remote_parent: bool
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[Event]
    status_code: int
    status_message: str
    resource: dict[str, Any]
    scope: str
    sampled: bool
    sample_rate: float = 1.0  # what its pipeline's sampler kept it at (its tracestate says)
    size: int = 0  # bytes it holds in memory (estimated: record_cost)

    @property
    def is_segment(self) -> bool:
        """Sentry's segment: the root of a service's part of a trace."""
        return self.parent_span_id is None or self.remote_parent or self.kind in (SERVER, CONSUMER)


@dataclass(slots=True)
class LogRecord:
    trace_id: str | None
    span_id: str | None
    time_ns: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    size: int = 0  # bytes it holds in memory (estimated: record_cost)


def spans_of(batch: ExportTraceServiceRequest) -> Iterable[SpanRecord]:
    for resource_spans in batch.resource_spans:
        sampled = not is_errors_only(resource_spans)
        dropped_at = None if sampled else unsampled_rate(resource_spans)
        resource = _resource(resource_spans)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                record = _span_record(span, resource, scope, sampled)
                if dropped_at is not None:
                    record.sample_rate = dropped_at
                yield record


def unsampled_sessions_of(
    batch: ExportTraceServiceRequest,
) -> Iterable[tuple[dict[str, Any], dict[int, int]]]:
    """(resource, {minute: requests}) for the sampler's count of unsampled healthy requests."""
    for resource_spans in batch.resource_spans:
        for kv in resource_spans.resource.attributes:
            if kv.key == UNSAMPLED_SESSIONS:
                counts = plain(kv.value)
                if isinstance(counts, dict):
                    yield _resource(resource_spans), _minute_counts(counts)


def _minute_counts(counts: dict[str, Any]) -> dict[int, int]:
    valid = {}
    for minute, count in counts.items():
        if minute.isdigit() and isinstance(count, int) and 0 < count < 2**31:
            valid[int(minute)] = count
    return valid


def _resource(resource_spans: ResourceSpans) -> dict[str, Any]:
    return attribute_dict(kv for kv in resource_spans.resource.attributes if kv.key not in MARKERS)


def _span_record(span: Span, resource: dict[str, Any], scope: str, sampled: bool) -> SpanRecord:
    return SpanRecord(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        remote_parent=span.flags & _REMOTE_PARENT == _REMOTE_PARENT,
        name=span.name,
        kind=span.kind,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        attributes=attribute_dict(span.attributes),
        events=[Event(e.name, e.time_unix_nano, attribute_dict(e.attributes)) for e in span.events],
        status_code=span.status.code,
        status_message=span.status.message,
        resource=resource,
        scope=scope,
        sampled=sampled,
        sample_rate=rate_of(span.trace_state),
        size=record_cost(span.ByteSize()),
    )


def logs_of(batch: ExportLogsServiceRequest) -> Iterable[LogRecord]:
    for resource_logs in batch.resource_logs:
        resource = attribute_dict(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope.name
            for record in scope_logs.log_records:
                yield LogRecord(
                    trace_id=record.trace_id.hex() or None,
                    span_id=record.span_id.hex() or None,
                    time_ns=record.time_unix_nano or record.observed_time_unix_nano,
                    severity_number=record.severity_number,
                    severity_text=record.severity_text,
                    body=jsonable(plain(record.body)),
                    attributes=attribute_dict(record.attributes),
                    resource=resource,
                    scope=scope,
                    size=record_cost(record.ByteSize()),
                )
