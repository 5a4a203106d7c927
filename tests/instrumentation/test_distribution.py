"""The zero-code side as users install it: ``pip install ./instrumentation`` into a fresh venv
of the oldest Python it supports (3.9, when this machine has it), without any of the sidecar's
server packages; then a FastAPI + structlog app on that Python, under
``opentelemetry-instrument`` with no other setting than the sidecar's address, reaches a sidecar."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.services import Process, free_port, wait_until_up
from tests.sidecar import BASIC_CONFIG, ROOT, Sidecar, attributes, logs_in, spans_in

pytestmark = pytest.mark.slow

SERVER_PACKAGES = {"aiohttp", "sentry-sdk", "prometheus-client", "pyyaml", "otel-sidecar"}
APP = """
from typing import Optional

import structlog
from fastapi import FastAPI

app = FastAPI()
log = structlog.get_logger()


def average(values: list, count: Optional[int] = None) -> float:
    return sum(values) / (count if count is not None else len(values))


@app.get("/average")
def endpoint() -> dict:
    log.info("averaging", size=0)
    return {"average": average([])}
"""


def oldest_python() -> str:
    """Python 3.9 if this machine has one (PATH or pyenv), else the interpreter running this."""
    home = os.path.expanduser("~")
    candidates = ["python3.9", *sorted(glob.glob(f"{home}/.pyenv/versions/3.9*/bin/python3.9"))]
    for candidate in candidates:
        try:
            found = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                   capture_output=True, text=True, timeout=30)  # fmt: skip
        except OSError:
            continue
        if found.returncode == 0 and found.stdout.strip() == "(3, 9)":
            return candidate
    return sys.executable


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("app-venv") / "venv"
    subprocess.run([oldest_python(), "-m", "venv", str(path)], check=True, timeout=120)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]  # fmt: skip
    subprocess.run([*pip, str(ROOT / "instrumentation")], check=True, timeout=600)
    return path


def installed(venv: Path) -> set[str]:
    listing = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return {package["name"].lower() for package in json.loads(listing.stdout)}


@contextlib.contextmanager
def serving(venv: Path, tmp_path: Path, sidecar: Sidecar, *args: str) -> Iterator[str]:
    """APP under ``opentelemetry-instrument uvicorn`` on the venv's Python, sending to
    ``sidecar``: its base URL, until uvicorn is stopped (gracefully) at the end."""
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "fastapi", "uvicorn", "structlog"], check=True, timeout=600)  # fmt: skip
    (tmp_path / "averages.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sidecar.endpoints['otlp_grpc']}"}
    argv = [str(venv / "bin" / "opentelemetry-instrument"), str(venv / "bin" / "uvicorn"),
            "averages:app", "--port", str(port), *args]  # fmt: skip
    with Process(argv, env, tmp_path) as app:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_up(base_url, app, path="/docs")
        yield base_url


def test_installs_without_the_sidecars_server_packages(venv: Path) -> None:
    packages = installed(venv)
    assert "otel-sidecar-instrumentation" in packages
    assert "opentelemetry-instrumentation-fastapi" in packages
    assert not SERVER_PACKAGES & packages


def test_an_app_on_that_python_reaches_the_sidecar(venv: Path, tmp_path: Path) -> None:
    with Sidecar(tmp_path, BASIC_CONFIG) as sidecar:
        with (
            serving(venv, tmp_path, sidecar) as base_url,
            pytest.raises(urllib.error.HTTPError, match="500"),
        ):
            urllib.request.urlopen(f"{base_url}/average", timeout=10)
        assert sidecar.stop() == 0
    ((resource, span),) = [
        (r, s) for r, s in spans_in(sidecar.lines()) if s["name"] == "GET /average"
    ]
    version = sys.version_info[:2] if oldest_python() == sys.executable else (3, 9)
    assert attributes(resource)["process.runtime.version"].startswith("{}.{}.".format(*version))
    assert attributes(resource)["service.name"] == "averages"
    assert span["name"] == "GET /average"
    (event,) = span["events"]  # sent by the flush when uvicorn stopped: 5 s batching otherwise
    chain = json.loads(attributes(event)["otel_sidecar.exception.chain"])
    assert [f["function"] for f in chain[0]["frames"] if f["in_app"]] == ["endpoint", "average"]
    bodies = [record["body"]["stringValue"] for _, record in logs_in(sidecar.lines())]
    assert bodies.count("averaging") == 1


def test_worker_processes_on_that_python_send_too(venv: Path, tmp_path: Path) -> None:
    """uvicorn's ``--workers`` are spawned: each sets up only if the auto-instrumentation's
    directory is still on PYTHONPATH, which opentelemetry-instrumentation 0.62 (the last for
    Python 3.9) took off for good. Each request's span arrives once."""
    requests = 6
    with Sidecar(tmp_path, BASIC_CONFIG) as sidecar:
        with serving(venv, tmp_path, sidecar, "--workers", "2") as base_url:
            for _ in range(requests):
                with pytest.raises(urllib.error.HTTPError, match="500"):
                    urllib.request.urlopen(f"{base_url}/average", timeout=10)
        assert sidecar.stop() == 0
    spans = [s for _, s in spans_in(sidecar.lines()) if s["name"] == "GET /average"]
    assert len(spans) == requests
