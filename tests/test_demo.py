"""`make demo` works: the real backend under ``opentelemetry-instrument``, the sidecar and traffic,
in a directory of its own, on free ports when the usual ones are taken."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sidecar import ROOT

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def holding_port(port: int) -> Iterator[None]:
    """Keep ``port`` taken (if nothing else has it already), as a running sidecar would."""
    with socket.socket() as taken:
        with contextlib.suppress(OSError):
            taken.bind(("127.0.0.1", port))
            taken.listen()
        yield


def run_demo(output: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEMO_SECONDS": "3"}
    env.pop("SENTRY_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_demo_runs_the_real_app_and_reports(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("the user's")
    with holding_port(4317):
        first = run_demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "Port 4317 (otlp_grpc) is in use" in out
    assert "opentelemetry-instrument uvicorn helloagents.main:app" in out
    assert "Authorization and Cookie values reached no output" in out
    assert "The sidecar stopped with exit code 0." in out
    assert "came with their frames and variables" in out
    (run,) = [p for p in tmp_path.iterdir() if p.name.startswith("demo-")]
    assert {p.name for p in run.iterdir()} >= {"telemetry.jsonl", "sidecar.log", "app.log"}
    second = run_demo(tmp_path)
    assert second.returncode == 0
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("demo-")]) == 2
    assert (run / "telemetry.jsonl").stat().st_size > 0  # the first run's output is untouched
    assert keep.read_text() == "the user's"
