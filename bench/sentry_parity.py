"""Sentry parity: what a sentry-sdk user sees in Sentry, and what the sidecar sends, field by field.

Usage: ``.venv/bin/python bench/sentry_parity.py``

The HelloAgents example serves the same requests twice, both times sending to one capturing
Sentry server (``tests/sentry_sink.py``: envelopes parsed by ``sentry_sdk.envelope``, every
event refereed by Relay's normaliser and default data scrubbing):

* ``sentry-sdk``: sentry-sdk 2.x in the process (``bench/sentry_app.py``: its FastAPI,
  SQLAlchemy and logging integrations, ``traces_sample_rate=1.0``, ``send_default_pii=False``,
  logs on);
* ``sidecar``: ``opentelemetry-instrument`` with otel-sidecar-instrumentation, and the sidecar.

It prints ``field | sentry-sdk | sidecar | verdict`` for the error event, two transactions, a
log item and the release-health sessions. A verdict is ``same``, ``better`` (the sidecar sends
what sentry-sdk does not, or filters what it sends in clear), ``missing`` (sentry-sdk's only) or
``differs``; :data:`ROWS` says which each row must be, and ``tests/test_sentry_parity.py``
asserts it.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import sentry_relay

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import services, traffic  # noqa: E402
from tests.sentry_sink import SentrySink, payload  # noqa: E402
from tests.sidecar import Sidecar  # noqa: E402

RELEASE, ENVIRONMENT = "helloagents@1.4.2", "parity"
API_KEY = "parity-api-key-93e1b7"  # sent in a query string; must reach Sentry filtered
SIDECAR_CONFIG = """
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
  sentry: {dsn: "DSN", transaction_wait: 300ms, sessions_interval: 1s}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [slow_spans, sampler, scrubber, batch]
      exporters: [sentry]
    logs: {receivers: [otlp], processors: [scrubber, batch], exporters: [sentry]}
"""
ERROR_CALL = traffic.Call(
    "error", "POST", "/api/execute", {"lesson_id": 3, "code": "total = 10\nprint(total / 0)"}
)
REQUESTS = [
    traffic.Call("lesson", "GET", f"/api/lessons/2?page=1&api_key={API_KEY}"),
    traffic.Call("execute", "POST", "/api/execute", {"lesson_id": 1, "code": "print(6 * 7)"}),
    ERROR_CALL,
    traffic.Call("slow", "POST", "/api/execute", {"lesson_id": 2, "code": "sleep(1.2)\nprint(1)"}),
]


@dataclass
class Captured:
    """What one side sent: accepted events, transactions, log items and session aggregates."""

    events: list[dict[str, Any]]
    transactions: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    referee_errors: list[Any] = field(default_factory=list)

    def error(self) -> dict[str, Any]:
        return next(e for e in self.events if _raised(e).get("type") == "ZeroDivisionError")

    def transaction(self, route: str) -> dict[str, Any]:
        return next(t for t in self.transactions if t["transaction"].endswith(route))

    def access_log(self) -> dict[str, Any]:
        return next(log for log in self.logs if "/api/lessons/2" in log["body"])


# --- running each side -----------------------------------------------------------------------


def run_sentry_sdk(workdir: Path, sink: SentrySink, ai_url: str) -> Captured:
    env = services.app_env(workdir / "sdk.db", ai_url, None, _sentry_env(sink.dsn))
    # From the example's directory, as the sidecar's run is: sentry-sdk's in-app frames are
    # those under its working directory.
    app, base_url = services.start_app(env, instrumented=False, app="sentry_app:app")
    with _capturing(sink) as captured:
        try:
            _send(base_url)
        finally:
            # SIGINT: uvicorn stops, then Python exits normally and sentry-sdk flushes at exit
            # (after SIGTERM, uvicorn re-raises the signal and the process dies unflushed).
            assert app.process is not None
            app.process.send_signal(signal.SIGINT)
            app.process.wait(30)
            app.stop()
        sink.wait_for(lambda: _has_transactions(sink, captured.start), timeout=30)
    return captured.result


def run_sidecar(workdir: Path, sink: SentrySink, ai_url: str) -> Captured:
    config = SIDECAR_CONFIG.replace("DSN", sink.dsn)
    with _capturing(sink) as captured, Sidecar(workdir, config) as sidecar:
        endpoint = f"http://{sidecar.endpoints['otlp_grpc']}"
        release = {"SENTRY_RELEASE": RELEASE, "SENTRY_ENVIRONMENT": ENVIRONMENT}
        env = services.app_env(workdir / "sidecar.db", ai_url, endpoint, release)
        app, base_url = services.start_app(env)
        try:
            _send(base_url)
        finally:
            app.stop()
        sink.wait_for(lambda: _has_transactions(sink, captured.start), timeout=30)
        sidecar.stop()  # its last sessions leave at shutdown
    return captured.result


def _sentry_env(dsn: str) -> dict[str, str]:
    return {
        "SENTRY_DSN": dsn,
        "SENTRY_TRACES_SAMPLE_RATE": "1.0",
        "SENTRY_RELEASE": RELEASE,
        "SENTRY_ENVIRONMENT": ENVIRONMENT,
        "SENTRY_ENABLE_LOGS": "true",
        "PYTHONPATH": str(ROOT / "bench"),
    }


def _send(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for call in REQUESTS:
            traffic.send(client, call, user_id=3)


def _has_transactions(sink: SentrySink, start: int) -> bool:
    received = sink.received[start:]
    return sum(1 for r in received for i in r.items("transaction")) >= len(REQUESTS)


class _capturing:
    """The sink's envelopes that arrive inside the ``with`` block, as :class:`Captured`."""

    def __init__(self, sink: SentrySink) -> None:
        self.sink = sink
        self.start = len(sink.received)
        self.result = Captured([], [], [], [])

    def __enter__(self) -> _capturing:
        self.start = len(self.sink.received)
        self._referee_start = len(self.sink.referee_errors)
        return self

    def __exit__(self, *exc: object) -> None:
        received = [r for r in self.sink.received[self.start :] if r.status == 200]
        items = [(item.type, _normalized(item.type, payload(item)))
                 for r in received for item in r.envelope.items]  # fmt: skip
        self.result = Captured(
            events=[p for kind, p in items if kind == "event"],
            transactions=[p for kind, p in items if kind == "transaction"],
            logs=[log for kind, p in items if kind == "log" for log in p["items"]],
            sessions=[p for kind, p in items if kind == "sessions"],
            referee_errors=self.sink.referee_errors[self._referee_start :],
        )


