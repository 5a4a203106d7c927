"""The ``key_metrics`` processor (traces): the monitoring guide's key numbers, exact, from 100 %
of spans, on the sidecar's ``/metrics`` (Prometheus), placed before the sampler as the
Collector's spanmetrics connector would be.

From SERVER spans, per service and route (``http.route``, never a raw URL):
``http_server_request_duration_seconds`` (a histogram: its ``_count`` is the requests) and
``http_server_request_errors_total`` (HTTP 5xx or status ERROR). From DB client spans, per
service and ``db.system``: ``db_client_operation_duration_seconds`` and
``db_client_operation_errors_total``. From HTTP client spans, per service and server host:
``http_client_request_duration_seconds`` and ``http_client_request_errors_total``.
``app_active_users`` is the number of distinct ``enduser.id`` a service saw in the last whole
minute, estimated in a fixed 4 KiB per service (HyperLogLog, ~1.6 % error; exact when few).

Bucket edges sit on the guide's thresholds (100 ms for queries, 500 ms and 1 s for requests), so
"P95 under 500 ms" and "slow: over 1 s" read exactly from the buckets. Label values are bounded:
at most ``max_series`` per metric, then ``other`` (counted on
``otelsidecar_key_metrics_overflow_total``). Per span only the kind, duration and status are
read; attributes only for SERVER and CLIENT spans. The counts are process-wide (they go on
across config reloads): put ``key_metrics`` in one traces pipeline, or spans fed to two are
counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Any, ClassVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from collector.attributes import first, plain
from collector.component import TRACES, Consumer, Kind, Processor
from collector.scrubbing import scrub_text
from collector.settings import setting
from collector.signals import Signal
from collector.telemetry import REGISTRY, count_error

_SERVER, _CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
_ERROR = Status.STATUS_CODE_ERROR
_NS = 1e9
OTHER = "other"
# Seconds. 0.1: the guide's DB query target; 0.5: its P95 target; 1: its slow-request line.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

ACTIVE_USERS_HELP = "Distinct enduser.id seen by a service in the last whole minute (estimated)."
_ACTIVE_USERS = Gauge("app_active_users", ACTIVE_USERS_HELP, ["service"], registry=REGISTRY)
STARTED_NS = time.time_ns()  # when the counts began: the start of every cumulative series


def active_users() -> dict[str, int]:
    """``app_active_users`` by service, as /metrics shows it."""
    return {
        sample.labels["service"]: int(sample.value)
        for family in _ACTIVE_USERS.collect()
        for sample in family.samples
    }


class Series:
    """One label set of a duration metric: bucket counts (the last is +Inf), sum, errors."""

    __slots__ = ("buckets", "errors", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.errors = 0

    def observe(self, seconds: float, failed: bool) -> None:
        self.buckets[bisect_left(BUCKETS, seconds)] += 1  # the first edge >= it: "le"
        self.sum += seconds
        self.errors += failed


class Table:
    """A duration histogram and its error counter, by (service, value), at most ``limit`` label
    sets (process-wide, across config reloads); later new ones count under ``other``. Plain
    integers per span; Prometheus reads them when it scrapes (:class:`_Exposition`)."""

    def __init__(self, name: str, value_label: str, what: str) -> None:
        self.name, self.value_label, self.what = name, value_label, what
        self.limit = 500
        self.series: dict[tuple[str, str], Series] = {}
        self.overflow = 0

    def get(self, service: str, value: str) -> Series:
        series = self.series.get((service, value))
        if series is None:
            if len(self.series) >= self.limit:
                self.overflow += 1
                value = OTHER
                series = self.series.get((service, value))
            if series is None:
                series = self.series[(service, value)] = Series()
        return series


SERVER = Table("http_server_request", "route", "Requests the app served (SERVER spans)")
DATABASE = Table("db_client_operation", "db_system", "Database calls (CLIENT spans with db.system)")
OUTGOING = Table("http_client_request", "host", "Outgoing HTTP calls (CLIENT spans, by host)")
TABLES = (SERVER, DATABASE, OUTGOING)
MAX_SERVICES = 100  # distinct service.name labels; later ones count as "other"
_SERVICES: set[str] = set()


class _Exposition:
    """The tables as Prometheus metric families, built when /metrics is read."""

    def collect(self) -> Iterator[Metric]:
        overflow = CounterMetricFamily(
            "otelsidecar_key_metrics_overflow",
            "Spans counted under label value 'other': the metric had max_series label sets.",
            labels=["metric"],
        )
        for table in TABLES:
            labels = ["service", table.value_label]
            duration = HistogramMetricFamily(
                f"{table.name}_duration_seconds",
                f"{table.what}, from every span before sampling.", labels=labels,
            )  # fmt: skip
            errors = CounterMetricFamily(
                f"{table.name}_errors", f"{table.what} that failed (ERROR status, HTTP 5xx).",
                labels=labels,
            )  # fmt: skip
            for (service, value), series in list(table.series.items()):
                cumulative = list(accumulate(series.buckets))
                edges = [*(repr(edge) for edge in BUCKETS), "+Inf"]
                duration.add_metric([service, value], list(zip(edges, cumulative, strict=True)),
                                    series.sum)  # fmt: skip
                errors.add_metric([service, value], series.errors)
            overflow.add_metric([duration.name], table.overflow)
            yield duration
            yield errors
        yield overflow


REGISTRY.register(_Exposition())  # type: ignore[arg-type]


@dataclass(frozen=True)
class KeyMetricsSettings:
    max_series: int = setting(500, minimum=1, maximum=100_000)  # label sets per metric


class Distinct:
    """A HyperLogLog of 4,096 one-byte registers: distinct values in fixed memory."""

    _P = 12
    _M = 1 << _P
    _ALPHA = 0.7213 / (1 + 1.079 / _M)

    def __init__(self) -> None:
        self._registers = bytearray(self._M)

    def add(self, value: str) -> None:
        hashed = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")
        index = hashed >> (64 - self._P)
        rest = hashed & ((1 << (64 - self._P)) - 1)
        rank = (64 - self._P) - rest.bit_length() + 1
        if rank > self._registers[index]:
            self._registers[index] = rank

    def count(self) -> int:
        zeros = self._registers.count(0)
        if zeros == self._M:
            return 0
        estimate = self._ALPHA * self._M * self._M / sum(2.0**-r for r in self._registers)
        if estimate <= 2.5 * self._M and zeros:  # few values: linear counting, near exact
            estimate = self._M * math.log(self._M / zeros)
        return round(estimate)


class KeyMetrics(Processor):
    # The instances alive (weakly held): the key_metrics receiver warns when there is none.
    measuring: ClassVar[weakref.WeakSet[KeyMetrics]] = weakref.WeakSet()

    def __init__(
        self, name: str, settings: KeyMetricsSettings, signal: Signal, next: Consumer
    ) -> None:
        super().__init__(name, signal, next)
        KeyMetrics.measuring.add(self)
        for table in TABLES:
            table.limit = settings.max_series
        self._users: dict[str, Distinct] = {}
        self._minute = int(time.time() // 60)
        self._published: set[str] = set()  # services with an app_active_users value
        self._clock: asyncio.Task[None] | None = None
        self.tick_s = 5.0  # how often the clock looks whether a minute has passed

    async def start(self) -> None:
        """Minutes turn with no spans too: a quiet service's active users go back to none."""
        self._clock = asyncio.get_running_loop().create_task(self._turn_every_minute())

    async def shutdown(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            await asyncio.gather(self._clock, return_exceptions=True)

    async def _turn_every_minute(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self._turn_minute()  # a no-op within a minute

    async def consume(self, batch: ExportTraceServiceRequest) -> None:
        self.measure(batch)
        await self._next.consume(batch)

    def measure(self, batch: ExportTraceServiceRequest) -> None:
        self._turn_minute()
        for resource_spans in batch.resource_spans:
            service = self._service(first(resource_spans.resource.attributes, "service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    kind = span.kind
                    if kind in (_SERVER, _CLIENT):
                        self._measure(service, span, kind)

    def _measure(self, service: str, span: Span, kind: int) -> None:
        found = _read(span.attributes)
        seconds = max(0, span.end_time_unix_nano - span.start_time_unix_nano) / _NS
        code = found.get("http.response.status_code") or found.get("http.status_code")
        failed = span.status.code == _ERROR or (isinstance(code, int) and code >= 500)
        if kind == _SERVER:
            route = found.get("http.route")
            label = _label(route) if isinstance(route, str) and route else OTHER
            SERVER.get(service, label).observe(seconds, failed)
            if failed:
                count_error(_error_kind(span, code), label)
            user = found.get("enduser.id")
            if user is not None:
                self._users_of(service).add(str(user))
            return
        system = found.get("db.system.name") or found.get("db.system")
        if system is not None:
            DATABASE.get(service, _label(str(system))).observe(seconds, span.status.code == _ERROR)
        elif "http.request.method" in found or "http.method" in found:
            host = found.get("server.address") or found.get("net.peer.name") or OTHER
            OUTGOING.get(service, _label(str(host))).observe(seconds, failed)

    def _service(self, name: object) -> str:
        """The service label: at most MAX_SERVICES names (the resource is the client's say)."""
        label = _label(str(name)) if name else "unknown"
        if label not in _SERVICES:
            if len(_SERVICES) >= MAX_SERVICES:
                return OTHER
            _SERVICES.add(label)
        return label

    def _users_of(self, service: str) -> Distinct:
        users = self._users.get(service)
        if users is None:
            users = self._users[service] = Distinct()
        return users

    def _turn_minute(self) -> None:
        """At a new minute, publish the last one's distinct users and start counting again."""
        minute = int(time.time() // 60)
        if minute == self._minute:
            return
        last_whole = minute == self._minute + 1  # else no request came for a minute or more
        counts = {s: users.count() if last_whole else 0 for s, users in self._users.items()}
        for service in self._published - counts.keys():  # no users this time: no series
            with contextlib.suppress(KeyError):
                _ACTIVE_USERS.remove(service)
        for service, count in counts.items():
            _ACTIVE_USERS.labels(service).set(count)
        self._published = set(counts)
        self._users.clear()
        self._minute = minute


def _error_kind(span: Span, code: object) -> str:
    """The exception's type when the span recorded one, else the HTTP status."""
    for event in span.events:
        if event.name == "exception":
            kind = first(event.attributes, "exception.type")
            if kind:
                return _label(str(kind))
    return f"HTTP {code}" if code else "error"


_WANTED = frozenset({
    "http.route", "http.response.status_code", "http.status_code", "enduser.id",
    "db.system.name", "db.system", "http.request.method", "http.method", "server.address",
    "net.peer.name",
})  # fmt: skip


def _read(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """The attributes this needs, in one pass (a protobuf field read costs ~70 ns)."""
    return {kv.key: plain(kv.value) for kv in attributes if kv.key in _WANTED}


@lru_cache(maxsize=4096)
def _label(value: str) -> str:
    """A label value as it may be shown: scrubbed (a route is a template, normally, but a
    secret in one must not become a label), at most 256 characters."""
    return scrub_text(value)[:256]


KIND = Kind(KeyMetricsSettings, KeyMetrics, TRACES)  # registered as an entry point (pyproject.toml)
