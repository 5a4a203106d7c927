"""The otlp_grpc exporter against a real gRPC backend parsing with the official protobufs: what
is sent, with which metadata; retries as the OTLP specification says (RetryInfo honoured,
RESOURCE_EXHAUSTED only with it); partial success counted; TLS; no header value in status or
logs; and end to end, the SDK through the sidecar to the backend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.settings import ConfigError, Duration, build
from collector.signals import Signal, item_count
from collector.telemetry import REGISTRY
from exporters.otlp_base import TlsSettings
from exporters.otlp_grpc import OtlpGrpcExporter, OtlpGrpcSettings
from exporters.retry import RetrySettings
from tests.certificates import self_signed
from tests.otlp_grpc_sink import OtlpGrpcSink
from tests.sidecar import Sidecar, spans_in
from tests.test_receivers import trace_request

API_KEY = "vendor-key-5c4b3a29"


@pytest.fixture
def sink() -> Iterator[OtlpGrpcSink]:
    with OtlpGrpcSink() as running:
        yield running


def run(sink: OtlpGrpcSink, *batches: Any, **overrides: Any) -> OtlpGrpcExporter:
    settings = OtlpGrpcSettings(**{
        "endpoint": sink.endpoint,
        "tls": TlsSettings(insecure=True),
        "headers": {"api-key": API_KEY},
        "retry_on_failure": RetrySettings(initial_interval=Duration(0.05),
                                          max_interval=Duration(0.1),
                                          max_elapsed_time=Duration(1)),
        **overrides,
    })  # fmt: skip
    exporter = OtlpGrpcExporter("otlp_grpc", settings)

    async def main() -> None:
        await exporter.start()
        for batch in batches:
            await exporter.consume(batch)
        await exporter.shutdown()

    asyncio.run(main())
    return exporter


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def sent() -> float:
    return counted("otelsidecar_exporter_sent_items_total", exporter="otlp_grpc", signal="traces")


def dropped(reason: str) -> float:
    return counted("otelsidecar_dropped_items_total", component="otlp_grpc", signal="traces",
                   reason=reason)  # fmt: skip


def test_traces_and_logs_arrive_as_sent_with_the_headers(sink: OtlpGrpcSink) -> None:
    traces = trace_request(spans=3)
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add(severity_text="WARN")
    run(sink, traces, logs)
    assert sink.accepted(Signal.TRACES) == [traces]
    assert sink.accepted(Signal.LOGS) == [logs]
    assert {call.metadata["api-key"] for call in sink.calls} == {API_KEY}


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED],
)  # fmt: skip
def test_transient_codes_are_retried(sink: OtlpGrpcSink, code: grpc.StatusCode) -> None:
    sink.answer(code, times=2)
    before = sent()
    run(sink, trace_request(spans=4))
    assert [call.code for call in sink.calls] == [code, code, grpc.StatusCode.OK]
    assert sent() - before == 4


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
             grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.UNIMPLEMENTED],
)  # fmt: skip
def test_other_codes_are_dropped_and_counted_not_retried(
    sink: OtlpGrpcSink, code: grpc.StatusCode
) -> None:
    sink.answer(code)
    before = dropped("send_error")
    run(sink, trace_request(spans=2))
    assert [call.code for call in sink.calls] == [code]
    assert dropped("send_error") - before == 2


def test_resource_exhausted_with_retry_info_is_retried(sink: OtlpGrpcSink) -> None:
    """The one case RESOURCE_EXHAUSTED may be retried: the server said when."""
    sink.answer(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=0.2)
    run(sink, trace_request(spans=1))
    assert [c.code for c in sink.calls] == [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OK]


def test_a_retry_delay_beyond_the_budget_gives_up(sink: OtlpGrpcSink) -> None:
    sink.answer(grpc.StatusCode.UNAVAILABLE, retry_after=30)
    before = dropped("network_error")
    run(sink, trace_request(spans=1))
    assert len(sink.calls) == 1  # 30 s asked, 1 s of budget: no second call
    assert dropped("network_error") - before == 1


def test_a_dead_backend_costs_the_retry_budget_then_a_counted_drop() -> None:
    with OtlpGrpcSink() as gone:
        endpoint = gone.endpoint
    before = dropped("network_error")
    exporter = run(OtlpGrpcSink(port=int(endpoint.rpartition(":")[2])), trace_request(spans=3))
    assert dropped("network_error") - before == 3
    assert exporter.status() == (
        "degraded",
        f"sending to {endpoint}: last send failed (UNAVAILABLE)",
    )


def test_partial_success_is_counted_not_retried(sink: OtlpGrpcSink) -> None:
    sink.reply[Signal.TRACES] = ExportTraceServiceResponse(
        partial_success={"rejected_spans": 2, "error_message": "too old"}
    ).SerializeToString()
    before_sent, before_rejected = sent(), dropped("rejected")
    run(sink, trace_request(spans=5))
    assert len(sink.calls) == 1
    assert (sent() - before_sent, dropped("rejected") - before_rejected) == (3, 2)


def test_no_header_value_in_status_or_repr(sink: OtlpGrpcSink) -> None:
    sink.answer(grpc.StatusCode.PERMISSION_DENIED)
    exporter = run(sink, trace_request())
    assert API_KEY not in repr(exporter._settings) + str(exporter.status())


def test_config_refuses_what_cannot_work(tmp_path: Path) -> None:
    for raw, message in [
        ({"endpoint": "gateway"}, "host:port"),
        ({"endpoint": "gateway:4317", "headers": {"Api-Key": "x"}}, "lower case"),
        ({"endpoint": "gateway:4317", "tls": {"cert_file": str(tmp_path)}}, "go together"),
        ({"endpoint": "gateway:4317", "tls": {"ca_file": "/nope/ca.pem"}}, "no such file"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build(OtlpGrpcSettings, raw, "exporters.otlp_grpc").check("exporters.otlp_grpc")


def test_tls_with_the_servers_ca(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    with OtlpGrpcSink(credentials=credentials) as secure:
        run(secure, trace_request(spans=2), tls=TlsSettings(ca_file=str(cert)))
        assert item_count(secure.accepted(Signal.TRACES)[0]) == 2
        before = dropped("network_error")
        run(secure, trace_request(spans=1), tls=TlsSettings())  # the system's roots: refused
        assert dropped("network_error") - before == 1


CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  batch: {timeout: 20ms}
exporters:
  otlp_grpc: {endpoint: "http://ENDPOINT", headers: {api-key: "API_KEY"}}
  file: {path: "${OUT}"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [otlp_grpc, file]}
"""


