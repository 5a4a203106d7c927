"""Runs the sidecar as users do, through its CLI in a subprocess, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Sidecar:
    """``otel-sidecar run --config <file>`` with the config's ``${OUT}`` set to a temp file.

    Its stdout JSON lines are collected in ``events``; ``endpoints`` comes from the start line.
    """

    def __init__(self, tmp_path: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.output = tmp_path / "out" / "telemetry.jsonl"
        self.config_path = tmp_path / "config.yaml"
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config.replace("${OUT}", str(self.output)))
        self.env = {**os.environ, **(env or {})}
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self.endpoints: dict[str, str] = {}
        self._started = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> Sidecar:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "--config", str(self.config_path)],
            cwd=ROOT,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._started.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sidecar did not start: {self.stderr}\n{self.events}")
        return self

    def url(self, path: str) -> str:
        return f"http://{self.endpoints['otlp_http']}{path}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        time.sleep(0.05)  # let the reader threads take the last lines
        return code

    def lines(self) -> list[dict[str, Any]]:
        """The file exporter's output, one parsed OTLP/JSON request per line."""
        if not self.output.exists():
            return []
        return [json.loads(line) for line in self.output.read_text().splitlines()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "<not json>", "line": line}
            self.events.append(event)
            if event.get("event") == "sidecar_started":
                self.endpoints = event["endpoints"]
                self._started.set()

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr += line

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()


def spans_in(lines: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(resource, span) pairs from file-exporter lines."""
    return [
        (rs.get("resource", {}), span)
        for line in lines
        for rs in line.get("resourceSpans", [])
        for ss in rs.get("scopeSpans", [])
        for span in ss.get("spans", [])
    ]


def logs_in(lines: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (rl.get("resource", {}), record)
        for line in lines
        for rl in line.get("resourceLogs", [])
        for sl in rl.get("scopeLogs", [])
        for record in sl.get("logRecords", [])
    ]


def metric_names(lines: list[dict[str, Any]]) -> set[str]:
    return {
        metric["name"]
        for line in lines
        for rm in line.get("resourceMetrics", [])
        for sm in rm.get("scopeMetrics", [])
        for metric in sm.get("metrics", [])
    }


def attributes(item: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON attributes as {key: plain value}."""
    out = {}
    for kv in item.get("attributes", []):
        ((kind, value),) = kv["value"].items()
        out[kv["key"]] = int(value) if kind == "intValue" else value
    return out


BASIC_CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0", max_recv_msg_size_mib: 1}
      http: {endpoint: "127.0.0.1:0", max_request_body_size_mib: 1}
processors:
  batch: {timeout: 50ms, send_batch_size: 512}
exporters:
  file: {path: "${OUT}"}
service:
  grace_period: 10s
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [file]}
    logs: {receivers: [otlp], processors: [batch], exporters: [file]}
"""
