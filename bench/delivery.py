"""Delivery under faults: what a client was told was accepted, against what reached the backend.

A client posts OTLP/HTTP requests of new spans at a steady rate to the sidecar (a real process),
which forwards with ``otlp_http`` to a real OTLP/HTTP backend parsing the official protobufs.
Every span id the client got a 200 for is compared with the span ids the backend received:
lost (accepted, never delivered), duplicated (delivered more than once), and the drops the
sidecar counted on ``/metrics``. Scenarios:

``outage-storage`` / ``outage-memory``
    The backend is down (nothing listens) for ``--down`` seconds, then up; with the sending
    queue on disk (``file_storage``) or in memory.
``sigkill``
    The queue on disk, the backend slow (0.2 s an answer); the sidecar is SIGKILLed under load
    and started again on the same store; the client goes on against the new process.
``slow-backend``
    Two backends in one pipeline, one taking 10 s to answer (``when_full: drop`` on it): the
    other's share of what was accepted, queue and memory bounded.

Usage: ``.venv/bin/python bench/delivery.py [--only NAME] [--down 60] [--rate 2000]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from attacks import RssPoller, dropped_items  # noqa: E402

from collector.signals import Signal  # noqa: E402
from examples.services import free_port  # noqa: E402
from tests.otlp_sink import OtlpSink  # noqa: E402
from tests.sidecar import Sidecar  # noqa: E402
from tests.test_receivers import post, trace_request  # noqa: E402

SPANS_PER_REQUEST = 50
MIB = 1 << 20
CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  memory_limiter: {limit_mib: 128}
  batch: {timeout: 100ms}
exporters:
EXPORTERS
extensions:
  health: {endpoint: "127.0.0.1:0"}
STORAGE
service:
  grace_period: 5s
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [NAMES]}
"""
RETRY = "retry_on_failure: {initial_interval: 200ms, max_interval: 2s, max_elapsed_time: 600s}"


def config(store: Path | None, **exporters: str) -> str:
    """``exporters``: name -> endpoint, with ``/drop`` after it for ``when_full: drop``."""
    lines = []
    for name, endpoint in exporters.items():
        url, _, drop = endpoint.partition(" ")
        queue = {"queue_size: 200"}
        if store is not None:
            queue.add("storage: file_storage")
        if drop:
            queue.add("when_full: drop")
        queue_text = ", ".join(sorted(queue))
        lines.append(f'  {name}: {{endpoint: "{url}", sending_queue: {{{queue_text}}}, {RETRY}}}')
    storage = f'  file_storage: {{directory: "{store}"}}' if store else ""
    return (CONFIG.replace("EXPORTERS", "\n".join(lines)).replace("STORAGE", storage)
            .replace("NAMES", ", ".join(exporters)))  # fmt: skip


class Client:
    """Posts requests of new spans at ``rate`` spans/s from a thread; keeps what was accepted."""

    def __init__(self, sidecar: Sidecar, rate: float) -> None:
        self.sidecar = sidecar
        self.interval = SPANS_PER_REQUEST / rate
        self.accepted: set[bytes] = set()
        self.answers: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            request = trace_request(spans=SPANS_PER_REQUEST)
            try:
                status = post(self.sidecar, "/v1/traces", request.SerializeToString())[0]
            except OSError:  # the process was killed under it
                status = 0
            self.answers[f"HTTP {status}" if status else "no answer"] += 1
            if status == 200:
                self.accepted.update(s.span_id for s in request.resource_spans[0]
                                     .scope_spans[0].spans)  # fmt: skip
            due += self.interval
            self._stop.wait(max(0.0, due - time.monotonic()))


@dataclass
class Result:
    name: str
    accepted: int
    delivered: int
    duplicated: int
    lost: int
    counted_drops: float
    answers: Counter[str]
    peak_mib: float
    notes: str = ""

    def row(self) -> str:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items()))
        return (f"| `{self.name}` | {self.accepted:,} | {self.delivered:,} | {self.duplicated:,} "
                f"| {self.lost:,} | {self.counted_drops:,.0f} | {answers} | {self.peak_mib:.0f} "
                f"| {self.notes} |")  # fmt: skip


def delivered_ids(sink: OtlpSink) -> list[bytes]:
    return [s.span_id for b in sink.accepted(Signal.TRACES) for rs in b.resource_spans
            for ss in rs.scope_spans for s in ss.spans]  # fmt: skip


