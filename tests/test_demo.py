"""`make demo` works: the demo script runs the sidecar with traffic and checks what came out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.sidecar import ROOT

pytestmark = pytest.mark.slow


def test_demo_runs_and_reports() -> None:
    env = {**os.environ, "DEMO_SECONDS": "2"}
    result = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Authorization header in the output: removed" in result.stdout
    assert "sidecar exit code: 0" in result.stdout
