"""The ``debug`` exporter (the Collector's name): what passes through a pipeline, as lines in the
sidecar's own log, for "what is arriving?" moments.

``verbosity: basic`` (the default) writes one line per batch: the signal and how many
resources and items it held. ``normal`` writes one line per span (trace and span ids, name,
kind, duration, status), log record (severity, body, ids) or metric (name, type, unit, data
points); ``detailed`` adds attributes, the resource and, for metrics, every data point.

What it prints has been through the default scrubbing rules whatever the pipeline holds, so a
debug exporter placed before the scrubber shows no secret either. Lines are bounded by
``max_lines_per_second`` (a burst of ten seconds' worth); what is skipped is counted on one
``debug_lines_skipped`` line. It holds nothing: it never refuses and never drops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from collector.attributes import first, plain
from collector.component import Kind
from collector.scrubbing import DEFAULT_RULES
from collector.settings import setting
from collector.signals import Batch, data_points, item_count, signal_of
from collector.telemetry import EXPORTED, LineBudget, log

VERBOSITIES = ("basic", "normal", "detailed")
_MS = 1_000_000  # nanoseconds
_STATUS = {Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


@dataclass(frozen=True)
class DebugSettings:
    verbosity: str = setting("basic", choices=VERBOSITIES)
    max_lines_per_second: float = setting(100.0, minimum=0.1, maximum=100_000)


class DebugExporter:
    accepts_unsampled_errors = False  # shows what the other exporters get
    durable = False

    def __init__(self, name: str, settings: DebugSettings) -> None:
        self.name = name
        self._verbosity = VERBOSITIES.index(settings.verbosity)
        self._lines = LineBudget(settings.max_lines_per_second, "debug_lines_skipped",
                                 exporter=name)  # fmt: skip

    async def start(self) -> None:
        """Nothing to open: it writes to the sidecar's log."""

    def admit(self) -> None:
        """Nothing queued: it never refuses."""

    def status(self) -> tuple[str, str]:
        return "healthy", f"writing {VERBOSITIES[self._verbosity]} lines to the sidecar's log"

    async def consume(self, batch: Batch) -> None:
        signal = signal_of(batch)
        count = item_count(batch)
        if self._verbosity == 0:
            self._write(
                {"signal": signal.value, "resources": _resources(batch), signal.items: count}
            )
        elif not self._lines.skip(count):  # spent: no copy, no scrub, just the count
            scrubbed = type(batch)()
            scrubbed.CopyFrom(batch)  # exporters must not change the batch they are given
            DEFAULT_RULES.scrub_batch(scrubbed)
            for line in _lines(scrubbed, detailed=self._verbosity == 2):
                self._write(line)
        EXPORTED.labels(self.name, signal.value).inc(count)

    async def shutdown(self) -> None:
        self._lines.flush()

    def _write(self, fields: dict[str, Any]) -> None:
        if self._lines.allow():
            log.info("debug", exporter=self.name, **fields)


def _resources(batch: Batch) -> int:
    if isinstance(batch, ExportTraceServiceRequest):
        return len(batch.resource_spans)
    if isinstance(batch, ExportLogsServiceRequest):
        return len(batch.resource_logs)
    return len(batch.resource_metrics)


def _lines(batch: Batch, detailed: bool) -> Iterator[dict[str, Any]]:
    if isinstance(batch, ExportTraceServiceRequest):
        groups: Any = ((rs.resource, ss.spans) for rs in batch.resource_spans
                       for ss in rs.scope_spans)  # fmt: skip
        describe: Any = _span
    elif isinstance(batch, ExportLogsServiceRequest):
        groups = ((rl.resource, sl.log_records) for rl in batch.resource_logs
                  for sl in rl.scope_logs)  # fmt: skip
        describe = _log_record
    else:
        groups = ((rm.resource, sm.metrics) for rm in batch.resource_metrics
                  for sm in rm.scope_metrics)  # fmt: skip
        describe = _metric
    for resource, items in groups:
        service = first(resource.attributes, "service.name")
        for item in items:
            line = {"service": service, **describe(item, detailed)}
            if detailed:
                line["resource"] = _plain(resource.attributes)
            yield line


def _span(span: Span, detailed: bool) -> dict[str, Any]:
    line: dict[str, Any] = {
        "span": span.name,
        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
        "duration_ms": round((span.end_time_unix_nano - span.start_time_unix_nano) / _MS, 3),
        "status": _STATUS.get(span.status.code, "unset"),
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
    }
    if span.parent_span_id:
        line["parent_span_id"] = span.parent_span_id.hex()
    if span.status.message:
        line["status_message"] = span.status.message
    if detailed:
        line["attributes"] = _plain(span.attributes)
        line["events"] = [event.name for event in span.events]
    return line


def _log_record(record: LogRecord, detailed: bool) -> dict[str, Any]:
    line: dict[str, Any] = {
        "log_record": plain(record.body),
        "severity": record.severity_text or record.severity_number,
    }
    if record.trace_id:
        line["trace_id"] = record.trace_id.hex()
    if record.span_id:
        line["span_id"] = record.span_id.hex()
    if detailed:
        line["attributes"] = _plain(record.attributes)
    return line


def _metric(metric: Metric, detailed: bool) -> dict[str, Any]:
    points = data_points(metric)
    line: dict[str, Any] = {
        "metric": metric.name,
        "type": metric.WhichOneof("data"),
        "unit": metric.unit,
        "data_points": len(points),
    }
    if detailed:
        line["points"] = [
            {"attributes": _plain(point.attributes), **_point_value(point)} for point in points
        ]
    return line


def _point_value(point: Any) -> dict[str, Any]:
    """A number point's value; a histogram's or summary's count and sum."""
    if hasattr(point, "as_int"):
        kind = point.WhichOneof("value")
        return {"value": getattr(point, kind) if kind else None}
    return {"count": point.count, "sum": point.sum}


def _plain(attributes: list[KeyValue]) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in attributes}


KIND = Kind(DebugSettings, DebugExporter)  # registered as an entry point (pyproject.toml)
