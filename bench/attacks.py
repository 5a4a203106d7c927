"""Attacks on the sidecar's memory bound and backpressure, against the real process.

Usage: ``.venv/bin/python bench/attacks.py [--only NAME ...] [--limit-mib 64] [--clients 16]
[--requests 5] [--orphan-requests 130] [--orphan-wait 30] [--stall 20] [--spans-per-s 5000]
[--recover-within 10]``

Every attack gets a fresh sidecar, started as users start it (``python -m collector run
--config FILE``, every port 127.0.0.1:0, files in a temp dir) with ``memory_limiter:
{limit_mib: 64}`` first in the traces pipeline, then slow_spans, sampler (rate 1.0), scrubber
and batch, exporting with the ``sentry`` exporter (default queue and buffer settings) to a
Sentry-compatible sink in a process of its own that parses every envelope. Requests are real
OpenTelemetry protobufs. The attacks:

* ``gzip``: gzip amplification. 4 concurrent OTLP/HTTP POSTs of a ~12 KB gzip body that
  inflates to 11.2 MiB (one span with 1.3 M tiny attributes). Expected: 413 each.
* ``big-http`` and ``big-grpc``: big-request flood. 16 client threads x 5 requests of 3.7 MiB
  (20 realistic 512-span requests merged: 10,240 spans, 160 traces with unique ids), over
  OTLP/HTTP, then (fresh sidecar) over OTLP/gRPC. Expected: a mix of 200 and 503 / OK and
  UNAVAILABLE.
* ``orphans``: orphan-span flood. 130 requests (4 concurrent senders) of 20 INTERNAL spans
  whose parent never arrives, each span with 50 KB of attributes: the Sentry exporter's trace
  buffer holds them for ``max_trace_wait``. Expected: refusals (503) instead of growth.
* ``stalled-sentry``: the sink reads every envelope but answers nothing for ``--stall`` seconds
  (then 200) while a client sends ``--spans-per-s`` (10 requests/s, traces of 10 spans with
  unique ids, HTTP and gRPC in turn) for the stall and 2 s more. Expected: retryable refusals
  (503 / UNAVAILABLE) during the stall; after it, every accepted trace delivered as a
  transaction, and no drop counted on ``/metrics``.

Columns: ``answers`` counts what the clients got (HTTP status, gRPC code, or the client-side
error); ``idle`` is the process's RSS right after it started; ``peak`` is the larger of the RSS
polled every 20 ms from ``/proc/<pid>/statm`` and the kernel's ``VmHWM``; ``bound`` is
64 MiB x 1.2 + idle; ``slowest`` the longest a client waited for an answer; ``recovered`` how
long after the attack a normal request was answered 200 (probing every 0.25 s for up to
60 s; "no" past ``--recover-within`` s, with the time it took); ``lost`` the accepted units
(traces, or spans for orphans) that never reached the sink as transactions, counted after the
sidecar's SIGTERM flush; ``drops`` what ``otelsidecar_dropped_items_total`` gained during the
attack, by component, signal and reason.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from throughput import (  # noqa: E402
    _attributes,
    _db_attributes,
    _server_attributes,
    build_request,
    hwm_bytes,
)

from tests.sidecar import Sidecar  # noqa: E402
from tests.test_receivers import grpc_export, post, trace_request  # noqa: E402

MIB = 1 << 20
SPAWN = multiprocessing.get_context("spawn")
PAGE = os.sysconf("SC_PAGE_SIZE")
PUBLIC_KEY = "0123456789abcdef0123456789abcdef"
# Every template request's trace ids start with these 8 bytes; each copy sent replaces them
# (one bytes.replace) with 8 random ones, so that every request carries unique trace ids.
MARKER = os.urandom(8)
ACCEPTED = ("HTTP 200", "gRPC OK")
REFUSED = ("HTTP 503", "gRPC UNAVAILABLE")
TOO_LARGE = ("HTTP 413", "gRPC RESOURCE_EXHAUSTED")
GZIP = {"Content-Encoding": "gzip"}
ATTACKS = ("gzip", "big-http", "big-grpc", "orphans", "stalled-sentry")

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
      http: {endpoint: "127.0.0.1:0"}
processors:
  memory_limiter: {limit_mib: LIMIT}
  slow_spans: {threshold_ms: 1000, db_threshold_ms: 100}
  sampler: {rate: 1.0}
  scrubber: {}
  batch: {timeout: 200ms, send_batch_size: 512}
exporters:
  sentry: {dsn: "DSN", max_trace_wait: WAITs}
extensions:
  health: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, slow_spans, sampler, scrubber, batch]
      exporters: [sentry]
"""