def _normalized(kind: str, item: Any) -> Any:
    """An event as Sentry stores it: through Relay's normaliser (header names, query pairs...)."""
    if kind in ("event", "transaction"):
        return sentry_relay.StoreNormalizer().normalize_event(item)
    return item


def capture_both() -> tuple[Captured, Captured]:
    with tempfile.TemporaryDirectory(prefix="sentry-parity-") as tmp, SentrySink() as sink:
        stub, ai_url = services.ai_stub()
        try:
            sdk = run_sentry_sdk(Path(tmp), sink, ai_url)
            sidecar = run_sidecar(Path(tmp), sink, ai_url)
        finally:
            stub.stop()
    return sdk, sidecar


# --- the rows ---------------------------------------------------------------------------------


def _raised(event: dict[str, Any]) -> dict[str, Any]:
    return event.get("exception", {}).get("values", [{}])[-1]


def _in_app(event: dict[str, Any]) -> list[dict[str, Any]]:
    frames = _raised(event).get("stacktrace", {}).get("frames", [])
    return [f for f in frames if f.get("in_app") and f.get("function") != "<listcomp>"]


def _innermost(event: dict[str, Any]) -> dict[str, Any]:
    frames = _in_app(event)
    return frames[-1] if frames else {}


def _path(*keys: str) -> Callable[[dict[str, Any]], Any]:
    def get(item: dict[str, Any]) -> Any:
        value: Any = item
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return get


def _span_ops(transaction: dict[str, Any]) -> list[str]:
    return sorted(f"{s.get('op')}: {s.get('description', '')[:40]}" for s in transaction["spans"])


def _header(name: str) -> Callable[[dict[str, Any]], Any]:
    """A request header's value; Relay stores headers as ``[[name, value], ...]``."""
    return lambda item: dict(item.get("request", {}).get("headers") or []).get(name)


def _without_addresses(value: Any) -> Any:
    """Reprs name objects by address, which differs from run to run."""
    return None if value is None else json.loads(re.sub(r"0x[0-9a-f]+", "0x…", json.dumps(value)))


def _tag(name: str) -> Callable[[dict[str, Any]], Any]:
    """A tag's value; Relay stores tags as ``[[key, value], ...]``."""
    return lambda item: dict(item.get("tags") or []).get(name)


