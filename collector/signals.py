"""The three signals the sidecar carries and the facts about their batches every component needs.

A batch is the OTLP export request itself (``ExportTraceServiceRequest``,
``ExportLogsServiceRequest`` or ``ExportMetricsServiceRequest``), kept as protobuf from receiver
to exporter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from enum import StrEnum
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

Batch = ExportTraceServiceRequest | ExportLogsServiceRequest | ExportMetricsServiceRequest
Response = ExportTraceServiceResponse | ExportLogsServiceResponse | ExportMetricsServiceResponse


class InvalidBatch(ValueError):
    """A batch that parsed but breaks the OTLP data model (say, a 5-byte trace id)."""


class Signal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"
    METRICS = "metrics"

    @property
    def request_type(self) -> type[Batch]:
        return _TYPES[self][0]

    @property
    def response_type(self) -> type[Response]:
        return _TYPES[self][1]

    @property
    def items(self) -> str:
        """What one unit of this signal is called in logs and metrics (and in OTLP's
        ``partial_success.rejected_<items>``)."""
        return _TYPES[self][2]

    @property
    def http_path(self) -> str:
        """Where OTLP/HTTP posts this signal: ``/v1/traces``, ``/v1/logs``, ``/v1/metrics``."""
        return f"/v1/{self.value}"

    @property
    def grpc_service(self) -> str:
        """The OTLP/gRPC service that exports this signal (its method is ``Export``), as the
        request's protobuf file declares it."""
        (service,) = self.request_type.DESCRIPTOR.file.services_by_name.values()
        return str(service.full_name)

    def success_response(self) -> Response:
        """The OTLP answer to an accepted request: an empty ``partial_success``."""
        response = self.response_type()
        response.partial_success.SetInParent()
        return response


_TYPES: dict[Signal, tuple[type[Batch], type[Response], str]] = {
    Signal.TRACES: (ExportTraceServiceRequest, ExportTraceServiceResponse, "spans"),
    Signal.LOGS: (ExportLogsServiceRequest, ExportLogsServiceResponse, "log_records"),
    Signal.METRICS: (ExportMetricsServiceRequest, ExportMetricsServiceResponse, "data_points"),
}
_SIGNAL_OF: dict[type[Message], Signal] = {types[0]: signal for signal, types in _TYPES.items()}


def signal_of(batch: Batch) -> Signal:
    return _SIGNAL_OF[type(batch)]


def item_count(batch: Batch) -> int:
    """Spans, log records or data points in a batch (spans and records counted per scope list,
    with no per-item work)."""
    if isinstance(batch, ExportTraceServiceRequest):
        return sum(len(ss.spans) for rs in batch.resource_spans for ss in rs.scope_spans)
    if isinstance(batch, ExportMetricsServiceRequest):
        return sum(len(data_points(metric)) for metric in metrics_of(batch))
    return sum(len(sl.log_records) for rl in batch.resource_logs for sl in rl.scope_logs)


def metrics_of(batch: ExportMetricsServiceRequest) -> Iterable[Metric]:
    for resource_metrics in batch.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            yield from scope_metrics.metrics


def data_points(metric: Metric) -> Sequence[Any]:
    """A metric's data points, whatever its type (gauge, sum, histogram...); none if unset."""
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind else ()


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
                    trace_id, span_id = span.trace_id, span.span_id  # each read makes new bytes
                    if len(trace_id) != 16 or len(span_id) != 8:
                        raise InvalidBatch(
                            "span with invalid ids: trace_id must be 16 bytes, span_id 8 bytes"
                        )
                    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
                        raise InvalidBatch("span with an all-zero trace_id or span_id (invalid)")
                    if len(span.parent_span_id) not in (0, 8):
                        raise InvalidBatch("span with invalid parent_span_id: must be 8 bytes")
                count += len(ss.spans)
        return count
    if isinstance(batch, ExportMetricsServiceRequest):
        return _validate_metrics(batch)
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


def _validate_metrics(batch: ExportMetricsServiceRequest) -> int:
    count = 0
    for rm in batch.resource_metrics:
        _bounded(rm.resource.attributes, "resource")
        for sm in rm.scope_metrics:
            _bounded(sm.scope.attributes, "scope")
            for metric in sm.metrics:
                _bounded(metric.metadata, "metric")
                points = data_points(metric)
                for point in points:
                    _bounded(point.attributes, "data point")
                    for exemplar in exemplars(point):
                        _bounded(exemplar.filtered_attributes, "exemplar")
                        if len(exemplar.trace_id) not in (0, 16) or len(exemplar.span_id) not in (
                            0, 8,
                        ):  # fmt: skip
                            raise InvalidBatch("exemplar with invalid ids: trace_id must be 16 "
                                               "bytes, span_id 8 bytes")  # fmt: skip
                count += len(points)
    return count


def exemplars(point: Any) -> Sequence[Any]:
    """A data point's exemplars; a summary's points have none."""
    return point.exemplars if "exemplars" in point.DESCRIPTOR.fields_by_name else ()


def _bounded(attributes: Sized, what: str) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise TooManyAttributes(
            f"a {what} has {len(attributes)} attributes; at most {MAX_ATTRIBUTES} are taken"
        )
