"""What observability costs the app: the HelloAgents DB endpoint under load, five ways, one run.

Usage: ``.venv/bin/python bench/app_overhead.py [--seconds N] [--connections C] [--rounds R]
[--variant NAME:VAR=VALUE,...]``

``GET /api/lessons/2`` (two SQLAlchemy queries on SQLite, a structlog line, a tag) is served by
one uvicorn process, driven by a load generator in its own process keeping C requests in flight
for N seconds after a warm-up:

* ``plain``: no instrumentation at all;
* ``sidecar``: ``opentelemetry-instrument`` with otel-sidecar-instrumentation, every span and
  log record shipped to the sidecar (sample rate 1.0), which sends them to a Sentry-compatible
  sink;
* ``sentry-0.1`` and ``sentry-1.0``: sentry-sdk in the process (``bench/sentry_app.py``) at
  ``traces_sample_rate`` 0.1 and 1.0, sending to the same sink;
* ``sidecar-0.1``: as ``sidecar``, the app still shipping everything, with the sidecar sampling
  at 0.1 (the rate the monitoring guide sets in production): the same transactions reach the
  sink as with ``sentry-0.1``.

``--variant`` adds a ``sidecar`` mode with more app environment, to weigh an option (say
``quiet-access:OTEL_SIDECAR_APP_UVICORN_LOG_LEVEL=warning``).

Reported per mode: requests/s, p50 and p99 latency, the app's, the sidecar's and the sink's CPU
milliseconds per request (``/proc/<pid>/stat``), and the ratios to ``plain``. The sink stands
for a Sentry that runs elsewhere; it answers in a few µs an envelope, so that little of the
machine goes to it. Rounds interleave the modes
(a b c d a b c d ...) and the median of each figure is kept: this 2-core machine is noisy, and
the load generator and the sidecar share it with the app.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from throughput import SPAWN, cpu_seconds  # noqa: E402

from examples import services  # noqa: E402
from examples.services import Process  # noqa: E402

PATH = "/api/lessons/2"
HEADERS = {"X-User-Id": "5", "User-Agent": "bench/1.0"}
# plain, then each sidecar mode against sentry-0.1: the ratios below
MODES = ("plain", "sidecar", "sentry-0.1", "sentry-1.0", "sidecar-0.1")
SIDECAR_CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
      http: {endpoint: "127.0.0.1:0"}
processors:
  memory_limiter: {limit_mib: 256}
  slow_spans: {}
  key_metrics: {}
  sampler: {rate: RATE}
  scrubber: {}
  batch: {}
exporters:
  sentry: {dsn: "DSN", sending_queue: {queue_size: 100000}}
  file: {path: "METRICS_FILE"}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, slow_spans, key_metrics, sampler, scrubber, batch]
      exporters: [sentry]
    logs: {receivers: [otlp], processors: [memory_limiter, scrubber, batch], exporters: [sentry]}
    metrics: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [file]}
"""


@dataclass
class Result:
    mode: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    app_cpu_ms: float  # per request
    sidecar_cpu_ms: float  # per request
    sink_cpu_ms: float  # per request: the stand-in Sentry's share of the same cores
    failed: int


# --- the load generator (its own process) ---------------------------------------------------


def _load_main(conn: Connection, url: str, seconds: float, warmup: float, calls: int) -> None:
    conn.send(asyncio.run(_drive(conn, url, seconds, warmup, calls)))


async def _drive(
    conn: Connection, url: str, seconds: float, warmup: float, calls: int
) -> tuple[list[float], int, float]:
    import aiohttp

    latencies: list[float] = []
    failed = [0]
    async with aiohttp.ClientSession(headers=HEADERS) as session:

        async def worker(until: float, record: bool) -> None:
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    async with session.get(url) as answer:
                        await answer.read()
                        ok = answer.status == 200
                except aiohttp.ClientError:
                    ok = False
                if record:
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        failed[0] += 1

        warm = time.monotonic() + warmup
        await asyncio.gather(*(worker(warm, False) for _ in range(calls)))
        conn.send("measuring")
        began = time.monotonic()
        await asyncio.gather(*(worker(began + seconds, True) for _ in range(calls)))
        return latencies, failed[0], time.monotonic() - began


