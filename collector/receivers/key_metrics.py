"""The ``key_metrics`` receiver (metrics): what the ``key_metrics`` processor counts, as OTLP
metrics into the metrics pipelines that list it, every ``interval``; the processor and this
receiver together are the Collector's spanmetrics connector, in two halves.

The figures are the ones ``/metrics`` shows, under the same names (without Prometheus' unit and
``_total`` suffixes, which an OTLP-to-Prometheus translation adds back): cumulative since the
sidecar started, so a snapshot that could not be sent loses nothing: the next carries the
totals. One resource per service (``service.name``, and this sidecar's host, a pod's name, as
``service.instance.id``: each pod's totals are their own series); the route, database system
or host as ``http.route``, ``db.system.name`` or ``server.address``. A snapshot refused for
want of room downstream is counted on ``otelsidecar_receiver_refused_requests_total``; the
last one is sent at shutdown, after the listening receivers have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

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
from collector.component import Entrance, Kind, Refused
from collector.processors import key_metrics
from collector.settings import Duration, setting
from collector.signals import Signal
from collector.telemetry import REFUSED

log = structlog.get_logger()
SCOPE = "otel-sidecar.key_metrics"
# Each table's value label -> the attribute it is in OTLP (OpenTelemetry's semantic conventions).
_ATTRIBUTES = {"route": "http.route", "db_system": "db.system.name", "host": "server.address"}
MAX_POINTS = 1_000  # data points per request
# Who wrote the series: each pod's sidecar counts its own, so each is its own writer (a pod's
# name is its host name). Without it, two pods' running totals would be one series.
_HOST = socket.gethostname()
_WRITER = {"service.instance.id": _HOST, "host.name": _HOST}


@dataclass(frozen=True)
class KeyMetricsReceiverSettings:
    interval: Duration = setting(Duration(60), minimum=1, maximum=3600)


class KeyMetricsReceiver:
    running: ClassVar[weakref.WeakSet[KeyMetricsReceiver]] = weakref.WeakSet()

    def __init__(
        self, name: str, settings: KeyMetricsReceiverSettings, consumers: Mapping[Signal, Entrance]
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
        if KeyMetricsReceiver.running:
            reason = (
                "another key_metrics receiver sends the same numbers: list one in each pipeline"
            )
            log.warning("key_metrics_receiver_duplicate", receiver=self.name, reason=reason)
        KeyMetricsReceiver.running.add(self)
        self._task = asyncio.get_running_loop().create_task(self._every_interval())

    async def shutdown(self, grace_s: float) -> None:
        KeyMetricsReceiver.running.discard(self)
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
        """One snapshot, in requests of at most MAX_POINTS points. A refusal ends it: the
        next carries the totals."""
        try:
            for batch in snapshots(time.time_ns()):
                await self._next.consume(batch)
        except Refused as refusal:
            REFUSED.labels(self.name, Signal.METRICS.value, refusal.reason).inc()
            log.warning("key_metrics_snapshot_refused", receiver=self.name, reason=refusal.reason)
        except Exception as error:  # a bug downstream must not end the snapshots for good
            log.error("key_metrics_snapshot_failed", receiver=self.name, error=type(error).__name__)


def snapshots(now_ns: int) -> Iterator[ExportMetricsServiceRequest]:
    """The tables and the active users as cumulative OTLP metrics: one resource per service,
    in requests of at most MAX_POINTS data points (a table of 100,000 series would otherwise
    be one request of ~100 MiB, built in seconds with the loop held)."""
    building = _Request(now_ns)
    for table in key_metrics.TABLES:
        for (service, value), series in list(table.series.items()):
            building.series(table, service, value, series)
            if building.points >= MAX_POINTS:
                yield building.take()
    for service, users in key_metrics.active_users().items():
        building.gauge(service, users)
    if building.points:
        yield building.take()


class _Request:
    """An export request being filled, metric by metric, one resource per service."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns
        self.points = 0
        self._resources: dict[str, ResourceMetrics] = {}
        self._metrics: dict[tuple[str, str], Metric] = {}

    def take(self) -> ExportMetricsServiceRequest:
        request = ExportMetricsServiceRequest(resource_metrics=list(self._resources.values()))
        self.points, self._resources, self._metrics = 0, {}, {}
        return request

    def series(
        self, table: key_metrics.Table, service: str, value: str, series: key_metrics.Series
    ) -> None:
        started, attribute = key_metrics.STARTED_NS, _ATTRIBUTES[table.value_label]
        duration = self._metric(
            service, "histogram", f"{table.name}_duration", f"{table.what}.", "s"
        )
        point = duration.histogram.data_points.add(
            start_time_unix_nano=started, time_unix_nano=self.now_ns, count=sum(series.buckets),
            sum=series.sum, bucket_counts=series.buckets, explicit_bounds=key_metrics.BUCKETS,
        )  # fmt: skip
        point.attributes.add(key=attribute).value.string_value = value
        errors = self._metric(service, "sum", f"{table.name}_errors", f"{table.what} that failed.")
        count = errors.sum.data_points.add(
            start_time_unix_nano=started, time_unix_nano=self.now_ns, as_int=series.errors
        )
        count.attributes.add(key=attribute).value.string_value = value
        self.points += 2

    def gauge(self, service: str, users: int) -> None:
        gauge = self._metric(service, "gauge", "app_active_users", key_metrics.ACTIVE_USERS_HELP)
        gauge.gauge.data_points.add(time_unix_nano=self.now_ns, as_int=users)
        self.points += 1

    def _metric(
        self, service: str, kind: str, name: str, description: str, unit: str = ""
    ) -> Metric:
        """The service's metric ``name``, made on first use: a ``histogram`` or a monotonic
        ``sum`` (both cumulative), or a ``gauge``."""
        metric = self._metrics.get((service, name))
        if metric is None:
            metrics = self._resource(service).scope_metrics[0].metrics
            metric = metrics.add(name=name, description=description, unit=unit)
            data = getattr(metric, kind)
            data.SetInParent()
            if kind != "gauge":
                data.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
            if kind == "sum":
                data.is_monotonic = True
            self._metrics[(service, name)] = metric
        return metric

    def _resource(self, service: str) -> ResourceMetrics:
        resource = self._resources.get(service)
        if resource is None:
            resource = self._resources[service] = ResourceMetrics()
            attributes = resource.resource.attributes
            attributes.add(key="service.name").value.string_value = service
            for key, value in _WRITER.items():
                attributes.add(key=key).value.string_value = value
            scope = resource.scope_metrics.add().scope
            scope.name, scope.version = SCOPE, __version__
        return resource


# Metrics only: in a traces or logs pipeline it is a config error that names it.
KIND = Kind(KeyMetricsReceiverSettings, KeyMetricsReceiver, frozenset({Signal.METRICS}))
