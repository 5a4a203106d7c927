"""The ``debug`` exporter, in the real process: its lines in the sidecar's log at each verbosity,
scrubbed even where the pipeline has no scrubber, bounded in rate, the batch left as it came."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.sidecar import Sidecar, spans_in
from tests.test_receivers import post, trace_request

CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
exporters:
  debug: {verbosity: VERBOSITY, max_lines_per_second: RATE}
  file: {path: "${OUT}"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [debug, file]}
    logs: {receivers: [otlp], exporters: [debug]}
"""


def run(tmp_path: Path, verbosity: str, *requests: tuple[str, bytes], rate: int = 100) -> Sidecar:
    config = CONFIG.replace("VERBOSITY", verbosity).replace("RATE", str(rate))
    with Sidecar(tmp_path, config) as sidecar:
        for path, body in requests:
            assert post(sidecar, path, body)[0] == 200
        assert sidecar.stop() == 0
    return sidecar


def secret_trace() -> bytes:
    request = trace_request(spans=2, name="GET /login?token=SECRET123")
    request.resource_spans[0].scope_spans[0].spans[0].kind = Span.SPAN_KIND_SERVER
    return request.SerializeToString()


def secret_log() -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name").value.string_value = "shop"
    record = resource_logs.scope_logs.add().log_records.add(severity_text="WARN")
    record.body.string_value = "login failed password=hunter2"
    record.attributes.add(key="user.api_key").value.string_value = "k-123456"
    return request.SerializeToString()


def test_normal_is_one_scrubbed_line_per_span_and_leaves_the_batch_as_it_came(
    tmp_path: Path,
) -> None:
    sidecar = run(tmp_path, "normal", ("/v1/traces", secret_trace()))
    lines = sidecar.named("debug")
    assert len(lines) == 2
    server = lines[0]
    assert server["span"] == "GET /login?token=[Filtered]"
    assert (server["kind"], server["status"], server["exporter"]) == ("server", "unset", "debug")
    assert len(server["trace_id"]) == 32 and len(server["span_id"]) == 16
    assert server["duration_ms"] >= 0 and "attributes" not in server
    assert "SECRET123" not in str(sidecar.events) + sidecar.stderr
    # The file exporter after it got the batch as sent: the debug exporter scrubbed a copy.
    assert [s["name"] for _, s in spans_in(sidecar.lines())] == ["GET /login?token=SECRET123"] * 2


def test_detailed_adds_attributes_and_the_resource(tmp_path: Path) -> None:
    sidecar = run(tmp_path, "detailed", ("/v1/logs", secret_log()))
    (line,) = sidecar.named("debug")
    assert line["log_record"] == "login failed password=[Filtered]"
    assert line["severity"] == "WARN" and line["service"] == "shop"
    assert line["attributes"] == {"user.api_key": "[Filtered]"}
    assert line["resource"] == {"service.name": "shop"}
    assert "hunter2" not in str(sidecar.events) and "k-123456" not in str(sidecar.events)


def test_basic_is_one_line_per_batch(tmp_path: Path) -> None:
    sidecar = run(tmp_path, "basic", ("/v1/traces", secret_trace()), ("/v1/logs", secret_log()))
    lines = [{k: v for k, v in line.items() if k not in ("level", "timestamp")}
             for line in sidecar.named("debug")]  # fmt: skip
    assert {"event": "debug", "exporter": "debug", "signal": "traces", "resources": 1,
            "spans": 2} in lines  # fmt: skip
    assert {"event": "debug", "exporter": "debug", "signal": "logs", "resources": 1,
            "log_records": 1} in lines  # fmt: skip


def test_lines_are_bounded_and_what_is_skipped_is_told(tmp_path: Path) -> None:
    many = trace_request(spans=30).SerializeToString()
    sidecar = run(tmp_path, "normal", ("/v1/traces", many), rate=1)  # a burst of 10 lines
    assert len(sidecar.named("debug")) == 10
    assert sum(line["count"] for line in sidecar.named("debug_lines_skipped")) == 20