# --- the sink (its own process) ---------------------------------------------------------------


def _sink_main(conn: Connection) -> None:
    asyncio.run(_serve_sink(conn))


_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)


class _Sink(asyncio.Protocol):
    """Takes envelopes and answers 200, as a Sentry with room to spare would, at a few µs of
    CPU each: it stands for a Sentry that runs elsewhere, so its work should not take the
    app's two cores (aiohttp's server spent ~10x more per envelope). Requests carry a
    Content-Length (sentry-sdk's and the sidecar's both do); anything else is answered 411."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer = transport, bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = _LENGTH.search(self.buffer, 0, end)
            if length is None:
                self.transport.write(b"HTTP/1.1 411 Length Required\r\nConnection: close\r\n"
                                     b"Content-Length: 0\r\n\r\n")  # fmt: skip
                self.transport.close()
                return
            request_end = end + 4 + int(length[1])
            if len(self.buffer) < request_end:
                return
            del self.buffer[:request_end]
            self.transport.write(_ANSWER)


async def _serve_sink(conn: Connection) -> None:
    server = await asyncio.get_running_loop().create_server(_Sink, "127.0.0.1", 0)
    conn.send(server.sockets[0].getsockname()[1])
    await asyncio.to_thread(conn.recv)  # "stop"
    server.close()


# --- one mode -----------------------------------------------------------------------------


def start_sidecar(workdir: Path, dsn: str, rate: str) -> tuple[Process, dict[str, str]]:
    config = workdir / "sidecar.yaml"
    config.write_text(SIDECAR_CONFIG.replace("DSN", dsn).replace("RATE", rate)
                      .replace("METRICS_FILE", str(workdir / "metrics.jsonl")))  # fmt: skip
    sidecar = Process([sys.executable, "-m", "collector", "run", "--config", str(config)],
                      dict(services.os.environ), ROOT).start()  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in sidecar.json_lines():
            if event.get("event") == "sidecar_started":
                return sidecar, event["endpoints"]
        time.sleep(0.05)
    sidecar.stop()
    raise RuntimeError("the sidecar did not start:\n" + "\n".join(sidecar.lines[-20:]))


def start_app(
    mode: str, workdir: Path, dsn: str, endpoints: dict[str, str] | None, extra: dict[str, str]
) -> tuple[Process, str]:
    otlp = None
    if endpoints is not None:
        http = extra.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").startswith("http")
        otlp = f"http://{endpoints['otlp_http' if http else 'otlp_grpc']}"
    env = services.app_env(workdir / f"{mode}.db", "http://127.0.0.1:9", otlp, extra)
    if mode.startswith("sentry"):
        env.update(SENTRY_DSN=dsn, SENTRY_TRACES_SAMPLE_RATE=mode.split("-")[1],
                   PYTHONPATH=str(services.EXAMPLES))  # fmt: skip
        return services.start_app(env, instrumented=False, app="sentry_app:app",
                                  app_dir=ROOT / "bench")  # fmt: skip
    return services.start_app(env, instrumented=otlp is not None)


def run_mode(
    mode: str, extra: dict[str, str], workdir: Path, dsn: str, sink_pid: int, args: Any
) -> Result:
    """``mode`` is plain, sentry-<rate>, or anything else: zero-code and the sidecar."""
    instrumented = mode != "plain" and not mode.startswith("sentry")
    rate = mode.removeprefix("sidecar-") if mode.startswith("sidecar-") else "1.0"
    sidecar, endpoints = start_sidecar(workdir, dsn, rate) if instrumented else (None, None)
    try:
        app, base_url = start_app(mode, workdir, dsn, endpoints, extra)
        try:
            return _measure(mode, app, sidecar, sink_pid, base_url + PATH, args)
        finally:
            app.stop()
    finally:
        if sidecar is not None:
            sidecar.stop()


def _measure(
    mode: str, app: Process, sidecar: Process | None, sink_pid: int, url: str, args: Any
) -> Result:
    processes = (app.process, sidecar.process if sidecar else None)
    pids = [sink_pid] + [p.pid for p in processes if p is not None]
    parent, child = SPAWN.Pipe()
    load = SPAWN.Process(target=_load_main, args=(child, url, args.seconds, 3.0, args.connections))
    load.start()
    try:
        assert parent.recv() == "measuring"
        before = [cpu_seconds(pid) for pid in pids]
        latencies, failed, elapsed = parent.recv()
        used = [cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
    finally:
        load.join(10)
    count = max(len(latencies), 1)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    per_request = [seconds / count * 1000 for seconds in used] + [0.0]  # sink, app, sidecar
    return Result(
        mode, len(latencies) / elapsed, cuts[49] * 1000, cuts[98] * 1000,
        per_request[1], per_request[2], per_request[0], failed,
    )  # fmt: skip


# --- the report ---------------------------------------------------------------------------


def median_results(rounds: list[list[Result]]) -> list[Result]:
    figures = ("requests_per_s", "p50_ms", "p99_ms", "app_cpu_ms", "sidecar_cpu_ms",
               "sink_cpu_ms", "failed")  # fmt: skip
    out = []
    for index, mode in enumerate(r.mode for r in rounds[0]):
        runs = [results[index] for results in rounds]
        out.append(Result(mode, *(statistics.median(getattr(r, f) for r in runs) for f in figures)))
    return out


def print_table(results: list[Result], args: Any) -> None:
    plain = results[0]
    print(f"\nGET {PATH}, {args.connections} in flight, {args.seconds:g} s per mode, "
          f"median of {args.rounds} round(s)\n")  # fmt: skip
    print("| mode | requests/s | vs plain | p50 ms | p99 ms | p99 vs plain | app CPU ms/req "
          "| sidecar CPU ms/req | sink CPU ms/req | failed |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rps_ratio = r.requests_per_s / plain.requests_per_s
        print(
            f"| `{r.mode}` | {r.requests_per_s:,.0f} | {rps_ratio:.2f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.p99_ms / plain.p99_ms:.2f} "
            f"| {r.app_cpu_ms:.2f} | {r.sidecar_cpu_ms:.2f} | {r.sink_cpu_ms:.2f} "
            f"| {r.failed:.0f} |"
        )
    print()
    for sidecar in (r for r in results if r.mode.startswith("sidecar")):
        ratio = sidecar.requests_per_s / results[2].requests_per_s
        verdict = "meets" if ratio >= 1 else "misses"
        print(f"{sidecar.mode} / sentry-0.1 requests/s: {ratio:.2f} ({verdict} the target: ≥ 1)")


def variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    return name, dict(pair.split("=", 1) for pair in settings.split(",") if pair)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE,...")
    args = parser.parse_args()
    modes = [(mode, {}) for mode in MODES] + [variant(text) for text in args.variant]
    parent, child = SPAWN.Pipe()
    sink = SPAWN.Process(target=_sink_main, args=(child,), daemon=True)
    sink.start()
    dsn = f"http://0123456789abcdef0123456789abcdef@127.0.0.1:{parent.recv()}/1"
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.rounds):
            results = []
            for mode, extra in modes:
                print(f"round {number + 1}: {mode} ...", flush=True)
                results.append(run_mode(mode, extra, Path(tmp), dsn, sink.pid, args))
            rounds.append(results)
    parent.send("stop")
    sink.join(10)
    print_table(median_results(rounds), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
