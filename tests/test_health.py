"""The health extension: the health JSON, the pod's probes, /metrics, the `health` CLI,
and the optional dependency checks."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from collector import cli
from tests.postgres import postgres_server
from tests.sentry_sink import SentrySink
from tests.sidecar import BASIC_CONFIG, ROOT, Sidecar
from tests.test_receivers import post, trace_request

SECRET_PASSWORD = "db-password-7f3a"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def database() -> Iterator[int]:
    """A real PostgreSQL server: the database check speaks its protocol."""
    with postgres_server() as url:
        port = urlsplit(url).port
        assert port is not None
        yield port


@pytest.fixture
def impostor() -> Iterator[int]:
    """A port that answers, but not as PostgreSQL does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer() -> None:
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:  # closed: the test is over
                    return
                with connection:
                    connection.recv(8)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        yield server.getsockname()[1]


def config(database_port: int, dead_port: int, dsn: str, impostor_port: int) -> str:
    return (
        BASIC_CONFIG.replace(
            "exporters:\n",
            f"""exporters:
  sentry: {{dsn: "{dsn}"}}
""",
        ).replace("exporters: [file]}\n    logs", "exporters: [sentry, file]}\n    logs")
        + f"""
extensions:
  health:
    endpoint: "127.0.0.1:0"
    checks:
      database:
        type: database
        url: "postgresql://app:{SECRET_PASSWORD}@127.0.0.1:{database_port}/app"
        interval: 1s
      impostor:
        type: database
        url: "postgresql+psycopg://app:{SECRET_PASSWORD}@127.0.0.1:{impostor_port}/app"
        interval: 1s
      sandbox_pool: {{type: tcp, address: "127.0.0.1:{dead_port}", interval: 1s}}
"""
    )


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_checked(sidecar: Sidecar) -> dict:
    """The report once every check has run at least once."""
    for _ in range(100):
        report = json.loads(get(f"http://{sidecar.endpoints['health']}/health")[1])
        if all(c["status"] != "unknown" for c in report["components"].values()):
            return report
        time.sleep(0.1)
    raise AssertionError("checks never ran")


def test_health_report_probes_and_metrics(tmp_path: Path, database: int, impostor: int) -> None:
    with (
        SentrySink() as sink,
        Sidecar(tmp_path, config(database, free_port(), sink.dsn, impostor)) as sidecar,
    ):
        base = f"http://{sidecar.endpoints['health']}"
        assert post(sidecar, "/v1/traces", trace_request().SerializeToString())[0] == 200
        report = wait_checked(sidecar)
        status, _ = get(f"{base}/health")
        live, _ = get(f"{base}/health/live")
        ready, _ = get(f"{base}/health/ready")
        metrics = get(f"{base}/metrics")[1].decode()
        cli = health_cli(f"{base}/health")
        assert sidecar.stop() == 0

    # The health JSON; a dead dependency makes it unhealthy with HTTP 503.
    assert set(report) == {"status", "timestamp", "version", "components"}
    assert report["status"] == "unhealthy" and status == 503
    components = report["components"]
    assert components["database"] == {
        "status": "healthy",
        "message": "Database connection successful",
    }
    assert components["impostor"] == {
        "status": "unhealthy",
        "message": "Database connection failed: not a PostgreSQL server",
    }
    assert components["sandbox_pool"]["status"] == "unhealthy"
    assert components["otlp_grpc"]["status"] == "healthy"
    assert components["otlp_http"]["message"].startswith("listening on 127.0.0.1:")
    assert components["sentry"]["status"] == "healthy"
    assert components["file"]["status"] == "healthy"
    # No secret anywhere: not the database password, not the DSN's key.
    body = json.dumps(report)
    assert SECRET_PASSWORD not in body and "0123456789abcdef" not in body
    # Probes: live and ready do not depend on the app's dependencies.
    assert (live, ready) == (200, 200)
    assert (
        'otelsidecar_receiver_accepted_items_total{receiver="otlp_http",signal="traces"} 2.0'
        in metrics
    )
    assert cli.returncode == 1 and json.loads(cli.stdout)["status"] == "unhealthy"