# --- the Sentry sink (a process of its own) ---------------------------------------------------


def _sink_main(conn: Connection) -> None:
    asyncio.run(_serve_sink(conn))


async def _serve_sink(conn: Connection) -> None:
    """Parses every envelope; answers 200, or only once a stall is over. Records each
    transaction as (trace id, span id, child spans) and the client reports' discards."""
    from aiohttp import web
    from sentry_sdk.envelope import Envelope

    transactions: list[tuple[str, str, int]] = []
    discarded: Counter[str] = Counter()
    others: Counter[str] = Counter()
    resume = asyncio.Event()
    resume.set()
    loop = asyncio.get_running_loop()

    async def envelope(request: web.Request) -> web.Response:
        body = await request.read()
        await resume.wait()  # stalled: the connection is open, the answer does not come
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        for item in Envelope.deserialize(body).items:
            if item.type == "transaction":
                event = json.loads(item.payload.get_bytes())
                trace = event["contexts"]["trace"]
                transactions.append((trace["trace_id"], trace["span_id"], len(event["spans"])))
            elif item.type == "client_report":
                for entry in json.loads(item.payload.get_bytes())["discarded_events"]:
                    discarded[f"{entry['category']}:{entry['reason']}"] += entry["quantity"]
            else:
                others[item.type or "?"] += 1
        return web.Response(text="{}")

    app = web.Application(client_max_size=64 * MIB)
    app.router.add_post("/api/{project}/envelope/", envelope)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    conn.send(runner.addresses[0][1])
    while True:
        command, argument = await asyncio.to_thread(conn.recv)
        if command == "stall":
            resume.clear()
            loop.call_later(argument, resume.set)
            conn.send(None)
        elif command == "received":
            conn.send((list(transactions), dict(discarded), dict(others)))
        else:  # "stop"
            break
    resume.set()
    await runner.cleanup()


class SentrySink:
    """``with SentrySink() as sink:`` a Sentry-compatible server on 127.0.0.1:0 in its own
    process (the clients and the RSS poller in this one cannot slow it down)."""

    def __enter__(self) -> SentrySink:
        self._conn, child = SPAWN.Pipe()
        self._process = SPAWN.Process(target=_sink_main, args=(child,), daemon=True)
        self._process.start()
        if not self._conn.poll(30):
            self._process.kill()
            raise RuntimeError("the Sentry sink did not start")
        self.port = self._conn.recv()
        self._lock = threading.Lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send(("stop", None))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    @property
    def dsn(self) -> str:
        return f"http://{PUBLIC_KEY}@127.0.0.1:{self.port}/1"

    def _ask(self, command: str, argument: Any = None) -> Any:
        with self._lock:
            self._conn.send((command, argument))
            return self._conn.recv()

    def stall(self, seconds: float) -> None:
        """From now, answer nothing for ``seconds`` (requests are read and held), then 200."""
        self._ask("stall", seconds)

    def transactions(self) -> list[tuple[str, str, int]]:
        return self._ask("received")[0]

    def discarded(self) -> dict[str, int]:
        """What the sidecar's client reports said it dropped, "category:reason" -> count."""
        return self._ask("received")[1]


