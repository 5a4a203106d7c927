"""The key_metrics processor: the guide's numbers from every span, read back from the sidecar's
own /metrics text with Prometheus' parser; bounded labels; distinct users in fixed memory."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE as CUMULATIVE,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from collector import config as configuration
from collector.component import Refused
from collector.processors import key_metrics as module
from collector.processors.key_metrics import BUCKETS, Distinct, KeyMetrics, KeyMetricsSettings
from collector.processors.key_metrics import SERVER as SERVER_TABLE
from collector.receivers import key_metrics as receiver_module
from collector.receivers.key_metrics import KeyMetricsReceiver, KeyMetricsReceiverSettings
from collector.settings import ConfigError, Duration
from collector.signals import Batch, Signal
from collector.status_page import _quantile
from collector.telemetry import ERRORS, REGISTRY
from tests.otlp_sink import OtlpSink
from tests.sidecar import Sidecar
from tests.test_receivers import post

MS = 1_000_000


def span(kind: int, ms: float, error: bool = False, **attributes: Any) -> Span:
    item = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="s", kind=kind,
                start_time_unix_nano=10**18, end_time_unix_nano=10**18 + int(ms * MS))  # fmt: skip
    if error:
        item.status.code = Status.STATUS_CODE_ERROR
    for key, value in attributes.items():
        field = "int_value" if isinstance(value, int) else "string_value"
        name = key if "." in key else key.replace("_", ".")  # http_route; or a dotted name
        setattr(item.attributes.add(key=name).value, field, value)
    return item


def request(service: str, *spans: Span) -> ExportTraceServiceRequest:
    batch = ExportTraceServiceRequest()
    resource_spans = batch.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = service
    resource_spans.scope_spans.add().spans.extend(spans)
    return batch


SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  key_metrics: {}
  sampler: {rate: 0.0}
exporters:
  file: {path: "${OUT}"}
extensions:
  health: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [key_metrics, sampler], exporters: [file]}
"""


def traffic(service: str) -> ExportTraceServiceRequest:
    """Ten requests to /users/{id} (two slow, one a 500), one DB error, two calls to an API."""
    ok = {"http.response.status_code": 200}
    spans = [span(SERVER, ms, http_route="/users/{id}", **ok)
             for ms in (20, 40, 80, 120, 300, 450, 480, 600, 1500, 2000)]  # fmt: skip
    spans[-1].attributes[1].value.int_value = 500
    spans += [
        span(CLIENT, 30, db_system="postgresql"),
        span(CLIENT, 250, True, db_system="postgresql"),
    ]
    spans += [span(CLIENT, 90, http_request_method="GET", server_address="ai.example",
                   **{"http.response.status_code": code}) for code in (200, 503)]  # fmt: skip
    spans.append(span(Span.SPAN_KIND_INTERNAL, 5000))  # neither: not counted
    return request(service, *spans)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_guide_s_numbers_on_metrics_from_every_span(tmp_path: Path) -> None:
    with Sidecar(tmp_path, CONFIG) as sidecar:
        assert post(sidecar, "/v1/traces", traffic("shop").SerializeToString())[0] == 200
        url = f"http://{sidecar.endpoints['health']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            got = samples(answer.read().decode())
    route = (("route", "/users/{id}"), ("service", "shop"))
    bucket = lambda name, le, labels=route: got[(name, tuple(sorted((*labels, ("le", le)))))]  # noqa: E731
    server = "http_server_request_duration_seconds"
    assert got[(f"{server}_count", route)] == 10  # every request, though sampling kept none
    assert bucket(f"{server}_bucket", "0.1") == 3
    assert bucket(f"{server}_bucket", "0.5") == 7  # the guide's P95 line
    assert bucket(f"{server}_bucket", "1.0") == 8  # over it: slow
    assert got[("http_server_request_errors_total", route)] == 1
    database = (("db_system", "postgresql"), ("service", "shop"))
    assert got[("db_client_operation_duration_seconds_count", database)] == 2
    assert bucket("db_client_operation_duration_seconds_bucket", "0.1", database) == 1
    assert got[("db_client_operation_errors_total", database)] == 1
    api = (("host", "ai.example"), ("service", "shop"))
    assert got[("http_client_request_duration_seconds_count", api)] == 2
    assert got[("http_client_request_errors_total", api)] == 1


