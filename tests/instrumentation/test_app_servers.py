"""Zero code under the ways teams run FastAPI: uvicorn's worker processes, its reloader, and
gunicorn with uvicorn workers. Every worker's telemetry arrives, none twice, and a worker that
stops gracefully (the end of the test, a reload) flushes what it had before it goes: the
exporters keep their default 5 s batching, so without that flush most would be lost."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples import services
from tests.sidecar import BASIC_CONFIG, Sidecar, attributes, logs_in, metric_names, spans_in

pytestmark = pytest.mark.slow

REQUESTS = 24


def send_requests(base_url: str, count: int) -> None:
    """``count`` lesson views from 6 threads, each on a new connection (spread over workers)."""

    def one(_: int) -> int:
        headers = {"X-User-Id": "5", "Connection": "close"}
        return httpx.get(f"{base_url}/api/lessons/2", headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(one, range(count))) == {200}


def lesson_views(sidecar: Sidecar) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(server spans, ``lesson_viewed`` log records) the sidecar received."""
    spans = [s for _, s in spans_in(sidecar.lines()) if s["name"] == "GET /api/lessons/{lesson_id}"]
    return spans, logged(sidecar, "lesson_viewed")


def logged(sidecar: Sidecar, event: str) -> list[dict[str, Any]]:
    return [r for _, r in logs_in(sidecar.lines()) if r["body"].get("stringValue") == event]


def pids(records: list[dict[str, Any]]) -> set[int]:
    return {attributes(record)["process.pid"] for record in records}


def run_server(
    tmp_path: Path,
    server: str,
    args: list[str],
    app_dir: Path,
    config: str = BASIC_CONFIG,
    extra: dict[str, str] | None = None,
) -> Sidecar:
    sidecar = Sidecar(tmp_path, config).start()
    stub, ai_url = services.ai_stub()
    try:
        endpoint = f"http://{sidecar.endpoints['otlp_grpc']}"
        env = services.app_env(tmp_path / "app.db", ai_url, endpoint, extra)
        app, base_url = services.start_app(env, server=server, args=args, app_dir=app_dir)
        try:
            send_requests(base_url, REQUESTS)
        except httpx.HTTPError as error:
            raise AssertionError("\n".join(app.lines[-60:])) from error
        finally:
            app.stop()
    finally:
        stub.stop()
        sidecar.stop()
    return sidecar


@pytest.mark.parametrize(
    ("server", "args"),
    [("uvicorn", ["--workers", "2"]), ("gunicorn", ["--workers", "2"])],
    ids=["uvicorn-workers", "gunicorn-uvicorn-workers"],
)
def test_every_worker_sends_once(tmp_path: Path, server: str, args: list[str]) -> None:
    sidecar = run_server(tmp_path, server, args, services.EXAMPLES)
    spans, logs = lesson_views(sidecar)
    assert len(spans) == REQUESTS  # none lost, none doubled
    assert len(logs) == REQUESTS
    # Which worker accepts a connection is the kernel's choice; each logs its own start-up.
    started = logged(sidecar, "service_started")
    assert len(started) == 2 and len(pids(started)) == 2, "both workers' telemetry arrives"


def test_reload_flushes_the_old_worker(tmp_path: Path) -> None:
    """Requests before and after a code change reach the sidecar, each once."""
    app_dir = tmp_path / "app"
    shutil.copytree(services.EXAMPLES / "helloagents", app_dir / "helloagents")
    sidecar = Sidecar(tmp_path, BASIC_CONFIG).start()
    stub, ai_url = services.ai_stub()
    try:
        endpoint = f"http://{sidecar.endpoints['otlp_grpc']}"
        env = services.app_env(tmp_path / "app.db", ai_url, endpoint)
        args = ["--reload", "--reload-dir", str(app_dir)]
        app, base_url = services.start_app(env, args=args, app_dir=app_dir)
        try:
            send_requests(base_url, REQUESTS // 2)
            started = len([line for line in app.lines if "Started server process" in line])
            with (app_dir / "helloagents" / "ai.py").open("a") as source:
                source.write("\n# changed\n")
            deadline = time.monotonic() + 30
            while len([ln for ln in app.lines if "Started server process" in ln]) == started:
                assert time.monotonic() < deadline, "\n".join(app.lines[-20:])
                time.sleep(0.1)
            services.wait_until_up(base_url, app)
            send_requests(base_url, REQUESTS // 2)
        finally:
            app.stop()
    finally:
        stub.stop()
        sidecar.stop()
    spans, logs = lesson_views(sidecar)
    assert len(spans) == REQUESTS
    assert len(logs) == REQUESTS
    assert len(pids(logs)) == 2, "the worker before the reload and the one after"
    assert len(logged(sidecar, "service_started")) == 2


def test_the_instrumentations_metrics_when_asked_for(tmp_path: Path) -> None:
    """Off by default (the sidecar's key_metrics has the same numbers from the spans); on, the
    app's request and connection-pool metrics reach the sidecar, flushed as the app stops."""
    config = BASIC_CONFIG.replace(
        "    logs: {receivers: [otlp], processors: [batch], exporters: [file]}",
        "    logs: {receivers: [otlp], processors: [batch], exporters: [file]}\n"
        "    metrics: {receivers: [otlp], processors: [batch], exporters: [file]}",
    )
    extra = {"OTEL_SIDECAR_APP_INSTRUMENTATION_METRICS": "true"}
    sidecar = run_server(tmp_path, "uvicorn", [], services.EXAMPLES, config, extra)
    names = metric_names(sidecar.lines())
    assert any(name.startswith("http.server.") for name in names), names
    assert any(name.startswith("db.client.connection") for name in names), names