# --- the sidecar's memory ----------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class RssPoller:
    """Reads a process's RSS every ``interval`` s from a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval)


# --- requests ------------------------------------------------------------------------------------

Key = tuple[str, str]  # (trace id, span id or "" when whole traces are counted)


@dataclass(frozen=True)
class Template:
    """A serialised request whose trace ids all begin with :data:`MARKER`."""

    body: bytes
    keys: list[tuple[bytes, str]]  # (low 8 bytes of a trace id, span id hex or "")

    def copy(self) -> tuple[bytes, list[Key]]:
        """The request with fresh trace ids, and the keys of what it carries."""
        prefix = os.urandom(8)
        keys = [((prefix + low).hex(), span) for low, span in self.keys]
        return self.body.replace(MARKER, prefix), keys


def _mark(request: ExportTraceServiceRequest, per_span: bool) -> Template:
    keys: dict[tuple[bytes, str], None] = {}
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.trace_id = MARKER + span.trace_id[8:]
                keys[(span.trace_id[8:], span.span_id.hex() if per_span else "")] = None
    return Template(request.SerializeToString(), list(keys))


def big_template(merged: int = 20) -> Template:
    """``merged`` realistic 512-span requests (bench/throughput.py's: 8 traces of a SERVER span
    and 63 descendants, DB, HTTP client and internal spans) as one: 3.7 MiB for 20."""
    request = ExportTraceServiceRequest()
    for seed in range(merged):
        request.MergeFrom(build_request(seed))
    return _mark(request, per_span=False)


def orphan_template(spans: int = 20, attributes: int = 50, value_bytes: int = 1000) -> Template:
    """One trace of ``spans`` INTERNAL spans whose parent (a random id) is never sent, each
    with ``attributes`` x ``value_bytes`` of attributes (50 KB)."""
    rng = random.Random(7)
    value = ("lorem ipsum dolor sit amet, consectetur adipiscing elit " * 20)[:value_bytes]
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    request.resource_spans[0].resource.attributes.extend(_attributes({"service.name": "orphans"}))
    trace_id, parent = rng.randbytes(16), rng.randbytes(8)
    for index in range(spans):
        span = scope.spans.add(
            trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=parent,
            name=f"work {index}", kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=now - 50_000_000, end_time_unix_nano=now,
        )  # fmt: skip
        span.attributes.extend(_attributes({f"app.blob.{i}": value for i in range(attributes)}))
    return _mark(request, per_span=True)


def steady_template(traces: int, spans_per_trace: int = 10) -> Template:
    """``traces`` traces of a SERVER span and its DB queries, as a FastAPI service sends."""
    rng = random.Random(11)
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans: ResourceSpans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        _attributes({"service.name": "shop-api", "service.version": "2.14.1"})
    )
    scope: ScopeSpans = resource_spans.scope_spans.add()
    for _ in range(traces):
        trace_id, item = rng.randbytes(16), rng.randrange(1, 100_000)
        root = scope.spans.add(
            trace_id=trace_id, span_id=rng.randbytes(8), name="GET /api/items/{id}",
            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now - 80_000_000,
            end_time_unix_nano=now,
        )  # fmt: skip
        root.attributes.extend(_attributes(_server_attributes(rng, item, 200)))
        for index in range(spans_per_trace - 1):
            child = scope.spans.add(
                trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root.span_id,
                name="SELECT items", kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=now - 70_000_000 + index * 5_000_000,
                end_time_unix_nano=now - 66_000_000 + index * 5_000_000,
            )  # fmt: skip
            child.attributes.extend(_attributes(_db_attributes(rng, item)))
    return _mark(request, per_span=False)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def gzip_bomb(attributes: int = 1_300_000) -> tuple[bytes, int, list[Key]]:
    """A request of one span with ``attributes`` tiny int attributes, gzip-compressed (the
    repeated field written out directly: building 1.3 M messages would take the client
    seconds). Returns the gzip body, the inflated size and the trace's key."""
    span = Span(
        trace_id=os.urandom(16), span_id=os.urandom(8), name="GET /",
        kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=time.time_ns() - 1_000_000,
        end_time_unix_nano=time.time_ns(),
    )  # fmt: skip
    one = KeyValue(key="a", value=AnyValue(int_value=1)).SerializeToString()
    number = Span.DESCRIPTOR.fields_by_name["attributes"].number
    span_bytes = span.SerializeToString() + _length_delimited(number, one) * attributes
    scope = _length_delimited(ScopeSpans.DESCRIPTOR.fields_by_name["spans"].number, span_bytes)
    resource = _length_delimited(
        ResourceSpans.DESCRIPTOR.fields_by_name["scope_spans"].number, scope
    )
    request = _length_delimited(
        ExportTraceServiceRequest.DESCRIPTOR.fields_by_name["resource_spans"].number, resource
    )
    return gzip.compress(request, 9), len(request), [(span.trace_id.hex(), "")]


# --- clients -------------------------------------------------------------------------------------


def send_http(sidecar: Sidecar, body: bytes, **headers: str) -> str:
    try:
        status, _, _ = post(sidecar, "/v1/traces", body, **headers)
    except urllib.error.URLError as error:
        return f"HTTP {type(error.reason).__name__}"
    except (OSError, ValueError) as error:  # a reset mid-answer, a timeout, a bad status line
        return f"HTTP {type(error).__name__}"
    return f"HTTP {status}"


def send_grpc(sidecar: Sidecar, body: bytes) -> str:
    answer = grpc_export(sidecar, body)
    return f"gRPC {answer.code().name}" if isinstance(answer, grpc.RpcError) else "gRPC OK"


