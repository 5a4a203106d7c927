"""The performance targets, each measured on this machine in one run, in one table.

Usage: ``.venv/bin/python bench/targets.py [--seconds N] [--json]``

Each row runs ``bench/throughput.py`` in its own process (``--json``), with the bare grpc.aio
ceiling measured in the same run, or starts the sidecar itself:

1. **Default path to Sentry, saturated**: memory_limiter, slow_spans, sampler 0.1, scrubber,
   batch, the ``sentry`` exporter to a Sentry-compatible sink; requests of 64 traces of 8
   spans. Accepted spans per sidecar CPU-second until every kept trace's transaction was
   delivered, and the share of the ceiling's.
2. **Sentry delivery**: the same at sample rate 1.0; transactions (8 spans each) delivered
   per sidecar CPU-second.
3. **Forwarding everything**: rate 1.0, scrubber on, ``otlp_http`` out.
4. **Memory**: peak RSS forwarding a steady 10,000 spans/s.
5. **Latency** at a steady 10,000 spans/s: from a request's sending to its last span's
   arrival at the OTLP sink, and to each error event's arrival at the Sentry sink (the
   sidecar receives on the same machine, so sending is receipt).
6. **Start**: process start to ``/health/ready`` answering 200 (median of three).
8. **Against the Collector**: forwarding at rate 0.1 (scrubber / redaction, batch, OTLP/HTTP
   out), spans per CPU-second against the OpenTelemetry Collector's on the same payloads
   (``bench/otelcol/build.sh`` builds it; the row says so when it is missing).

Not measured here: the scaling curves (7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--json"]
PEER = ROOT / "bench" / "otelcol" / "bin" / "otelcol-peer"
START_CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}}}
processors:
  memory_limiter: {limit_mib: 256}
  slow_spans: {}
  sampler: {rate: 0.1}
  scrubber: {}
  batch: {}
exporters:
  sentry: {dsn: "http://0123456789abcdef0123456789abcdef@127.0.0.1:9/1"}
extensions:
  health: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter, slow_spans, sampler, scrubber,
             batch], exporters: [sentry]}
"""


@dataclass
class Row:
    target: str
    goal: str
    measured: str
    vs_ceiling: str = "-"
    vs_collector: str = "-"
    met: bool | None = None  # None: not measured


