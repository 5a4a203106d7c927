"""Zero code, end to end: the HelloAgents example under ``opentelemetry-instrument`` (a uvicorn
subprocess) sends to a sidecar subprocess, which sends to a capturing Sentry server refereed by
Relay. One scenario of real requests runs once per module; each test reads one aspect of it."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from examples import services, traffic
from tests.sentry_sink import SentrySink
from tests.sidecar import Sidecar, metric_names, spans_in

pytestmark = pytest.mark.slow

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
processors:
  slow_spans: {threshold_ms: 1000}
  sampler: {rate: 1.0}
  scrubber: {}
  batch: {timeout: 50ms}
exporters:
  sentry: {dsn: "DSN", environment: test, transaction_wait: 300ms}
  file: {path: "${OUT}"}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [slow_spans, sampler, scrubber, batch]
      exporters: [sentry, file]
    logs: {receivers: [otlp], processors: [scrubber, batch], exporters: [sentry, file]}
    metrics: {receivers: [otlp], processors: [scrubber, batch], exporters: [file]}
"""
# What the scenario sends, in order: one request of each kind, successful executions three times.
SCENARIO = ["list", "lesson", "execute", "execute", "execute", "error", "slow", "timeout", "agent"]


@dataclass
class Run:
    sink: SentrySink
    sidecar: Sidecar
    app_output: list[str]
    statuses: dict[str, int]

    def transactions(self) -> list[dict[str, Any]]:
        return self.sink.events("transaction")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [t for t in self.transactions() if t["transaction"] == name]

    def everything_sent(self) -> str:
        """Every byte that left the sidecar, and what it logged."""
        envelopes = [item.payload.get_bytes().decode() for r in self.sink.received
                     for item in r.envelope.items]  # fmt: skip
        file_output = self.sidecar.output.read_text() if self.sidecar.output.exists() else ""
        return "\n".join([*envelopes, file_output, json.dumps(self.sidecar.events)])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("zero_code")
    calls = {call.kind: call for _, call in traffic.CALLS}
    with SentrySink() as sink:
        sidecar = Sidecar(tmp, CONFIG.replace("DSN", sink.dsn)).start()
        stub, ai_url = services.ai_stub()
        try:
            endpoint = f"http://{sidecar.endpoints['otlp_grpc']}"
            env = services.app_env(tmp / "app.db", ai_url, endpoint)
            app, base_url = services.start_app(env)
            statuses = {}
            try:
                with httpx.Client(base_url=base_url, timeout=30) as client:
                    for index, kind in enumerate(SCENARIO):
                        statuses[f"{kind}{index}"] = traffic.send(client, calls[kind], user_id=3)
                    client.get("/health")
            finally:
                # uvicorn re-raises SIGTERM once it has shut down gracefully
                assert app.stop() in (0, -signal.SIGTERM)
            sink.wait_for(lambda: len(sink.events("transaction")) >= len(SCENARIO), timeout=30)
        finally:
            stub.stop()
            sidecar.stop()
        yield Run(sink, sidecar, app.lines, statuses)
    assert sink.referee_errors == [], json.dumps(sink.referee_errors, indent=1)[:3000]


def test_every_request_is_answered(run: Run) -> None:
    """The instrumented app behaves as it does without instrumentation, and the instrumentation
    writes nothing of its own to the app's output (no export errors, no metrics complaints)."""
    expected = {"error": 500, "timeout": 408}
    for key, status in run.statuses.items():
        kind = key.rstrip("0123456789")
        assert status == expected.get(kind, 200), (key, status, run.app_output[-30:])
    markers = ("Failed to export", "Transient error", "UNIMPLEMENTED", "Overriding of current")
    assert [line for line in run.app_output if any(m in line for m in markers)] == []


def test_the_app_records_no_request_metrics_of_its_own_by_default(run: Run) -> None:
    """The sidecar's key_metrics computes them from every span; recording them in the app too
    would cost it CPU on every request (``OTEL_SIDECAR_APP_INSTRUMENTATION_METRICS=true`` does:
    tests/instrumentation/test_app_servers.py)."""
    assert metric_names(run.sidecar.lines()) == set()