@dataclass
class Answers:
    """What the clients of one attack got, and what the sidecar accepted."""

    counts: Counter[str] = field(default_factory=Counter)
    accepted: set[Key] = field(default_factory=set)
    slowest_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, send: Callable[[], str], keys: Iterable[Key]) -> str:
        started = time.monotonic()
        label = send()
        took = time.monotonic() - started
        with self._lock:
            self.counts[label] += 1
            self.slowest_s = max(self.slowest_s, took)
            if label in ACCEPTED:
                self.accepted.update(keys)
        return label

    def count(self, labels: Iterable[str]) -> int:
        return sum(self.counts[label] for label in labels)


# --- one attack ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    answers: Counter[str]
    idle_mib: float
    peak_mib: float
    bound_mib: float
    slowest_s: float
    recovered_s: float | None  # None: no normal request accepted before giving up
    recover_within_s: float
    unit: str  # "traces" or "spans"
    accepted: int
    lost: int
    drops: dict[str, float]  # "component/signal/reason" -> count gained during the attack
    discarded: dict[str, int]  # what the sidecar's client reports told the sink it dropped
    exit_code: int | None  # after SIGTERM; a crash shows here
    crashed: bool  # the process had exited before it was asked to
    notes: str = ""
    warnings: dict[str, int] = field(default_factory=dict)  # the sidecar's warning/error lines
    stderr: str = ""

    @property
    def within_bound(self) -> bool:
        return self.peak_mib <= self.bound_mib

    @property
    def recovered(self) -> bool:
        return self.recovered_s is not None and self.recovered_s <= self.recover_within_s


def dropped_items(sidecar: Sidecar) -> Counter[str]:
    """``otelsidecar_dropped_items_total`` from the health port's ``/metrics``."""
    url = f"http://{sidecar.endpoints['health']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    drops: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "otelsidecar_dropped_items_total":
                labels = sample.labels
                drops[f"{labels['component']}/{labels['signal']}/{labels['reason']}"] += (
                    sample.value
                )
    return drops


def recovery(sidecar: Sidecar, within_s: float) -> float | None:
    """Seconds until a normal two-span request is answered 200, probing every 0.25 s."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if send_http(sidecar, trace_request().SerializeToString()) == "HTTP 200":
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def delivered(sink: SentrySink, unit: str) -> set[Key]:
    return {
        (trace_id, span_id if unit == "spans" else "")
        for trace_id, span_id, _ in sink.transactions()
    }


def wait_delivered(
    sink: SentrySink, accepted: set[Key], unit: str, min_s: float, limit_s: float
) -> None:
    """Until every accepted unit reached the sink, or (after ``min_s``) the sink has had
    nothing new for 5 s, or ``limit_s``."""
    started = last_change = time.monotonic()
    seen = -1
    while True:
        arrived = delivered(sink, unit)
        now = time.monotonic()
        if accepted <= arrived or now - started > limit_s:
            return
        if len(arrived) != seen:
            seen, last_change = len(arrived), now
        elif now - started > min_s and now - last_change > 5:
            return
        time.sleep(0.25)


def run_attack(
    name: str,
    workdir: Path,
    sink: SentrySink,
    attack: Callable[[Sidecar, Answers], None],
    *,
    unit: str = "traces",
    limit_mib: int = 64,
    max_trace_wait_s: float = 30,
    settle_s: float = 4,
    recover_within_s: float = 10,
    give_up_s: float = 60,
    notes: str = "",
) -> Outcome:
    """A fresh sidecar, its idle RSS, ``attack(sidecar, answers)`` under the RSS poller, a
    recovery probe (for up to ``give_up_s``, to say how late it came), the wait for delivery
    (at least ``settle_s``), SIGTERM, the count."""
    config = (
        CONFIG.replace("LIMIT", str(limit_mib))
        .replace("DSN", sink.dsn)
        .replace("WAIT", f"{max_trace_wait_s:g}")
    )
    sidecar = Sidecar(workdir / name, config).start()
    try:
        assert sidecar.process is not None
        pid = sidecar.process.pid
        time.sleep(1.0)
        idle = rss_bytes(pid)
        drops_before, discarded_before = dropped_items(sidecar), Counter(sink.discarded())
        answers = Answers()
        with RssPoller(pid) as poller:
            attack(sidecar, answers)
            crashed = sidecar.process.poll() is not None
            recovered = None if crashed else recovery(sidecar, max(recover_within_s, give_up_s))
            if not crashed:
                wait_delivered(sink, answers.accepted, unit, settle_s, settle_s + 60)
                drops = dropped_items(sidecar) - drops_before
            else:
                drops = Counter()
            peak = max(poller.peak, hwm_bytes(pid))
    finally:
        exit_code = sidecar.stop()
    lost = len(answers.accepted - delivered(sink, unit))
    return Outcome(
        name, answers.counts, idle / MIB, peak / MIB, limit_mib * 1.2 + idle / MIB,
        answers.slowest_s, recovered, recover_within_s, unit, len(answers.accepted), lost,
        dict(drops), dict(Counter(sink.discarded()) - discarded_before), exit_code, crashed,
        notes, warnings(sidecar), sidecar.stderr[-2000:],
    )  # fmt: skip


def warnings(sidecar: Sidecar) -> dict[str, int]:
    """The sidecar's own warning and error lines (stdout events, and what libraries logged on
    stderr, Python's "Task exception was never retrieved" among them), by event."""
    found = Counter(
        str(event.get("event"))
        for event in list(sidecar.events)
        if event.get("level") in ("warning", "error", "critical")
    )
    skip = ("Traceback", "future:", "During handling", "The above exception")
    for line in sidecar.stderr.splitlines():
        if line and not line[0].isspace() and not line.startswith(skip):
            found[f"stderr {line[:100]!r}"] += 1  # a logged line or an exception's last line
    return dict(found)


