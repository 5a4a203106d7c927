"""The two signals the sidecar carries and the facts about their batches every component needs.

A batch is the OTLP export request itself (``ExportTraceServiceRequest`` or
``ExportLogsServiceRequest``), kept as protobuf from receiver to exporter.
"""

from __future__ import annotations

from collections.abc import Sized
from enum import StrEnum

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

Batch = ExportTraceServiceRequest | ExportLogsServiceRequest


class InvalidBatch(ValueError):
    """A batch that parsed but breaks the OTLP data model (say, a 5-byte trace id)."""


class Signal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"

    @property
    def request_type(self) -> type[Batch]:
        return ExportTraceServiceRequest if self is Signal.TRACES else ExportLogsServiceRequest

    @property
    def response_type(self) -> type[ExportTraceServiceResponse | ExportLogsServiceResponse]:
        return ExportTraceServiceResponse if self is Signal.TRACES else ExportLogsServiceResponse

    @property
    def items(self) -> str:
        """What one unit of this signal is called in logs and metrics."""
        return "spans" if self is Signal.TRACES else "log_records"

    def success_response(self) -> ExportTraceServiceResponse | ExportLogsServiceResponse:
        """The OTLP answer to an accepted request: an empty ``partial_success``."""
        response = self.response_type()
        response.partial_success.SetInParent()
        return response


def signal_of(batch: Batch) -> Signal:
    return Signal.TRACES if isinstance(batch, ExportTraceServiceRequest) else Signal.LOGS


def item_count(batch: Batch) -> int:
    """Spans or log records in a batch, counted per scope list (no per-item work)."""
    if isinstance(batch, ExportTraceServiceRequest):
        return sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)
    return sum(len(sl.log_records) for rl in batch.resource_logs for sl in rl.scope_logs)


_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)  # invalid ids, as the OTLP specification says
# Per span, log record and resource. SDKs keep 128 by default; a request past this is a flood
# of tiny attributes that every processor would walk (answered 413 / RESOURCE_EXHAUSTED).
MAX_ATTRIBUTES = 4096


class TooManyAttributes(Exception):
    """An item with more than MAX_ATTRIBUTES attributes."""


def validate(batch: Batch) -> int:
    """Check the ids the data model fixes in length, and the attribute counts (raises
    InvalidBatch, TooManyAttributes), and return the item count.

    Downstream (sampling from the trace id, Sentry's 32-hex trace ids) relies on these lengths,
    so a batch breaking them is refused whole at the door, as the collector's pdata does.
    """
    count = 0
    if isinstance(batch, ExportTraceServiceRequest):
        for rs in batch.resource_spans:
            _bounded(rs.resource.attributes, "resource")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if len(span.attributes) > MAX_ATTRIBUTES:  # inline: per span, hot
                        _bounded(span.attributes, "span")
                    if len(span.trace_id) != 16 or len(span.span_id) != 8:
                        raise InvalidBatch(
                            "span with invalid ids: trace_id must be 16 bytes, span_id 8 bytes"
                        )
                    if span.trace_id == _ZERO_TRACE or span.span_id == _ZERO_SPAN:
                        raise InvalidBatch("span with an all-zero trace_id or span_id (invalid)")
                    if len(span.parent_span_id) not in (0, 8):
                        raise InvalidBatch("span with invalid parent_span_id: must be 8 bytes")
                count += len(ss.spans)
        return count
    for rl in batch.resource_logs:
        _bounded(rl.resource.attributes, "resource")
        for sl in rl.scope_logs:
            for record in sl.log_records:
                if len(record.attributes) > MAX_ATTRIBUTES:  # inline: per record, hot
                    _bounded(record.attributes, "log record")
                if len(record.trace_id) not in (0, 16) or len(record.span_id) not in (0, 8):
                    raise InvalidBatch(
                        "log record with invalid ids: trace_id must be 16 bytes, span_id 8 bytes"
                    )
            count += len(sl.log_records)
    return count


def _bounded(attributes: Sized, what: str) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise TooManyAttributes(
            f"a {what} has {len(attributes)} attributes; at most {MAX_ATTRIBUTES} are taken"
        )