def measure(processor: KeyMetrics, batch: Batch) -> None:
    asyncio.run(processor.consume(batch))


class Nowhere:
    async def consume(self, batch: Batch) -> None:
        pass


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_labels_are_bounded_and_raw_urls_never_become_one() -> None:
    room = len(SERVER_TABLE.series) + 3  # the tables are process-wide: 3 more label sets
    processor = KeyMetrics("key_metrics/bounded", KeyMetricsSettings(max_series=room),
                           Signal.TRACES, Nowhere())  # fmt: skip
    overflow = value("otelsidecar_key_metrics_overflow_total",
                     metric="http_server_request_duration_seconds")  # fmt: skip
    service = f"bounded-{os.urandom(4).hex()}"  # the counts are process-wide: a new service
    spans = [span(SERVER, 10, http_route=f"/r{n}") for n in range(50)]
    spans.append(span(SERVER, 10, url_full="https://x/?token=s3cr3t"))  # no route
    measure(processor, request(service, *spans))
    count = "http_server_request_duration_seconds_count"
    assert value(count, service=service, route="/r0") == 1
    assert value(count, service=service, route="/r3") == 0
    assert value(count, service=service, route="other") == 48  # 47 over the cap, 1 routeless
    assert value("otelsidecar_key_metrics_overflow_total",
                 metric="http_server_request_duration_seconds") - overflow == 47  # fmt: skip