def test_healthy_when_everything_is(tmp_path: Path, database: int) -> None:
    with Sidecar(tmp_path, config(database, database, "", database)) as sidecar:
        report = wait_checked(sidecar)
        base = f"http://{sidecar.endpoints['health']}"
        cli = health_cli(f"{base}/health")
        # 200s that are not the health JSON: the status page, and the liveness probe.
        elsewhere = [health_cli(f"{base}{path}") for path in ("/", "/health/live")]
        assert sidecar.stop() == 0
    assert report["status"] == "healthy"
    assert report["components"]["sentry"]["status"] == "disabled"
    assert cli.returncode == 0
    for answer in elsewhere:
        assert answer.returncode == 1 and "not the health JSON" in answer.stderr


def test_health_cli_shows_why_when_the_pipelines_do_not_answer() -> None:
    """The health JSON the sidecar answers when its pipelines' loop does not (503, without
    components): printed, exit 1."""
    stalled = {"status": "unhealthy", "message": "the pipelines' event loop is not answering"}

    class Stalled(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(stalled).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalled) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        answer = health_cli(f"http://127.0.0.1:{server.server_address[1]}/health")
        server.shutdown()
    assert answer.returncode == 1 and json.loads(answer.stdout) == stalled


def health_cli(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", "health", "--url", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_health_cli_when_nothing_answers() -> None:
    result = health_cli(f"http://127.0.0.1:{free_port()}/health")
    assert result.returncode == 1
    assert "not answering" in result.stderr


def test_tcp_check_needs_an_address() -> None:
    from collector import config as config_module
    from collector.settings import ConfigError

    text = BASIC_CONFIG + "\nextensions:\n  health: {checks: {pool: {type: tcp}}}\n"
    with pytest.raises(
        ConfigError, match=r"extensions\.health\.checks\.pool\.address: a tcp check needs host:port"
    ):
        config_module.parse_yaml(text, {})


def test_health_cli_never_prints_url_credentials() -> None:
    result = health_cli(f"http://admin:s3cret-pw@127.0.0.1:{free_port()}/health")
    assert result.returncode == 1
    assert "s3cret-pw" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (None, "http://127.0.0.1:13133/health"),
        ("127.0.0.1:14133", "http://127.0.0.1:14133/health"),
        ("0.0.0.0:13133", "http://127.0.0.1:13133/health"),  # listening everywhere: loopback
    ],
)
def test_health_cli_asks_where_the_default_config_listens(
    endpoint: str | None, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if endpoint is None:
        monkeypatch.delenv("OTEL_SIDECAR_HEALTH_ENDPOINT", raising=False)
    else:
        monkeypatch.setenv("OTEL_SIDECAR_HEALTH_ENDPOINT", endpoint)
    assert cli._default_health_url() == url


def test_a_file_exporter_that_cannot_write_is_unhealthy_and_counts_failures(
    tmp_path: Path,
) -> None:
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    config = BASIC_CONFIG.replace("${OUT}", "/dev/full") + (
        'extensions: {health: {endpoint: "127.0.0.1:0"}}\n'
    )
    with Sidecar(tmp_path, config) as sidecar:
        assert post(sidecar, "/v1/traces", trace_request(spans=3).SerializeToString())[0] == 200
        deadline = time.monotonic() + 10
        while True:
            status, report = _health(sidecar)
            if report["components"]["file"]["status"] == "unhealthy" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        metrics = urllib.request.urlopen(f"http://{sidecar.endpoints['health']}/metrics").read()
    assert status == 503
    assert report["components"]["file"]["message"] == "cannot write to /dev/full (ENOSPC)"
    labels = 'component="file",reason="export_failed",signal="traces"'
    assert f"otelsidecar_dropped_items_total{{{labels}}} 3.0" in metrics.decode()


def _health(sidecar: Sidecar) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{sidecar.endpoints['health']}/health") as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