def test_failing_request_becomes_an_error_with_frames_context_and_variables(run: Run) -> None:
    (error,) = [
        e for e in run.sink.events() if e["exception"]["values"][-1]["type"] == "ZeroDivisionError"
    ]
    raised = error["exception"]["values"][-1]
    assert raised["mechanism"]["handled"] is False
    frames = raised["stacktrace"]["frames"]
    # (Python 3.11 runs a list comprehension in a frame of its own; 3.12 does not.)
    in_app = [f for f in frames if f.get("in_app") and f["function"] != "<listcomp>"]
    assert [f["function"] for f in in_app] == [
        "execute_code", "execute", "_run_statement", "_evaluate", "_evaluate", "_binary",
    ]  # fmt: skip
    innermost = in_app[-1]
    assert innermost["module"] == "helloagents.sandbox"
    assert innermost["filename"] == "helloagents/sandbox.py"
    assert innermost["abs_path"].endswith("examples/helloagents/sandbox.py")
    assert innermost["context_line"] == "    return _OPERATORS[type(op)](left, right)"
    assert (
        innermost["pre_context"][-1]
        == "def _binary(op: ast.operator, left: Any, right: Any) -> Any:"
    )
    assert len(innermost["post_context"]) == 5
    assert innermost["vars"]["left"] == "10" and innermost["vars"]["right"] == "0"
    route = in_app[0]
    assert route["module"] == "helloagents.main"
    assert route["vars"]["body"] == "Code(lesson_id=3, code='total = 10\\nprint(total / 0)')"
    assert all(not f.get("in_app") for f in frames if "site-packages" in f.get("abs_path", ""))
    # The request, its user and the tags set on the way, from the request's server span.
    assert error["request"]["method"] == "POST"
    assert error["request"]["url"].endswith("/api/execute")
    headers = error["request"]["headers"]
    assert headers["User-Agent"] == "helloagents-traffic/1.0"
    assert headers["X-Request-Id"].startswith("req-")
    assert not {"Authorization", "Cookie"} & set(headers)
    assert error["user"]["id"] == "3"
    assert error["tags"]["lesson_id"] == "3"
    assert error["tags"]["feature"] == "code_execution"
    assert error["contexts"]["code_execution"]["language"] == "python"
    assert error["transaction"] == "/api/execute"


def test_captured_exception_is_handled(run: Run) -> None:
    (timeout,) = [
        e for e in run.sink.events() if e["exception"]["values"][-1]["type"] == "ExecutionTimeout"
    ]
    raised = timeout["exception"]["values"][-1]
    assert raised["mechanism"]["handled"] is True
    assert raised["module"] == "helloagents.sandbox"
    assert raised["stacktrace"]["frames"][-1]["function"] == "_call"


def test_transaction_holds_its_queries_and_no_noise(run: Run) -> None:
    executions = run.named("/api/execute")
    assert len(executions) == 6  # three successful, one failing, one slow, one timing out
    for transaction in executions:
        ops = [span["op"] for span in transaction["spans"]]
        assert "db" in ops
        assert not [op for op in ops if "http send" in op or "http receive" in op]
        assert "connect" not in [span["description"] for span in transaction["spans"]]
    queries = [s["description"] for t in executions for s in t["spans"] if s["op"] == "db"]
    assert any(q.startswith("SELECT users.id") for q in queries)
    assert any(q.startswith("INSERT INTO submissions") for q in queries)
    assert all("'" not in query for query in queries), "SQL literals reached Sentry"
    (agent,) = run.named("/api/agents/{agent}/runs")
    assert "http.client" in [span["op"] for span in agent["spans"]]


def test_start_up_and_probes_make_no_transaction(run: Run) -> None:
    names = {t["transaction"] for t in run.transactions()}
    assert names == {
        "/api/lessons", "/api/lessons/{lesson_id}", "/api/execute", "/api/agents/{agent}/runs",
    }  # fmt: skip
    (_, resource), *_ = [(s, r) for r, s in spans_in(run.sidecar.lines())]
    assert resource  # there were spans at all


def test_slow_request_is_logged_by_the_sidecar(run: Run) -> None:
    slow = run.sidecar.named("slow_request")  # the slow execution and the one timing out
    assert [(e["path"], e["method"]) for e in slow] == [("/api/execute", "POST")] * 2
    assert all(e["duration_ms"] > 1000 and e["user_id"] == "3" for e in slow)


def test_credentials_the_client_sent_appear_in_no_output(run: Run) -> None:
    sent = run.everything_sent()
    assert traffic.SECRET_TOKEN not in sent
    assert traffic.SESSION_COOKIE not in sent
    assert "sk-demo-0123456789abcdef" not in sent  # the app's own key to the AI service


def test_structlog_events_arrive_once_each_as_sentry_logs(run: Run) -> None:
    logs = run.sink.logs()
    completed = [log for log in logs if log["body"] == "code_execution_completed"]
    assert len(completed) == 4  # three executions and the slow one
    transactions = {t["contexts"]["trace"]["trace_id"] for t in run.named("/api/execute")}
    for log in completed:
        assert log["trace_id"] in transactions
        attributes = log["attributes"]
        assert attributes["lesson_id"]["type"] == "integer"
        assert attributes["success"] == {"value": True, "type": "boolean"}
        assert attributes["execution_time_ms"]["type"] == "double"
        assert attributes["logger.name"]["value"] == "helloagents.main"
    started = [log for log in logs if log["body"] == "service_started"]
    assert len(started) == 1 and "trace_id" not in started[0]
    access = [
        log["body"] for log in logs if log["attributes"]["logger.name"]["value"] == "uvicorn.access"
    ]
    assert len([body for body in access if '"GET /health/live' not in body]) == len(SCENARIO) + 1