# --- the attacks ---------------------------------------------------------------------------------


def gzip_amplification(workdir: Path, sink: SentrySink, bodies: int = 4, **kw: Any) -> Outcome:
    body, inflated, keys = gzip_bomb()

    def attack(sidecar: Sidecar, answers: Answers) -> None:
        with ThreadPoolExecutor(bodies) as pool:
            for _ in range(bodies):
                pool.submit(answers.send, lambda: send_http(sidecar, body, **GZIP), keys)

    notes = f"{bodies} x {len(body) / 1000:.0f} KB gzip, {inflated / MIB:.1f} MiB inflated"
    return run_attack("gzip", workdir, sink, attack, notes=notes, **kw)


def big_request_flood(
    workdir: Path,
    sink: SentrySink,
    transport: str = "http",
    clients: int = 16,
    requests: int = 5,
    template: Template | None = None,
    **kw: Any,
) -> Outcome:
    """``transport``: "http", "grpc", or "mixed" (every other client on gRPC)."""
    big = template or big_template()

    def client(sidecar: Sidecar, answers: Answers, send: Callable[[Sidecar, bytes], str]) -> None:
        for _ in range(requests):
            body, keys = big.copy()
            answers.send(lambda body=body: send(sidecar, body), keys)

    def attack(sidecar: Sidecar, answers: Answers) -> None:
        grpc_clients = {"http": 0, "grpc": clients, "mixed": clients // 2}[transport]
        sends = [send_grpc] * grpc_clients + [send_http] * (clients - grpc_clients)
        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(client, sidecar, answers, send) for send in sends]:
                future.result()

    notes = f"{clients} x {requests} x {len(big.body) / MIB:.1f} MiB, {len(big.keys)} traces each"
    return run_attack(f"big-{transport}", workdir, sink, attack, notes=notes, **kw)


