"""The ``key_metrics`` receiver (metrics): what the ``key_metrics`` processor counts, as OTLP
metrics into the metrics pipelines that list it, every ``interval``; the processor and this
receiver together are the Collector's spanmetrics connector, in two halves.

The figures are the ones ``/metrics`` shows, under the same names (without Prometheus' unit and
``_total`` suffixes, which an OTLP-to-Prometheus translation adds back): cumulative since the
sidecar started, so a snapshot that could not be sent loses nothing: the next carries the
totals. One resource per service (``service.name``); the route, database system or host as
``http.route``, ``db.system.name`` or ``server.address``. A snapshot refused for want of room
downstream is counted on ``otelsidecar_receiver_refused_requests_total``; the last one is sent
at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    Metric,
    ResourceMetrics,
)

from collector import __version__
from collector.component import Consumer, Kind, Refused
from collector.processors import key_metrics
from collector.settings import Duration, setting
from collector.signals import Signal
from collector.telemetry import REFUSED

log = structlog.get_logger()
SCOPE = "otel-sidecar.key_metrics"
# Each table's value label -> the attribute it is in OTLP (OpenTelemetry's semantic conventions).
_ATTRIBUTES = {"route": "http.route", "db_system": "db.system.name", "host": "server.address"}


@dataclass(frozen=True)
class KeyMetricsReceiverSettings:
    interval: Duration = setting(Duration(60), minimum=1, maximum=3600)


class KeyMetricsReceiver:
    def __init__(
        self, name: str, settings: KeyMetricsReceiverSettings, consumers: Mapping[Signal, Consumer]
    ) -> None:
        self.name = name
        self.endpoints: dict[str, str] = {}  # it listens on nothing
        self._interval = float(settings.interval)
        self._next = consumers[Signal.METRICS]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not key_metrics.KeyMetrics.measuring:
            reason = "no key_metrics processor in a traces pipeline counts anything"
            log.warning("key_metrics_receiver_idle", receiver=self.name, reason=reason)
        self._task = asyncio.get_running_loop().create_task(self._every_interval())

    async def shutdown(self, grace_s: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            await self._send()  # what was counted since the last snapshot

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._send()

    async def _send(self) -> None:
        batch = snapshot(time.time_ns())
        if not batch.resource_metrics:
            return
        try:
            await self._next.consume(batch)
        except Refused as refusal:  # the totals go with the next snapshot
            REFUSED.labels(self.name, Signal.METRICS.value, refusal.reason).inc()
            log.warning("key_metrics_snapshot_refused", receiver=self.name, reason=refusal.reason)


def snapshot(now_ns: int) -> ExportMetricsServiceRequest:
    """The tables and the active users as cumulative OTLP metrics, one resource per service."""
    resources: dict[str, ResourceMetrics] = {}

    def metrics_of(service: str) -> list[Metric]:
        resource = resources.get(service)
        if resource is None:
            resource = resources[service] = ResourceMetrics()
            resource.resource.attributes.add(key="service.name").value.string_value = service
            scope = resource.scope_metrics.add().scope
            scope.name, scope.version = SCOPE, __version__
        return resource.scope_metrics[0].metrics  # type: ignore[return-value]

    for table in key_metrics.TABLES:
        _table(table, metrics_of, now_ns)
    for service, users in key_metrics.active_users().items():
        gauge = _metric(metrics_of(service), "app_active_users", key_metrics.ACTIVE_USERS_HELP)
        gauge.gauge.data_points.add(time_unix_nano=now_ns, as_int=users)
    return ExportMetricsServiceRequest(resource_metrics=list(resources.values()))


def _table(
    table: key_metrics.Table, metrics_of: Callable[[str], list[Metric]], now_ns: int
) -> None:
    attribute = _ATTRIBUTES[table.value_label]
    started = key_metrics.STARTED_NS
    by_service: dict[str, tuple[Metric, Metric]] = {}
    for (service, value), series in list(table.series.items()):
        pair = by_service.get(service)
        if pair is None:
            metrics = metrics_of(service)
            duration = _metric(metrics, f"{table.name}_duration", f"{table.what}.", "s")
            duration.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
            errors = _metric(metrics, f"{table.name}_errors", f"{table.what} that failed.")
            errors.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
            errors.sum.is_monotonic = True
            pair = by_service[service] = (duration, errors)
        duration, errors = pair
        point = duration.histogram.data_points.add(
            start_time_unix_nano=started, time_unix_nano=now_ns, count=sum(series.buckets),
            sum=series.sum, bucket_counts=series.buckets, explicit_bounds=key_metrics.BUCKETS,
        )  # fmt: skip
        point.attributes.add(key=attribute).value.string_value = value
        count = errors.sum.data_points.add(
            start_time_unix_nano=started, time_unix_nano=now_ns, as_int=series.errors
        )
        count.attributes.add(key=attribute).value.string_value = value


def _metric(metrics: list[Metric], name: str, description: str, unit: str = "") -> Metric:
    metric = metrics.add()  # type: ignore[attr-defined]
    metric.name, metric.description, metric.unit = name, description, unit
    return metric  # type: ignore[no-any-return]


# Metrics only: in a traces or logs pipeline it is a config error that names it.
KIND = Kind(KeyMetricsReceiverSettings, KeyMetricsReceiver, frozenset({Signal.METRICS}))