def throughput(seconds: float, *options: str) -> dict[str, Any]:
    command = [*THROUGHPUT, "--seconds", str(seconds), *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        raise RuntimeError(f"{' '.join(options)} failed:\n{done.stderr[-2000:]}") from None


def ceiling_share(data: dict[str, Any], spans_per_cpu_s: float) -> float:
    return spans_per_cpu_s / data["ceiling"]["spans_per_cpu_s"]


def sentry_saturated(seconds: float) -> Row:
    data = throughput(seconds, "--pipeline", "sentry", "--traces", "64")
    sentry = data["sentry"]
    rate = sentry["spans_per_cpu_s_until_delivered"]
    share = ceiling_share(data, rate)
    refused = sum(data["sidecar"]["errors"].values())
    whole = sentry["transactions"] >= sentry["kept_traces"]
    return Row(
        "1 default path to Sentry, saturated",
        "≥ 160,000 spans/CPU-s and ≥ 0.35 of the ceiling, every kept trace delivered",
        f"{rate:,.0f} spans/CPU-s; {sentry['transactions']:,} of {sentry['kept_traces']:,} "
        f"kept traces delivered; {refused} requests refused (UNAVAILABLE)",
        f"{share:.2f}",
        met=rate >= 160_000 and share >= 0.35 and whole,
    )


def sentry_delivery(seconds: float) -> Row:
    data = throughput(seconds, "--pipeline", "sentry", "--traces", "64", "--rate", "1.0")
    per_cpu = data["sentry"]["transactions_per_cpu_s"]
    return Row(
        "2 Sentry delivery (rate 1.0, 8 spans a transaction)",
        "≥ 2,000 transactions/CPU-s",
        f"{per_cpu:,.0f} transactions/CPU-s",
        met=per_cpu >= 2_000,
    )


def forward_everything(seconds: float) -> Row:
    data = throughput(seconds, "--pipeline", "forward", "--rate", "1.0")
    rate = data["sidecar"]["spans_per_cpu_s"]
    return Row(
        "3 forwarding everything (rate 1.0, scrubber) to otlp_http",
        "≥ 160,000 spans/CPU-s",
        f"{rate:,.0f} spans/CPU-s",
        f"{ceiling_share(data, rate):.2f}",
        met=rate >= 160_000,
    )


def steady(seconds: float) -> list[Row]:
    data = throughput(seconds, "--pipeline", "forward", "--spans-per-second", "10000")
    side = data["sidecar"]
    peak = side["peak_rss_mib"]
    p50, p99, most = side["delivery_ms"] or (0.0, 0.0, 0.0)
    return [
        Row(
            "4 memory at a steady 10,000 spans/s (forward)",
            "RSS ≤ 70 MiB",
            f"peak {peak:.0f} MiB at {side['spans_per_s']:,.0f} spans/s",
            met=peak <= 70,
        ),
        Row(
            "5 latency at 10,000 spans/s: sent to delivered at the OTLP sink",
            "p99 ≤ 1 s",
            f"p50 {p50:,.0f} / p99 {p99:,.0f} / max {most:,.0f} ms (a request's last span)",
            met=bool(side["delivery_ms"]) and p99 <= 1000,
        ),
    ]


def error_latency(seconds: float) -> Row:
    data = throughput(seconds, "--pipeline", "sentry", "--spans-per-second", "10000")
    waits = data["sidecar"]["error_event_ms"]
    p50, p99, most = waits or (0.0, 0.0, 0.0)
    return Row(
        "5 latency at 10,000 spans/s: sent to an error event at Sentry",
        "≤ 3 s",
        f"p50 {p50:,.0f} / p99 {p99:,.0f} / max {most:,.0f} ms "
        f"({data['sentry']['error_events']:,} events)",
        met=bool(waits) and most <= 3000,
    )


def start_to_ready() -> Row:
    """With the sidecar's bytecode compiled, as its image ships it: one start first lets Python
    write it (``PYTHONDONTWRITEBYTECODE``, when the environment sets it, would make every start
    compile each of its modules from source: 1.1-1.3 s here)."""
    _start_once(dict(os.environ, PYTHONDONTWRITEBYTECODE=""))
    times = [_start_once() for _ in range(3)]
    median = statistics.median(times)
    return Row(
        "6 start: process start to /health/ready 200",
        "≤ 1.0 s",
        f"{median:.2f} s (median of {', '.join(f'{t:.2f}' for t in times)})",
        met=median <= 1.0,
    )


def _start_once(env: dict[str, str] | None = None) -> float:
    with tempfile.TemporaryDirectory(prefix="otel-bench-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(START_CONFIG)
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "--config", str(config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            health = None
            for line in process.stdout:
                if '"sidecar_started"' in line:
                    health = json.loads(line)["endpoints"]["health"]
                    break
            if health is None:
                raise RuntimeError("the sidecar did not start")
            while True:
                try:
                    with urllib.request.urlopen(f"http://{health}/health/ready", timeout=1):
                        return time.monotonic() - started
                except (urllib.error.URLError, OSError):
                    if time.monotonic() - started > 30:
                        raise RuntimeError("/health/ready never answered 200") from None
                    time.sleep(0.01)
        finally:
            process.terminate()
            process.wait(30)


def against_collector(seconds: float) -> Row:
    target = "8 forwarding at rate 0.1 against the Collector"
    if not PEER.exists():
        return Row(target, "≥ 1.0x", "not run: bash bench/otelcol/build.sh builds the peer")
    data = throughput(seconds, "--pipeline", "forward", "--peer")
    ratio = data["ratios"]["spans_per_cpu_s_vs_collector"]
    side, peer = data["sidecar"], data["collector"]
    return Row(
        target,
        "≥ 1.0x the Collector's spans/CPU-s",
        f"{side['spans_per_cpu_s']:,.0f} against {peer['spans_per_cpu_s']:,.0f} spans/CPU-s; "
        f"peak RSS {side['peak_rss_mib']:.0f} against {peer['peak_rss_mib']:.0f} MiB",
        f"{ceiling_share(data, side['spans_per_cpu_s']):.2f}",
        f"{ratio:.2f}",
        met=ratio >= 1.0,
    )


def print_table(rows: list[Row]) -> None:
    print("| target | goal | measured | vs ceiling | vs Collector | |")
    print("|---|---|---|---:|---:|---|")
    for row in rows:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[row.met]
        print(f"| {row.target} | {row.goal} | {row.measured} | {row.vs_ceiling} "
              f"| {row.vs_collector} | {verdict} |")  # fmt: skip
    print("\n7 (the scaling curves): bench/curves.py, drawn in bench/curves.png.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per phase (8)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = []
    for measure in (sentry_saturated, sentry_delivery, forward_everything, error_latency):
        print(f"measuring {measure.__name__} ...", file=sys.stderr, flush=True)
        rows.append(measure(args.seconds))
    rows[3:3] = steady(args.seconds)
    rows.append(start_to_ready())
    rows.append(against_collector(args.seconds))
    if args.json:
        print(json.dumps([row.__dict__ for row in rows]))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