def wait_drained(sink: OtlpSink, accepted: set[bytes], limit_s: float = 120) -> None:
    """Until every accepted span arrived, or nothing new arrived for 10 s, or ``limit_s``."""
    started = last_change = time.monotonic()
    seen = -1
    while time.monotonic() - started < limit_s:
        ids = set(delivered_ids(sink))
        if accepted <= ids:
            return
        if len(ids) != seen:
            seen, last_change = len(ids), time.monotonic()
        elif time.monotonic() - last_change > 10:
            return
        time.sleep(0.2)


def result(name: str, client: Client, sink: OtlpSink, drops: float, peak: int, notes: str = ""
           ) -> Result:  # fmt: skip
    ids = delivered_ids(sink)
    unique = set(ids)
    accepted = client.accepted
    return Result(name, len(accepted), len(unique & accepted), len(ids) - len(unique),
                  len(accepted - unique), drops, client.answers, peak / MIB, notes)  # fmt: skip


def outage(workdir: Path, storage: bool, down_s: float, rate: float) -> Result:
    port = free_port()
    store = workdir / "store" if storage else None
    with Sidecar(workdir, config(store, otlp_http=f"http://127.0.0.1:{port}")) as sidecar:
        assert sidecar.process is not None
        with RssPoller(sidecar.process.pid) as rss, Client(sidecar, rate) as client:
            time.sleep(down_s)
            with OtlpSink(port=port) as sink:
                time.sleep(5)
                client.__exit__()
                wait_drained(sink, client.accepted)
                drops = sum(dropped_items(sidecar).values())
        sidecar.stop()
    name = "outage-storage" if storage else "outage-memory"
    return result(name, client, sink, drops, rss.peak, f"backend down {down_s:.0f} s")


def sigkill(workdir: Path, rate: float) -> Result:
    store = workdir / "store"
    with OtlpSink(delay_s=0.2) as sink:
        first = Sidecar(workdir / "first", config(store, otlp_http=sink.endpoint)).start()
        assert first.process is not None
        with RssPoller(first.process.pid) as rss, Client(first, rate) as client:
            time.sleep(5)
            first.stop(signal.SIGKILL)
            second = Sidecar(workdir / "second", config(store, otlp_http=sink.endpoint)).start()
            client.sidecar = second  # the app's SDK sends again to the restarted sidecar
            time.sleep(3)
        wait_drained(sink, client.accepted)
        drops = sum(dropped_items(second).values())
        second.stop()
    return result("sigkill", client, sink, drops, rss.peak, "SIGKILL after 5 s, restarted")


def slow_backend(workdir: Path, rate: float, seconds: float = 20) -> Result:
    with OtlpSink(delay_s=10) as slow, OtlpSink() as fast:
        exporters = {"otlp_http/slow": f"{slow.endpoint} drop", "otlp_http/fast": fast.endpoint}
        with Sidecar(workdir, config(None, **exporters)) as sidecar:
            assert sidecar.process is not None
            with RssPoller(sidecar.process.pid) as rss, Client(sidecar, rate) as client:
                time.sleep(seconds)
            wait_drained(fast, client.accepted, limit_s=30)
            drops = dropped_items(sidecar)
            sidecar.stop(signal.SIGKILL)  # the slow one would hold the grace period
    slow_drops = sum(v for k, v in drops.items() if k.startswith("otlp_http/slow"))
    return result("slow-backend", client, fast, sum(drops.values()) - slow_drops, rss.peak,
                  f"to the other backend; the slow one dropped {slow_drops:,.0f} (counted, "
                  "when_full: drop)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--down", type=float, default=60)
    parser.add_argument("--rate", type=float, default=2000, help="spans per second")
    args = parser.parse_args()
    scenarios = {
        "outage-storage": lambda w: outage(w, True, args.down, args.rate),
        "outage-memory": lambda w: outage(w, False, args.down, args.rate),
        "sigkill": lambda w: sigkill(w, args.rate),
        "slow-backend": lambda w: slow_backend(w, args.rate),
    }
    print(f"{args.rate:.0f} spans/s in requests of {SPANS_PER_REQUEST}, pid {os.getpid()}")
    print(
        "| scenario | accepted | delivered | duplicated | lost | drops counted | answers "
        "| peak RSS MiB | notes |\n|---|---:|---:|---:|---:|---:|---|---:|---|"
    )
    failed = False
    for name, run in scenarios.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix=f"delivery-{name}-") as workdir:
            outcome = run(Path(workdir))
        print(outcome.row(), flush=True)
        failed |= outcome.lost > outcome.counted_drops
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
