"""`make demo`: the HelloAgents backend, instrumented with zero code changes, and the sidecar.

Starts the sidecar (default pipelines: file output, and Sentry when ``SENTRY_DSN`` is set), the
AI service stub, and ``opentelemetry-instrument uvicorn helloagents.main:app``; sends the
backend realistic traffic for ``DEMO_SECONDS`` (30) with a live progress line; stops everything
gracefully and says what came out and where to look. ``--bugsink`` (`make demo-sentry`) also
starts a local Bugsink, a Sentry-compatible server, and sends the errors there to browse.

Everything goes to a new directory, ``sidecar-out/demo-<time>/`` (``--output`` picks another
parent); nothing else is written or removed. Ports 4317, 4318, 13133 (sidecar) and 8000
(backend) are used when free, else free ones are picked (and said).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from examples import services, traffic
from examples.services import Process

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORTS = {"otlp_grpc": 4317, "otlp_http": 4318, "health": 13133, "app": 8000}
SECRETS = (traffic.SECRET_TOKEN, traffic.SESSION_COOKIE)


@dataclass
class Run:
    directory: Path
    ports: dict[str, int]
    sidecar: Process
    app: Process | None = None

    @property
    def output(self) -> Path:
        return self.directory / "telemetry.jsonl"

    def health_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['health']}{path}"

    def sidecar_events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.sidecar.json_lines() if e.get("event") == name]


def pick_ports() -> dict[str, int]:
    ports = {}
    for name, port in DEFAULT_PORTS.items():
        if services.port_free(port):
            ports[name] = port
        else:
            ports[name] = services.free_port()
            print(
                f"Port {port} ({name}) is in use, perhaps by another sidecar: using {ports[name]}."
            )
    return ports


def start_sidecar(directory: Path, ports: dict[str, int], dsn: str) -> Process:
    env = {
        **os.environ,
        "OTEL_SIDECAR_GRPC_ENDPOINT": f"127.0.0.1:{ports['otlp_grpc']}",
        "OTEL_SIDECAR_HTTP_ENDPOINT": f"127.0.0.1:{ports['otlp_http']}",
        "OTEL_SIDECAR_HEALTH_ENDPOINT": f"127.0.0.1:{ports['health']}",
        "OTEL_SIDECAR_FILE_PATH": str(directory / "telemetry.jsonl"),
        "SENTRY_DSN": dsn,
        "SENTRY_ENVIRONMENT": os.environ.get("SENTRY_ENVIRONMENT", "demo"),
    }
    sidecar = Process([sys.executable, "-m", "collector", "run"], env, ROOT).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sidecar.running():
        if any(e.get("event") == "sidecar_started" for e in sidecar.json_lines()):
            return sidecar
        time.sleep(0.05)
    sidecar.stop()
    raise SystemExit("The sidecar did not start:\n" + "\n".join(sidecar.lines[-20:]))


def sidecar_counts(run: Run) -> dict[str, float]:
    """Spans and log records received, spans kept: from the sidecar's /metrics."""
    counts = {"spans": 0.0, "logs": 0.0, "kept": 0.0}
    try:
        with urllib.request.urlopen(run.health_url("/metrics"), timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return counts
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "otelsidecar_receiver_accepted_items_total":
                key = "spans" if sample.labels.get("signal") == "traces" else "logs"
                counts[key] += sample.value
            elif sample.name == "otelsidecar_sampler_kept_spans_total":
                counts["kept"] += sample.value
    return counts


class Progress:
    """One line, rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, run: Run, seconds: float) -> None:
        self.run, self.seconds = run, seconds
        self.started = self.last = time.monotonic()
        self.tty = sys.stdout.isatty()
        self.lock = threading.Lock()  # the traffic's threads all report here

    def __call__(self, tally: traffic.Tally) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last < (1 if self.tty else 5):
                return
            self.last = now
            counts = sidecar_counts(self.run)
            line = (
                f"  {min(now - self.started, self.seconds):4.0f}/{self.seconds:.0f} s  "
                f"requests {tally.requests:5d}  failed {tally.errors:3d}  "
                f"slow so far {len(self.run.sidecar_events('slow_request')):3d}"
                f"  | sidecar: spans received {counts['spans']:6.0f}, kept {counts['kept']:6.0f}, "
                f"log records {counts['logs']:6.0f}"
            )
            print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", flush=True)


def read_output(path: Path) -> dict[str, int]:
    """What the file exporter wrote: spans, log records, recorded exceptions with frames."""
    found = {"spans": 0, "logs": 0, "exceptions": 0, "with_frames": 0}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        request = json.loads(line)
        for resource_spans in request.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    found["spans"] += 1
                    for event in span.get("events", []):
                        if event["name"] == "exception":
                            found["exceptions"] += 1
                            keys = {a["key"] for a in event.get("attributes", [])}
                            found["with_frames"] += "otel_sidecar.exception.chain" in keys
        for resource_logs in request.get("resourceLogs", []):
            for scope_logs in resource_logs.get("scopeLogs", []):
                found["logs"] += len(scope_logs.get("logRecords", []))
    return found


def summary(run: Run, tally: traffic.Tally, sidecar_code: int, sentry: str) -> bool:
    found = read_output(run.output)
    leaked = any(secret in path.read_text() for path in run.directory.glob("*.*")
                 for secret in SECRETS if path.suffix in (".jsonl", ".log"))  # fmt: skip
    slow = run.sidecar_events("slow_request")
    statuses = ", ".join(f"{n} answered {status}" for status, n in sorted(tally.statuses.items()))
    relative = os.path.relpath(run.directory)
    print()
    print(f"The backend had {tally.requests} requests: {statuses}.")
    print(
        f"The sidecar received {found['spans']} spans and {found['logs']} log records; "
        f"{found['exceptions']} recorded exceptions (failed requests' and handled ones) came "
        f"with their frames and variables ({found['with_frames']} of {found['exceptions']}); "
        f"it logged {len(slow)} slow requests, the last ones after the traffic stopped."
    )
    print(
        "The clients' Authorization and Cookie values reached "
        + ("AN OUTPUT: this is a bug." if leaked else "no output: the sidecar removed them.")
    )
    print(f"The sidecar stopped with exit code {sidecar_code}.")
    print()
    print("Where to look:")
    print(f"  {relative}/telemetry.jsonl   every span and log record, as OTLP/JSON")
    print(f"  {relative}/sidecar.log       the sidecar's own log (slow_request lines)")
    print(f"  {relative}/app.log           what the backend printed (it knows nothing of this)")
    print(f"  Sentry: {sentry}")
    return sidecar_code == 0 and found["spans"] > 0 and found["logs"] > 0 and not leaked


def run_demo(seconds: float, run: Run, sentry: str) -> bool:
    stub, ai_url = services.ai_stub()
    try:
        env = services.app_env(
            run.directory / "helloagents.db",
            ai_url,
            f"http://127.0.0.1:{run.ports['otlp_grpc']}",
            {"OTEL_SERVICE_NAME": "helloagents-backend", "SENTRY_RELEASE": "helloagents@1.0.0"},
        )
        print("Starting: opentelemetry-instrument uvicorn helloagents.main:app")
        run.app, base_url = services.start_app(env, port=run.ports["app"])
        print(f"Backend on {base_url}; sending traffic for {seconds:g} s ...")
        try:
            tally = traffic.play(base_url, seconds, on_answer=Progress(run, seconds))
        finally:
            run.app.stop()
    finally:
        stub.stop()
    code = run.sidecar.stop()
    (run.directory / "sidecar.log").write_text("\n".join(run.sidecar.lines) + "\n")
    (run.directory / "app.log").write_text("\n".join(run.app.lines) + "\n")
    return summary(run, tally, code, sentry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("DEMO_SECONDS", 30)))
    parser.add_argument("--bugsink", action="store_true", help="send errors to a local Bugsink")
    parser.add_argument("--output", type=Path, default=ROOT / "sidecar-out",
                        help="where the run's own new directory is made")  # fmt: skip
    args = parser.parse_args()
    directory = args.output.resolve() / f"demo-{datetime.now():%Y%m%d-%H%M%S-%f}"
    directory.mkdir(parents=True)
    ports = pick_ports()
    bugsink = None
    if args.bugsink:
        from examples.bugsink import ADMIN_EMAIL, ADMIN_PASSWORD, Bugsink

        print("Starting a local Bugsink (a Sentry-compatible server) ...")
        bugsink = Bugsink(directory / "bugsink").start()
        dsn = bugsink.dsn
        sentry = f"{bugsink.base_url} (log in as {ADMIN_EMAIL} / {ADMIN_PASSWORD})"
    else:
        dsn = os.environ.get("SENTRY_DSN", "")
        sentry = (
            "sent to the project of SENTRY_DSN"
            if dsn
            else "off: set SENTRY_DSN, or run `make demo-sentry` for a local Bugsink"
        )
    try:
        print(f"Starting the sidecar (output in {directory}) ...")
        run = Run(directory, ports, start_sidecar(directory, ports, dsn))
        ok = run_demo(args.seconds, run, sentry)
        if bugsink is not None:
            issues = bugsink.wait_for_issues(1, timeout=60)
            print(f"  Bugsink has {len(issues)} issues: " + "; ".join(i["title"] for i in issues))
            if sys.stdin.isatty():
                input("Bugsink stays up while you look. Press Enter to stop it. ")
    finally:
        if bugsink is not None:
            bugsink.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