def _attribute(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda log: log.get("attributes", {}).get(name, {}).get("value")


def _query_filtered(event: dict[str, Any]) -> Any:
    """Is the api_key query value kept out? (sentry-sdk leaves it to Sentry's server.)"""
    query = event.get("request", {}).get("query_string")
    return None if query is None else API_KEY not in str(query)


@dataclass(frozen=True)
class Row:
    item: str  # error, transaction, log, sessions
    field: str
    get: Callable[[dict[str, Any]], Any]
    expect: str  # the verdict the sidecar must reach, or "differs" (documented, not asserted)
    compare: Callable[[Any, Any], str] | None = None


def _better_if_true(sdk: Any, sidecar: Any) -> str:
    return (
        "better" if sidecar is True and sdk is not True else "same" if sdk == sidecar else "worse"
    )


def _better_if_absent(sdk: Any, sidecar: Any) -> str:
    """A credential: better never sent than filtered by Sentry on arrival."""
    return "same" if sdk == sidecar else "better" if sidecar is None else "worse"


def _both_present(sdk: Any, sidecar: Any) -> str:
    return "same" if bool(sdk) == bool(sidecar) else "missing" if sdk else "better"


_E, _L, _S = "error", "log", "sessions"
_T1, _T2, _T3 = "transaction GET lesson", "transaction POST execute", "slow transaction"
ROWS = [
    Row(_E, "level", _path("level"), "same"),
    Row(_E, "exception type", lambda e: _raised(e).get("type"), "same"),
    Row(_E, "exception value", lambda e: _raised(e).get("value"), "same"),
    Row(_E, "mechanism.handled", lambda e: _raised(e).get("mechanism", {}).get("handled"), "same"),
    Row(_E, "in-app frames (module.function)",
        lambda e: [f"{f.get('module')}.{f.get('function')}" for f in _in_app(e)], "same"),
    Row(_E, "innermost frame filename", lambda e: _innermost(e).get("filename"), "same"),
    Row(_E, "innermost context_line", lambda e: _innermost(e).get("context_line"), "same"),
    Row(_E, "innermost pre_context", lambda e: _innermost(e).get("pre_context"), "same"),
    Row(_E, "innermost post_context", lambda e: _innermost(e).get("post_context"), "same"),
    Row(_E, "innermost vars", lambda e: _without_addresses(_innermost(e).get("vars")), "same"),
    Row(_E, "fingerprint", _path("fingerprint"), "same"),
    Row(_E, "transaction", _path("transaction"), "same"),
    Row(_E, "request.method", _path("request", "method"), "same"),
    Row(_E, "request.url path", lambda e: urlsplit(str(_path("request", "url")(e))).path, "same"),
    # sentry-sdk sends every header (Sentry filters Authorization and Cookie on arrival); the
    # zero-code side captures a list of useful ones.
    Row(_E, "request header names", lambda e: [n for n, _ in _path("request", "headers")(e) or []],
        "differs"),
    Row(_E, "request.headers.User-Agent", _header("User-Agent"), "same"),
    Row(_E, "request.headers.Authorization", _header("Authorization"), "better", _better_if_absent),
    Row(_E, "user.id", lambda e: str(e.get("user", {}).get("id")), "same"),
    Row(_E, "tags.feature", _tag("feature"), "same"),
    Row(_E, "tags.lesson_id", _tag("lesson_id"), "same"),
    Row(_E, "environment", _path("environment"), "same"),
    Row(_E, "release", _path("release"), "same"),
    Row(_E, "server_name", lambda e: e.get("server_name") or _tag("server_name")(e), "same"),
    Row(_E, "contexts.runtime.name", _path("contexts", "runtime", "name"), "same"),
    Row(_E, "contexts.runtime.version", _path("contexts", "runtime", "version"), "same"),
    Row(_E, "contexts.os.name", _path("contexts", "os", "name"), "better"),
    Row(_E, "contexts.trace.op", _path("contexts", "trace", "op"), "same"),
    Row(_E, "breadcrumbs with data", lambda e: any(
        b.get("data") for b in e.get("breadcrumbs", {}).get("values", [])), "same", _both_present),
    Row(_T1, "transaction", _path("transaction"), "same"),
    Row(_T1, "transaction_info.source", _path("transaction_info", "source"), "same"),
    Row(_T1, "contexts.trace.op", _path("contexts", "trace", "op"), "same"),
    Row(_T1, "contexts.trace.status", _path("contexts", "trace", "status"), "same"),
    Row(_T1, "contexts.response.status_code", _path("contexts", "response", "status_code"), "same"),
    Row(_T1, "span ops and descriptions", _span_ops, "differs"),
    Row(_T1, "span count", lambda t: len(t["spans"]), "same"),
    Row(_T1, "request.query_string without the api_key", _query_filtered, "better",
        _better_if_true),
    Row(_T1, "user.id", lambda t: str(t.get("user", {}).get("id")), "same"),
    Row(_T1, "tags.lesson_id", _tag("lesson_id"), "same"),
    Row(_T1, "contexts.runtime.name", _path("contexts", "runtime", "name"), "same"),
    Row(_T1, "release", _path("release"), "same"),
    Row(_T2, "transaction", _path("transaction"), "same"),
    Row(_T2, "contexts.trace.status", _path("contexts", "trace", "status"), "same"),
    Row(_T2, "tags.feature", _tag("feature"), "same"),
    Row(_T3, "tags.slow (over 1000 ms)", _tag("slow"), "better"),
    Row(_L, "level", _path("level"), "same"),
    Row(_L, "has trace_id", lambda log: bool(log.get("trace_id")), "same"),
    Row(_L, "logger.name", _attribute("logger.name"), "same"),
    Row(_L, "thread.name", _attribute("thread.name"), "same", _both_present),
    Row(_L, "process.pid", _attribute("process.pid"), "same", _both_present),
    Row(_L, "server.address", _attribute("server.address"), "same", _both_present),
    Row(_L, "sentry.environment", _attribute("sentry.environment"), "same"),
    Row(_L, "sentry.release", _attribute("sentry.release"), "same"),
    Row(_S, "release", _path("attrs", "release"), "same"),
    Row(_S, "environment", _path("attrs", "environment"), "same"),
    # sentry-sdk counts its health probes as sessions too; the zero-code side makes no span
    # (so no session) for /health*.
    Row(_S, "exited", lambda s: sum(a.get("exited", 0) for a in s["aggregates"]), "differs"),
    Row(_S, "crashed", lambda s: sum(a.get("crashed", 0) for a in s["aggregates"]), "same"),
]  # fmt: skip


def _item(captured: Captured, item: str) -> dict[str, Any] | None:
    try:
        return {
            _E: captured.error,
            _T1: lambda: captured.transaction("/api/lessons/{lesson_id}"),
            _T2: lambda: next(
                t for t in captured.transactions if t["transaction"].endswith("/api/execute")
            ),
            _T3: lambda: max(
                (t for t in captured.transactions if t["transaction"].endswith("/api/execute")),
                key=lambda t: t["timestamp"] - t["start_timestamp"],
            ),
            _L: captured.access_log,
            _S: lambda: _merged_sessions(captured.sessions),
        }[item]()
    except StopIteration:
        return None


def _merged_sessions(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    if not sessions:
        raise StopIteration
    return {"attrs": sessions[0].get("attrs", {}),
            "aggregates": [a for s in sessions for a in s.get("aggregates", [])]}  # fmt: skip


def verdict(row: Row, sdk: Any, sidecar: Any) -> str:
    if row.compare is not None:
        return row.compare(sdk, sidecar)
    if sdk == sidecar:
        return "same"
    if sidecar is None:
        return "missing"
    if sdk is None:
        return "better"
    return "differs"


def table(
    sdk: Captured, sidecar: Captured, rows: list[Row] = ROWS
) -> list[tuple[Row, Any, Any, str]]:
    found = []
    for row in rows:
        a, b = _item(sdk, row.item), _item(sidecar, row.item)
        value_a = row.get(a) if a is not None else None
        value_b = row.get(b) if b is not None else None
        found.append((row, value_a, value_b, verdict(row, value_a, value_b)))
    return found


def render(rows: list[tuple[Row, Any, Any, str]]) -> str:
    lines = ["| item | field | sentry-sdk | sidecar | verdict |", "|---|---|---|---|---|"]
    for row, a, b, result in rows:
        lines.append(f"| {row.item} | {row.field} | {_cell(a)} | {_cell(b)} | {result} |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "—" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", "⏎")
    return text if len(text) <= 60 else text[:57] + "..."


def main() -> None:
    sdk, sidecar = capture_both()
    print(render(table(sdk, sidecar)))
    for name, side in (("sentry-sdk", sdk), ("sidecar", sidecar)):
        if side.referee_errors:
            print(f"\nRelay found fault with {name}'s events: {side.referee_errors}")


if __name__ == "__main__":
    main()
