"""`make demo`: the sidecar with realistic traffic, no account needed.

Starts ``otel-sidecar run`` (default pipelines, file exporter), then plays a small web service
for ``DEMO_SECONDS`` (default 20): the OpenTelemetry Python SDK sends its traces over OTLP/gRPC
and its logs over OTLP/HTTP, as an instrumented FastAPI + SQLAlchemy + structlog app would.
Ends with a summary of what was sent and what the sidecar wrote.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "sidecar-out" / "telemetry.jsonl"
ROUTES = [
    ("GET", "/api/lessons/{lesson_id}", "SELECT * FROM lessons WHERE id = 42"),
    ("POST", "/api/execute", "INSERT INTO submissions (user_id, code) VALUES (7, 'print(1)')"),
    ("GET", "/api/users/me", "SELECT id, email FROM users WHERE id = 7"),
    ("GET", "/health", None),
]


SECRET = "demo-secret-token"  # sent in an Authorization header; must never reach the output
SIDECAR_LINES: list[dict] = []


def show(line: str) -> None:
    print(f"  sidecar | {line.rstrip()}")
    SIDECAR_LINES.append(json.loads(line))


def start_sidecar() -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {**os.environ, "OTEL_SIDECAR_FILE_PATH": str(OUTPUT)}
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "collector", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sidecar.stdout is not None
    for line in sidecar.stdout:
        show(line)
        event = SIDECAR_LINES[-1]
        if event["event"] == "sidecar_started":
            return sidecar, event["endpoints"]
        if event["event"] == "start_failed":
            break
    raise SystemExit("the sidecar did not start (is another one on ports 4317/4318?)")


def play_service(endpoints: dict[str, str], seconds: float) -> tuple[int, int]:
    """Simulated requests for `seconds`; returns (spans, log records) emitted."""
    resource = Resource.create(
        {
            "service.name": "helloagents-backend",
            "service.version": "1.0.0",
            "deployment.environment.name": "demo",
        }
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoints["otlp_grpc"], insecure=True))
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=f"http://{endpoints['otlp_http']}/v1/logs")
        )
    )
    tracer = tracer_provider.get_tracer("demo")
    logger = logger_provider.get_logger("app.api")
    spans = logs = 0
    deadline = time.monotonic() + seconds
    rng = random.Random(7)
    while time.monotonic() < deadline:
        method, route, statement = rng.choice(ROUTES)
        user_id = rng.randint(1, 50)
        with tracer.start_as_current_span(
            f"{method} {route}",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.path": route.replace("{lesson_id}", str(rng.randint(1, 99))),
                "enduser.id": str(user_id),
                "http.request.header.authorization": [f"Bearer {SECRET}"],
                "user_agent.original": "Mozilla/5.0 (demo)",
            },
        ) as server:
            spans += 1
            if statement:
                with tracer.start_as_current_span(
                    statement.split()[0],
                    kind=SpanKind.CLIENT,
                    attributes={"db.system": "postgresql", "db.statement": statement},
                ):
                    spans += 1
                    time.sleep(rng.uniform(0.001, 0.01))
            if route == "/api/execute" and rng.random() < 0.05:
                time.sleep(1.05)  # a slow request: the sidecar logs slow_request for it
            failed = route == "/api/execute" and rng.random() < 0.1
            if failed:
                try:
                    raise TimeoutError("sandbox did not answer within 30 s")
                except TimeoutError as error:
                    server.record_exception(error)
                    server.set_status(Status(StatusCode.ERROR, "sandbox timeout"))
            server.set_attribute("http.response.status_code", 500 if failed else 200)
            logger.emit(
                body="request_completed",
                severity_number=SeverityNumber.ERROR if failed else SeverityNumber.INFO,
                attributes={"user_id": user_id, "path": route, "success": not failed},
                context=set_span_in_context(server),
            )
            logs += 1
        time.sleep(rng.uniform(0.005, 0.03))
    tracer_provider.shutdown()
    logger_provider.shutdown()
    return spans, logs


def count_output() -> tuple[int, int, int]:
    """(lines, spans, log records) in the file exporter's output."""
    lines = spans = logs = 0
    for line in OUTPUT.read_text().splitlines():
        request = json.loads(line)
        lines += 1
        for rs in request.get("resourceSpans", []):
            spans += sum(len(ss.get("spans", [])) for ss in rs.get("scopeSpans", []))
        for rl in request.get("resourceLogs", []):
            logs += sum(len(sl.get("logRecords", [])) for sl in rl.get("scopeLogs", []))
    return lines, spans, logs


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "20"))
    OUTPUT.unlink(missing_ok=True)
    print("Starting the sidecar (default pipelines, file exporter) ...")
    sidecar, endpoints = start_sidecar()
    try:
        print(f"Playing a web service for {seconds:g} s: traces over gRPC, logs over HTTP ...")
        sent_spans, sent_logs = play_service(endpoints, seconds)
    finally:
        sidecar.terminate()
        assert sidecar.stdout is not None
        for line in sidecar.stdout:
            show(line)
        code = sidecar.wait(60)
    lines, spans, logs = count_output()
    slow = sum(1 for event in SIDECAR_LINES if event["event"] == "slow_request")
    leaked = SECRET in OUTPUT.read_text()
    print()
    print(f"sent:     {sent_spans} spans, {sent_logs} log records")
    print(f"received: {spans} spans, {logs} log records in {lines} batches")
    print(f"slow requests logged by the sidecar: {slow}")
    print(f"Authorization header in the output: {'LEAKED' if leaked else 'removed'}")
    print(f"output:   {OUTPUT} (one OTLP/JSON export request per line)")
    print(f"sidecar exit code: {code}")
    print("Set SENTRY_DSN to send the same traffic to Sentry as well.")
    ok = code == 0 and (spans, logs) == (sent_spans, sent_logs) and not leaked
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