def orphan_flood(
    workdir: Path,
    sink: SentrySink,
    requests: int = 130,
    senders: int = 4,
    max_trace_wait_s: float = 30,
    **kw: Any,
) -> Outcome:
    orphans = orphan_template()

    def client(sidecar: Sidecar, answers: Answers, count: int) -> None:
        for _ in range(count):
            body, keys = orphans.copy()
            answers.send(lambda body=body: send_http(sidecar, body), keys)

    def attack(sidecar: Sidecar, answers: Answers) -> None:
        shares = [requests // senders + (i < requests % senders) for i in range(senders)]
        with ThreadPoolExecutor(senders) as pool:
            for future in [pool.submit(client, sidecar, answers, n) for n in shares]:
                future.result()

    notes = (
        f"{requests} x {len(orphans.body) / MIB:.2f} MiB ({len(orphans.keys)} spans of 50 KB), "
        f"max_trace_wait {max_trace_wait_s:g} s"
    )
    return run_attack(
        "orphans", workdir, sink, attack, unit="spans", max_trace_wait_s=max_trace_wait_s,
        settle_s=max_trace_wait_s + 4, notes=notes, **kw,
    )  # fmt: skip


def stalled_sentry(
    workdir: Path,
    sink: SentrySink,
    stall_s: float = 20,
    spans_per_s: int = 5000,
    requests_per_s: int = 10,
    tail_s: float = 2,
    **kw: Any,
) -> Outcome:
    traces = max(1, spans_per_s // requests_per_s // 10)
    steady = steady_template(traces)

    def attack(sidecar: Sidecar, answers: Answers) -> None:
        total = int((stall_s + tail_s) * requests_per_s)
        sink.stall(stall_s)
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for index in range(total):
                time.sleep(max(0.0, started + index / requests_per_s - time.monotonic()))
                body, keys = steady.copy()
                send = send_http if index % 2 == 0 else send_grpc
                pool.submit(answers.send, lambda send=send, body=body: send(sidecar, body), keys)

    notes = (
        f"stall {stall_s:g} s, {requests_per_s * traces * 10:,} spans/s "
        f"({requests_per_s}/s x {traces} traces of 10 spans) for {stall_s + tail_s:g} s"
    )
    return run_attack("stalled-sentry", workdir, sink, attack, notes=notes, **kw)


# --- the table -----------------------------------------------------------------------------------


def answers_text(counts: Counter[str]) -> str:
    return ", ".join(f"{n} x {label}" for label, n in counts.most_common())


def drops_text(drops: dict[str, float]) -> str:
    return ", ".join(f"{key}: {value:g}" for key, value in sorted(drops.items())) or "none"


def render(outcomes: list[Outcome]) -> str:
    lines = [
        "| attack | answers | idle MiB | peak RSS MiB | bound MiB | within | slowest answer "
        "| recovered | lost | drops counted |",
        "|---|---|---:|---:|---:|---|---:|---|---|---|",
    ]
    for o in outcomes:
        if o.crashed:
            recovered = "crashed"
        elif o.recovered_s is None:
            recovered = "**no** (none accepted)"
        else:
            recovered = f"{'yes' if o.recovered else '**no**'}, {o.recovered_s:.1f} s"
        lines.append(
            f"| {o.name} | {answers_text(o.answers)} | {o.idle_mib:.0f} | {o.peak_mib:.0f} "
            f"| {o.bound_mib:.0f} | {'yes' if o.within_bound else '**no**'} "
            f"| {o.slowest_s:.1f} s | {recovered} | {o.lost} of {o.accepted} {o.unit} "
            f"| {drops_text(o.drops)} |"
        )
    lines.append("")
    for o in outcomes:
        reports = ", ".join(f"{key}: {n}" for key, n in sorted(o.discarded.items()))
        logged = ", ".join(f"{key} x {n}" for key, n in sorted(o.warnings.items()))
        lines.append(
            f"- {o.name}: {o.notes}; client reports to Sentry: {reports or 'no discards'}; "
            f"sidecar warnings: {logged or 'none'}; exit code {o.exit_code} after SIGTERM"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("--only", action="append", choices=ATTACKS, help="repeatable")
    parser.add_argument("--limit-mib", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16, help="big-request flood threads")
    parser.add_argument("--requests", type=int, default=5, help="per big-request client")
    parser.add_argument("--orphan-requests", type=int, default=130)
    parser.add_argument("--orphan-wait", type=float, default=30, help="max_trace_wait, s")
    parser.add_argument("--stall", type=float, default=20, help="seconds Sentry answers nothing")
    parser.add_argument("--spans-per-s", type=int, default=5000)
    parser.add_argument("--recover-within", type=float, default=10, help="seconds")
    args = parser.parse_args()
    chosen = args.only or list(ATTACKS)
    common = {"limit_mib": args.limit_mib, "recover_within_s": args.recover_within}
    runs: dict[str, Callable[[Path, SentrySink], Outcome]] = {
        "gzip": lambda w, s: gzip_amplification(w, s, **common),
        "big-http": lambda w, s: big_request_flood(
            w, s, "http", args.clients, args.requests, **common
        ),
        "big-grpc": lambda w, s: big_request_flood(
            w, s, "grpc", args.clients, args.requests, **common
        ),
        "orphans": lambda w, s: orphan_flood(
            w, s, args.orphan_requests, max_trace_wait_s=args.orphan_wait, **common
        ),
        "stalled-sentry": lambda w, s: stalled_sentry(w, s, args.stall, args.spans_per_s, **common),
    }
    outcomes = []
    with SentrySink() as sink, tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            print(f"{name} ...", flush=True)
            outcomes.append(runs[name](Path(tmp), sink))
    print(f"\nlimit_mib {args.limit_mib}: bound = {args.limit_mib} MiB x 1.2 + idle RSS\n")
    print(render(outcomes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