def test_the_sidecar_forwards_over_grpc(sink: OtlpGrpcSink, tmp_path: Path) -> None:
    from tests.test_receivers import post

    config = CONFIG.replace("ENDPOINT", sink.endpoint).replace("API_KEY", API_KEY)
    with Sidecar(tmp_path, config) as sidecar:
        batch = trace_request(spans=6)
        status, _, _ = post(sidecar, "/v1/traces", batch.SerializeToString())
        assert status == 200
        sink.wait_for(lambda: sink.accepted(Signal.TRACES))
        assert sidecar.stop() == 0
    (received,) = sink.accepted(Signal.TRACES)
    assert item_count(received) == 6 == len(spans_in(sidecar.lines()))
    assert API_KEY not in str(sidecar.events) + sidecar.stderr


def test_round_robin_spreads_calls_over_every_address() -> None:
    """As over a headless Service's pods (dns:///...); here two backends named at once."""
    with OtlpGrpcSink() as first, OtlpGrpcSink() as second:
        target = f"ipv4:{first.endpoint},{second.endpoint}"
        run(first, *[trace_request() for _ in range(20)], endpoint=target,
            balancer_name="round_robin")  # fmt: skip
        assert first.accepted(Signal.TRACES) and second.accepted(Signal.TRACES)
        assert len(first.calls) + len(second.calls) == 20


@pytest.mark.parametrize(
    "endpoint", ["dns:///otel-gateway-headless:4317", "ipv4:10.0.0.1:4317,10.0.0.2:4317"]
)
def test_grpc_targets_naming_several_addresses_are_accepted(endpoint: str) -> None:
    OtlpGrpcSettings(endpoint=endpoint).check("exporters.otlp_grpc")


def test_an_exporter_named_like_a_receiver_has_its_own_health_entry(tmp_path: Path) -> None:
    """The otlp receiver's transports are otlp_grpc and otlp_http; so are the exporters' types."""
    import json
    import urllib.request

    config = (
        CONFIG.replace("ENDPOINT", "127.0.0.1:9")
        .replace("API_KEY", API_KEY)
        .replace(
            'http: {endpoint: "127.0.0.1:0"}',
            'http: {endpoint: "127.0.0.1:0"}, grpc: {endpoint: "127.0.0.1:0"}',
        )
        + 'extensions: {health: {endpoint: "127.0.0.1:0"}}\n'
    )
    with Sidecar(tmp_path, config) as sidecar:
        url = f"http://{sidecar.endpoints['health']}/health"
        with urllib.request.urlopen(url, timeout=5) as answer:
            components = json.load(answer)["components"]
    assert components["otlp_grpc"]["message"].startswith("listening on")  # the receiver
    assert components["exporter/otlp_grpc"]["message"] == "sending to 127.0.0.1:9"
