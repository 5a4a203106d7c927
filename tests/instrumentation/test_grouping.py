"""The same bug deployed under two paths is one issue: the example copied to two directories,
each run zero-code, the same failing request to each; the error events' grouping inputs (the
in-app frames' module, function and context line; no fingerprint) are identical."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples import services, traffic
from tests.sentry_sink import SentrySink
from tests.sidecar import Sidecar

pytestmark = pytest.mark.slow

CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
processors:
  batch: {timeout: 50ms}
exporters:
  sentry: {dsn: "DSN", transaction_wait: 100ms}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [sentry]}
"""
FAILING = next(call for _, call in traffic.CALLS if call.kind == "error")


def grouping_inputs(event: dict[str, Any]) -> list[tuple[str, str, str]]:
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    return [(f["module"], f["function"], f["context_line"]) for f in frames if f.get("in_app")]


def test_one_bug_under_two_install_paths_groups_as_one(tmp_path: Path) -> None:
    copies = [tmp_path / "srv" / "app", tmp_path / "opt" / "releases" / "v2"]
    for copy in copies:
        shutil.copytree(services.EXAMPLES / "helloagents", copy / "helloagents",
                        ignore=shutil.ignore_patterns("*.db", "__pycache__"))  # fmt: skip
    with SentrySink() as sink, Sidecar(tmp_path, CONFIG.replace("DSN", sink.dsn)) as sidecar:
        stub, ai_url = services.ai_stub()
        try:
            for number, copy in enumerate(copies):
                endpoint = f"http://{sidecar.endpoints['otlp_grpc']}"
                env = services.app_env(tmp_path / f"{number}.db", ai_url, endpoint)
                app, base_url = services.start_app(env, app_dir=copy)
                try:
                    with httpx.Client(base_url=base_url, timeout=30) as client:
                        assert traffic.send(client, FAILING, user_id=3) == 500
                finally:
                    app.stop()
        finally:
            stub.stop()
        sink.wait_for(lambda: len(sink.events()) >= 2)
    first, second = sink.events()
    assert grouping_inputs(first) == grouping_inputs(second)
    assert grouping_inputs(first)[-1][0] == "helloagents.sandbox"
    assert "fingerprint" not in first and "fingerprint" not in second
    # ...though the files really were in two places.
    innermost = [e["exception"]["values"][-1]["stacktrace"]["frames"][-1] for e in (first, second)]
    assert {str(Path(f["abs_path"]).parents[1]) for f in innermost} == {str(c) for c in copies}