@pytest.mark.parametrize("distinct", [0, 1, 37, 5000, 60_000])
def test_distinct_users_are_estimated_in_fixed_memory(distinct: int) -> None:
    users = Distinct()
    rng = random.Random(distinct)
    ids = [f"user-{rng.getrandbits(64)}" for _ in range(distinct)]
    for user_id in ids + ids[: distinct // 2]:  # seen again: counted once
        users.add(user_id)
    assert users.count() == pytest.approx(distinct, rel=0.05, abs=1)


def test_active_users_are_the_last_whole_minute_s(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [600.0]
    monkeypatch.setattr("collector.processors.key_metrics.time.time", lambda: now[0])
    processor = KeyMetrics("key_metrics/users", KeyMetricsSettings(), Signal.TRACES, Nowhere())
    users = f"users-{os.urandom(4).hex()}"  # the gauge is process-wide: a new service
    for user in ("u1", "u2", "u2", "u3"):
        measure(processor, request(users, span(SERVER, 5, http_route="/", enduser_id=user)))
    assert value("app_active_users", service=users) == 0  # the minute is not over
    now[0] += 60
    measure(processor, request(users, span(SERVER, 5, http_route="/", enduser_id="u9")))
    assert value("app_active_users", service=users) == 3
    now[0] += 180  # minutes without a request
    measure(processor, request("other", span(SERVER, 5, http_route="/")))
    assert value("app_active_users", service=users) == 0

    measure(processor, request(users, span(SERVER, 5, http_route="/", enduser_id="u1")))

    async def quiet_minute() -> None:  # no span at all: the processor's own clock turns it
        now[0] += 60
        processor.tick_s = 0.001
        await processor.start()
        gauge = lambda: REGISTRY.get_sample_value("app_active_users", {"service": users})  # noqa: E731
        for _ in range(10_000):  # until the clock has ticked (no time asserted)
            if gauge() == 1:
                break
            await asyncio.sleep(0.001)
        assert gauge() == 1  # the last whole minute's one user
        now[0] += 60
        for _ in range(10_000):
            if gauge() is None:
                break
            await asyncio.sleep(0.001)
        await processor.shutdown()

    asyncio.run(quiet_minute())
    assert REGISTRY.get_sample_value("app_active_users", {"service": users}) is None  # gone
    assert processor._clock is not None and processor._clock.cancelled()


def test_exact_at_a_1_percent_sample_and_p95_within_a_bucket(tmp_path: Path) -> None:
    """A known mix at sampler rate 0.01: the counts are exact (every span was measured before
    sampling), and the P95 read from the buckets lies in the bucket of the true P95."""
    rng = random.Random(7)
    durations = [rng.lognormvariate(-2.5, 1.0) * 1000 for _ in range(2000)]  # ms
    failing = set(rng.sample(range(2000), 37))
    spans = [
        span(SERVER, ms, index in failing, http_route="/mix") for index, ms in enumerate(durations)
    ]
    config = CONFIG.replace("rate: 0.0", "rate: 0.01")
    with Sidecar(tmp_path, config) as sidecar:
        for start in range(0, 2000, 500):
            body = request("mix", *spans[start : start + 500]).SerializeToString()
            assert post(sidecar, "/v1/traces", body)[0] == 200
        url = f"http://{sidecar.endpoints['health']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    got = samples(text)
    route = (("route", "/mix"), ("service", "mix"))
    assert got[("http_server_request_duration_seconds_count", route)] == 2000
    assert got[("http_server_request_errors_total", route)] == 37
    buckets = [({"le": dict(labels)["le"]}, value) for (name, labels), value in got.items()
               if name == "http_server_request_duration_seconds_bucket"
               and dict(labels).get("route") == "/mix"]  # fmt: skip
    estimate = _quantile(buckets, 0.95)
    true = sorted(durations)[int(0.95 * 2000) - 1] / 1000
    edges = [0.0, *BUCKETS]
    lower = max(edge for edge in edges if edge < true)
    upper = min(edge for edge in BUCKETS if edge >= true)
    assert estimate is not None and lower <= estimate <= upper


def test_ten_thousand_raw_urls_make_at_most_the_cap_s_series() -> None:
    processor = KeyMetrics("key_metrics/raw", KeyMetricsSettings(), Signal.TRACES, Nowhere())
    before = len(SERVER_TABLE.series)
    spans = [
        span(SERVER, 1, url_full=f"https://shop/orders/{n}?session={n}") for n in range(10_000)
    ]
    spans += [span(SERVER, 1, http_route=f"/orders/{n}") for n in range(10_000)]  # misused route
    service = f"raw-{os.urandom(4).hex()}"  # the tables are process-wide: a new service
    measure(processor, request(service, *spans))
    raw = {key for key in SERVER_TABLE.series if key[0] == service}
    assert len(raw) <= max(0, SERVER_TABLE.limit - before) + 1  # the cap's room, and "other"
    assert (service, "other") in raw
    assert not any("session" in route or "https" in route for _, route in raw)


def test_error_kinds_services_and_client_calls_in_process(monkeypatch: pytest.MonkeyPatch) -> None:

    room = KeyMetricsSettings(max_series=100_000)  # whatever other tests filled
    processor = KeyMetrics("key_metrics/kinds", room, Signal.TRACES, Nowhere())
    service = f"kinds-{os.urandom(4).hex()}"
    failed = span(SERVER, 5, True, http_route="/pay")
    failed.events.add(name="exception").attributes.add(
        key="exception.type"
    ).value.string_value = "KeyError"
    five_hundred = span(SERVER, 5, http_route="/pay", **{"http.response.status_code": 502})
    calls = [span(CLIENT, 20, http_method="POST", net_peer_name="ai.example"),
             span(CLIENT, 20, True, db_system_name="sqlite"),
             span(CLIENT, 20)]  # neither a query nor an HTTP call: not counted  # fmt: skip
    before = {kind: ERRORS[(kind, "/pay")] for kind in ("KeyError", "HTTP 502")}
    measure(processor, request(service, failed, five_hundred, *calls))
    assert ERRORS[("KeyError", "/pay")] - before["KeyError"] == 1
    assert ERRORS[("HTTP 502", "/pay")] - before["HTTP 502"] == 1
    count = "http_server_request_duration_seconds_count"
    assert value(count, service=service, route="/pay") == 2
    assert value("http_server_request_errors_total", service=service, route="/pay") == 2
    assert value("http_client_request_duration_seconds_count", service=service,
                 host="ai.example") == 1  # fmt: skip
    assert value("db_client_operation_errors_total", service=service, db_system="sqlite") == 1
    assert value("http_server_request_duration_seconds_sum", service=service,
                 route="/pay") == pytest.approx(0.01)  # fmt: skip
    assert value("http_server_request_duration_seconds_bucket", service=service, route="/pay",
                 le="0.005") == 2  # fmt: skip

    monkeypatch.setattr(module, "_SERVICES", set())
    monkeypatch.setattr(module, "MAX_SERVICES", 1)
    assert processor._service("first") == "first"
    assert processor._service("second") == "other"  # past the cap
    assert processor._service(None) == "other" and processor._service("first") == "first"


FORWARDING = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
  key_metrics: {interval: 1s}
processors:
  key_metrics: {}
  sampler: {rate: 0.0}
exporters:
  file: {path: "${OUT}"}
  otlp_http: {endpoint: "SINK"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [key_metrics, sampler], exporters: [file]}
    metrics: {receivers: [key_metrics], exporters: [otlp_http]}
"""


def forwarded(batch: Any) -> dict[tuple[str, str, str], Any]:
    """(service, metric, label value) -> the data point, from an OTLP metrics request."""
    points = {}
    for resource in batch.resource_metrics:
        identity = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
        assert identity["service.instance.id"] == socket.gethostname()  # each pod: its series
        (scope,) = resource.scope_metrics
        assert scope.scope.name == "otel-sidecar.key_metrics"
        for metric in scope.metrics:
            kind = metric.WhichOneof("data")
            data = getattr(metric, kind)
            if kind == "histogram":
                assert data.aggregation_temporality == CUMULATIVE and metric.unit == "s"
                for point in data.data_points:
                    assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
                    assert point.count == sum(point.bucket_counts)
            elif kind == "sum":
                assert data.aggregation_temporality == CUMULATIVE and data.is_monotonic
            for point in data.data_points:
                label = point.attributes[0].value.string_value if point.attributes else ""
                points[(identity["service.name"], metric.name, label)] = point
    return points


def test_the_same_numbers_forwarded_as_otlp_metrics(tmp_path: Path) -> None:
    """The key_metrics receiver sends what /metrics shows, cumulative, to a metrics pipeline:
    checked with the official protobufs at a real OTLP/HTTP server."""

    with OtlpSink() as sink:
        config = FORWARDING.replace("SINK", sink.endpoint)
        with Sidecar(tmp_path, config) as sidecar:
            assert post(sidecar, "/v1/traces", traffic("shop").SerializeToString())[0] == 200
            assert post(sidecar, "/v1/traces", traffic("shop").SerializeToString())[0] == 200
            counted = lambda: [  # noqa: E731
                b for b in sink.accepted(Signal.METRICS)
                if ("shop", "http_server_request_duration", "/users/{id}") in forwarded(b)
                and forwarded(b)[("shop", "http_server_request_duration", "/users/{id}")].count
                == 20
            ]  # fmt: skip
            sink.wait_for(counted)
        points = forwarded(counted()[-1])
    server = points[("shop", "http_server_request_duration", "/users/{id}")]
    assert list(server.explicit_bounds) == list(BUCKETS)
    assert sum(server.bucket_counts[: BUCKETS.index(0.5) + 1]) == 14  # 7 of 10, twice
    assert server.start_time_unix_nano < server.time_unix_nano
    assert round(server.sum, 6) == 2 * 5.59
    assert points[("shop", "http_server_request_errors", "/users/{id}")].as_int == 2
    assert points[("shop", "db_client_operation_duration", "postgresql")].count == 4
    assert points[("shop", "db_client_operation_errors", "postgresql")].as_int == 2
    assert points[("shop", "http_client_request_errors", "ai.example")].as_int == 2
    metric_names = {name for _, name, _ in points}
    assert "http_client_request_duration" in metric_names


def test_the_key_metrics_receiver_is_for_metrics_pipelines_only(tmp_path: Path) -> None:
    wrong = FORWARDING.replace("SINK", "http://127.0.0.1:9").replace(
        "receivers: [otlp], processors: [key_metrics", "receivers: [otlp, key_metrics], "
        "processors: [key_metrics"
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"key_metrics.*does not handle traces"):
        configuration.parse_yaml(wrong.replace("${OUT}", str(tmp_path / "out")))


def test_the_last_snapshot_leaves_at_shutdown(tmp_path: Path) -> None:
    """An interval of an hour: what was counted still reaches the backend when the sidecar
    stops (SIGTERM)."""

    with OtlpSink() as sink:
        config = FORWARDING.replace("SINK", sink.endpoint).replace("interval: 1s", "interval: 1h")
        with Sidecar(tmp_path, config) as sidecar:
            assert post(sidecar, "/v1/traces", traffic("late").SerializeToString())[0] == 200
            assert sink.accepted(Signal.METRICS) == []
        (batch,) = sink.accepted(Signal.METRICS)
    assert forwarded(batch)[("late", "http_server_request_duration", "/users/{id}")].count == 10


def test_a_refused_snapshot_is_counted_and_the_next_carries_the_totals() -> None:

    class Full:
        def __init__(self) -> None:
            self.batches: list[Batch] = []
            self.refuse = True

        async def consume(self, batch: Batch) -> None:
            if self.refuse:
                raise Refused("queue_full")
            self.batches.append(batch)

    refused = f"refused-{os.urandom(4).hex()}"
    room = KeyMetricsSettings(max_series=100_000)  # whatever other tests filled
    measure(KeyMetrics("key_metrics", room, Signal.TRACES, Nowhere()), traffic(refused))
    downstream = Full()
    receiver = KeyMetricsReceiver(
        "key_metrics/r", KeyMetricsReceiverSettings(Duration(3600)), {Signal.METRICS: downstream}
    )
    labels = {"receiver": "key_metrics/r", "signal": "metrics", "reason": "queue_full"}
    before = value("otelsidecar_receiver_refused_requests_total", **labels)

    async def twice() -> None:
        await receiver.start()
        await receiver.shutdown(1.0)  # refused: counted
        downstream.refuse = False
        await receiver.start()
        await receiver.shutdown(1.0)

    asyncio.run(twice())
    assert value("otelsidecar_receiver_refused_requests_total", **labels) == before + 1
    requests = [p.count for batch in downstream.batches  # the second snapshot, whole
                for (service, name, _), p in forwarded(batch).items()
                if service == refused and name == "http_server_request_duration"]  # fmt: skip
    assert sum(requests) == 10


def test_a_key_metrics_receiver_without_the_processor_says_so() -> None:

    async def started(receiver: KeyMetricsReceiver) -> None:
        await receiver.start()
        await receiver.shutdown(1.0)

    def events() -> list[str]:
        receiver = KeyMetricsReceiver("key_metrics", KeyMetricsReceiverSettings(),
                                      {Signal.METRICS: Nowhere()})  # fmt: skip
        with capture_logs() as logs:
            asyncio.run(started(receiver))
        return [line["event"] for line in logs]

    gc.collect()  # other tests' processors
    assert "key_metrics_receiver_idle" in events()
    processor = KeyMetrics("key_metrics", KeyMetricsSettings(), Signal.TRACES, Nowhere())
    assert "key_metrics_receiver_idle" not in events()
    del processor


def test_older_attribute_names_and_edges_in_process() -> None:
    """The semantic conventions' older names count as the newer ones (``http.status_code``,
    ``db.system``, ``http.method``); exactly 500 is an error; an empty route, a missing service
    name and a span ending before it starts have their fallbacks; the batch passes on."""

    class Keeps:
        def __init__(self) -> None:
            self.batches: list[Batch] = []

        async def consume(self, batch: Batch) -> None:
            self.batches.append(batch)

    room = KeyMetricsSettings(max_series=100_000)  # whatever other tests filled
    downstream = Keeps()
    processor = KeyMetrics("key_metrics/old", room, Signal.TRACES, downstream)
    tag = os.urandom(4).hex()
    route, database, host = f"/old/{tag}", f"mysql-{tag}", f"api-{tag}.example"
    backwards = span(SERVER, 0, http_route=route, **{"http.status_code": 500})
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 5 * MS
    spans = [
        backwards,
        span(SERVER, 5, True, http_route=route),  # ERROR status, no code, no exception
        span(SERVER, 5, http_route=""),
        span(CLIENT, 20, True, db_system=database),
        span(
            CLIENT,
            20,
            http_method="GET",
            **{"server.address": host, "http.status_code": 503},
        ),
        span(CLIENT, 20, http_request_method="GET"),  # no host at all
    ]
    batch = request("", *spans)
    batch.resource_spans[0].resource.ClearField("attributes")  # no service.name
    before = {kind: ERRORS[(kind, route)] for kind in ("HTTP 500", "error")}
    others = {  # label sets other tests may have counted into as well
        "server": ("http_server_request_duration_seconds_count", {"route": "other"}),
        "client": ("http_client_request_duration_seconds_count", {"host": "other"}),
    }
    other_before = {k: value(name, service="unknown", **o) for k, (name, o) in others.items()}
    measure(processor, batch)
    assert downstream.batches == [batch]
    labels = {"service": "unknown", "route": route}
    assert value("http_server_request_errors_total", **labels) == 2
    assert ERRORS[("HTTP 500", route)] - before["HTTP 500"] == 1
    assert ERRORS[("error", route)] - before["error"] == 1
    assert value("http_server_request_duration_seconds_bucket", le="0.005", **labels) == 2
    assert value("http_server_request_duration_seconds_sum", **labels) == 0.005  # 0 + 5 ms
    for key, (name, other) in others.items():  # the empty route; the call with no host
        assert value(name, service="unknown", **other) - other_before[key] == 1
    assert value("db_client_operation_errors_total", service="unknown", db_system=database) == 1
    assert value("http_client_request_errors_total", service="unknown", host=host) == 1

    text = generate_latest(REGISTRY).decode()
    for help_line in (
        "# HELP http_server_request_duration_seconds Requests the app served (SERVER spans), "
        "from every span before sampling.",
        "# HELP http_server_request_errors_total Requests the app served (SERVER spans) that "
        "failed (ERROR status, HTTP 5xx).",
        "# HELP otelsidecar_key_metrics_overflow_total Spans counted under label value "
        "'other': the metric had max_series label sets.",
    ):
        assert help_line in text
    assert f'le="+Inf",route="{route}",service="unknown"}} 2.0' in text


def test_a_big_snapshot_leaves_in_small_requests_and_a_bug_downstream_ends_only_one() -> None:
    """At most MAX_POINTS data points a request, every series in one of them; a consumer that
    fails once (a third party's bug) costs that snapshot, not the later ones."""

    tag = os.urandom(4).hex()
    room = KeyMetricsSettings(max_series=100_000)  # whatever other tests filled
    routes = [f"/big/{tag}/{n}" for n in range(30)]
    spans = [span(SERVER, 10, http_route=route) for route in routes]
    measure(KeyMetrics("key_metrics", room, Signal.TRACES, Nowhere()), request(tag, *spans))

    class Flaky:
        def __init__(self) -> None:
            self.batches: list[Batch] = []
            self.failures = 1

        async def consume(self, batch: Batch) -> None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("a bug downstream")
            self.batches.append(batch)

    downstream = Flaky()
    receiver = KeyMetricsReceiver(
        "key_metrics/big", KeyMetricsReceiverSettings(Duration(3600)), {Signal.METRICS: downstream}
    )

    async def twice() -> None:
        await receiver._send()  # fails: counted in the log, nothing raised
        await receiver._send()

    original = receiver_module.MAX_POINTS
    receiver_module.MAX_POINTS = 10
    try:
        asyncio.run(twice())
    finally:
        receiver_module.MAX_POINTS = original
    sizes = [sum(len(getattr(m, m.WhichOneof("data")).data_points)
                 for rm in b.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
             for b in downstream.batches]  # fmt: skip
    assert len(sizes) > 1 and max(sizes) <= 10
    seen = {label for b in downstream.batches for (service, name, label) in forwarded(b)
            if service == tag and name == "http_server_request_duration"}  # fmt: skip
    assert seen == set(routes)
