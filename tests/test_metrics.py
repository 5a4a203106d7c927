"""The metrics signal: the OpenTelemetry SDK's own metric exporters send to the sidecar, which
scrubs and batches the data points and forwards them to real OTLP/gRPC and OTLP/HTTP servers
(parsing with the official protobufs) and to the file; the Sentry exporter takes none."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from collector.config import parse_yaml
from collector.settings import ConfigError
from collector.signals import Signal, item_count
from tests.otlp_grpc_sink import OtlpGrpcSink
from tests.otlp_sink import OtlpSink
from tests.sidecar import Sidecar
from tests.test_receivers import post

SECRET = "S3CRETVALUE"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
      http: {endpoint: "127.0.0.1:0"}
processors:
  memory_limiter: {limit_mib: 128}
  scrubber: {}
  batch: {timeout: 20ms}
exporters:
  otlp_grpc: {endpoint: "http://GRPC_SINK"}
  otlp_http: {endpoint: "HTTP_SINK"}
  file: {path: "${OUT}"}
service:
  pipelines:
    metrics:
      receivers: [otlp]
      processors: [memory_limiter, scrubber, batch]
      exporters: [otlp_grpc, otlp_http, file]
"""
FILE_ONLY = CONFIG.replace("otlp_grpc, otlp_http, file", "file").replace(
    '  otlp_grpc: {endpoint: "http://GRPC_SINK"}\n  otlp_http: {endpoint: "HTTP_SINK"}\n', ""
)


def record_and_send(exporter: MetricExporter) -> None:
    """What an app's SDK does: a counter and a histogram, exported once."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "shop"}), metric_readers=[reader]
    )
    meter = provider.get_meter("shop.http")
    attributes = {"http.route": "/users/{id}", "url.full": f"https://api/x?token={SECRET}"}
    meter.create_counter("http.server.requests").add(3, attributes)
    meter.create_histogram("http.server.duration", unit="ms").record(120.5, attributes)
    provider.shutdown()  # exports what was recorded


def export_metrics(sidecar: Sidecar, request: ExportMetricsServiceRequest) -> grpc.StatusCode:
    with grpc.insecure_channel(sidecar.endpoints["otlp_grpc"]) as channel:
        try:
            channel.unary_unary(METRICS_EXPORT)(request.SerializeToString(), timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def metrics_by_name(batch: ExportMetricsServiceRequest) -> dict[str, object]:
    return {
        metric.name: metric
        for rm in batch.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_metrics_are_scrubbed_and_forwarded_intact(tmp_path: Path, transport: str) -> None:
    with OtlpGrpcSink() as grpc_sink, OtlpSink() as http_sink:
        config = CONFIG.replace("GRPC_SINK", grpc_sink.endpoint)
        config = config.replace("HTTP_SINK", http_sink.endpoint)
        with Sidecar(tmp_path, config) as sidecar:
            if transport == "grpc":
                exporter: MetricExporter = GrpcMetricExporter(
                    endpoint=sidecar.endpoints["otlp_grpc"], insecure=True
                )
            else:
                exporter = HttpMetricExporter(endpoint=sidecar.url("/v1/metrics"))
            record_and_send(exporter)
            grpc_sink.wait_for(lambda: grpc_sink.accepted(Signal.METRICS))
            http_sink.wait_for(lambda: http_sink.accepted(Signal.METRICS))
            assert sidecar.stop() == 0
        lines = sidecar.output.read_text()
    for received in (grpc_sink.accepted(Signal.METRICS)[0], http_sink.accepted(Signal.METRICS)[0]):
        assert item_count(received) == 2
        resource = {kv.key: kv.value.string_value for kv in
                    received.resource_metrics[0].resource.attributes}  # fmt: skip
        assert resource["service.name"] == "shop"
        metrics = metrics_by_name(received)
        (point,) = metrics["http.server.requests"].sum.data_points
        assert point.as_int == 3
        values = {kv.key: kv.value.string_value for kv in point.attributes}
        assert values["http.route"] == "/users/{id}"
        assert values["url.full"] == "https://api/x?token=[Filtered]"
        (histogram,) = metrics["http.server.duration"].histogram.data_points
        assert (histogram.count, histogram.sum) == (1, 120.5)
        assert metrics["http.server.duration"].unit == "ms"
        assert SECRET.encode() not in received.SerializeToString()
    written = [json.loads(line) for line in lines.splitlines()]
    assert [next(iter(line)) for line in written] == ["resourceMetrics"]
    assert "http.server.duration" in lines and SECRET not in lines


def test_metrics_as_json_and_their_count_on_metrics(tmp_path: Path) -> None:
    body = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
        "name": "queue.depth",
        "gauge": {"dataPoints": [{"asInt": "7", "timeUnixNano": "1"},
                                 {"asDouble": 2.5, "timeUnixNano": "2"}]},
    }]}]}]}  # fmt: skip
    with Sidecar(tmp_path, FILE_ONLY) as sidecar:
        status, _, _ = post(sidecar, "/v1/metrics", json.dumps(body).encode(), "application/json")
        assert status == 200
        assert sidecar.stop() == 0
    (line,) = [json.loads(text) for text in sidecar.output.read_text().splitlines()]
    points = line["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"]
    assert [p.get("asInt", p.get("asDouble")) for p in points] == ["7", 2.5]


def test_invalid_exemplar_ids_are_refused(tmp_path: Path) -> None:
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    metric.gauge.data_points.add(as_int=1).exemplars.add(trace_id=b"short", as_int=1)
    with Sidecar(tmp_path, FILE_ONLY) as sidecar:
        status, body, _ = post(sidecar, "/v1/metrics", request.SerializeToString())
        assert status == 400 and b"exemplar with invalid ids" in body
        assert export_metrics(sidecar, request) == grpc.StatusCode.INVALID_ARGUMENT
        assert sidecar.stop() == 0
    assert not sidecar.output.exists() or sidecar.output.read_text() == ""


def test_without_a_metrics_pipeline_metrics_are_unimplemented(tmp_path: Path) -> None:
    config = FILE_ONLY.replace("    metrics:\n", "    traces:\n")
    with Sidecar(tmp_path, config) as sidecar:
        code = export_metrics(sidecar, ExportMetricsServiceRequest())
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert post(sidecar, "/v1/metrics", b"")[0] == 404


def test_sentry_in_a_metrics_pipeline_is_a_config_error() -> None:
    config = FILE_ONLY.replace("  file: {path", "  sentry: {dsn: ''}\n  file: {path")
    config = config.replace("exporters: [file]", "exporters: [sentry]")
    with pytest.raises(ConfigError) as raised:
        parse_yaml(config, {"OUT": "x"})
    assert str(raised.value) == (
        "service.pipelines.metrics.exporters[0]: 'sentry' does not handle metrics"
    )


def test_a_summary_is_taken_and_scrubbed(tmp_path: Path) -> None:
    """Summary points have no exemplars: validation and scrubbing must not expect them."""
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="latency")
    point = metric.summary.data_points.add(count=3, sum=1.5)
    point.attributes.add(key="api_key").value.string_value = SECRET
    with Sidecar(tmp_path, FILE_ONLY) as sidecar:
        assert post(sidecar, "/v1/metrics", request.SerializeToString())[0] == 200
        assert sidecar.stop() == 0
    written = sidecar.output.read_text()
    assert '"summary"' in written and SECRET not in written and "[Filtered]" in written
