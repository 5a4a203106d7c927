"""Throughput of the sidecar's OTLP/gRPC trace path, against a bare grpc.aio ceiling and the
OpenTelemetry Collector.

Usage: ``.venv/bin/python bench/throughput.py [--seconds N] [--connections C]
[--pipeline basic|reference|forward|sentry] [--rate R] [--traces T] [--spans-per-second S]
[--peer [--peer-skip NAME]] [--backoff] [--json]``

64 ``ExportTraceServiceRequest``s of 512 realistic spans (8 traces of 64, or ``--traces``) are
encoded once; a load generator in its own process keeps C Export calls in flight for N
seconds (or sends on a steady schedule of S spans/s), sending them in turn, every trace id
made new at each send (a counter over its first 4 bytes; the sampler decides from the last
7, so it keeps the same share). It runs:

* ``sidecar``: ``python -m collector run`` with an ``otlp`` (gRPC) receiver and either the
  ``batch`` processor alone writing to the ``file`` exporter (``basic``), or the reference
  trace processors memory_limiter, slow_spans, sampler (``--rate``, 0.1), scrubber, batch
  writing to the file (``reference``), forwarding protobuf with ``otlp_http`` to a bare
  OTLP/HTTP sink in its own process (``forward``), or sending to a Sentry-compatible sink
  with the ``sentry`` exporter (``sentry``: transactions counted against the traces the
  sampler kept of the accepted requests).
* ``collector`` (``--peer``, forward only): the real OpenTelemetry Collector built by
  ``bench/otelcol/build.sh``, on the closest pipeline it has (:func:`peer_config`), the same
  payloads and sink.
* ``ceiling``: a bare ``grpc.aio`` server whose handler only parses the request and drops it,
  the most a Python grpc.aio receiver could accept on this machine.

For each it reports accepted spans/s (OK responses x 512 / elapsed), the server process's CPU
seconds during the load window (utime+stime from ``/proc/<pid>/stat``), spans per CPU-second,
how long calls waited for their answer, and the peak resident size. How to read it: spans
per CPU-second is the cost figure and the steadier one; spans/s also depends on how many
cores are free, and the load generator competes for them. With ``sentry`` the cost is also
given until everything was delivered (the exporter holds a trace's segment two seconds for
late spans).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from collector import sampling  # noqa: E402
from examples.services import free_port  # noqa: E402

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METHOD = f"/{SERVICE}/Export"
TRACES = 8  # per request, of 64 spans
SPANS_PER_REQUEST = 512
STARTUP_TIMEOUT_S = 20.0
SPAWN = multiprocessing.get_context("spawn")
MS = 1_000_000  # nanoseconds
MIB = 1024 * 1024
PAYLOADS = 64  # distinct pre-encoded requests, sent in turn

REFERENCE = "[memory_limiter, slow_spans, sampler, scrubber, batch]"
PIPELINES = {  # name: (processors, exporters)
    # Receive, batch, write: the cost of the core path and the file exporter.
    "basic": ("[batch]", "[file]"),
    # The reference config's trace pipeline, sampling at the monitoring guide's recommended 10 %.
    "reference": (REFERENCE, "[file]"),
    # The same, forwarding protobuf to an OTLP/HTTP backend (a sink in its own process).
    "forward": (REFERENCE, "[otlp_http]"),
    # The default path: the same processors, the Sentry exporter to a Sentry-compatible sink.
    "sentry": (REFERENCE, "[sentry]"),
}
CONFIG = """\
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:0"}}
processors:
  memory_limiter: {{limit_mib: 512}}
  slow_spans: {{}}
  sampler: {{rate: {rate}}}
  scrubber: {{}}
  batch: {{timeout: 200ms, send_batch_size: 512}}
exporters:
  file: {{path: "{{path}}"}}
  otlp_http: {{endpoint: "{{otlp}}"}}
  sentry: {{dsn: "{{dsn}}"}}
service:
  pipelines:
    traces: {{receivers: [otlp], processors: {processors}, exporters: {exporters}}}
"""


# --- the payload -----------------------------------------------------------------------------

AttributeValue = str | int | float | bool


def _kv(key: str, value: AttributeValue) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _attributes(pairs: dict[str, AttributeValue]) -> list[KeyValue]:
    return [_kv(key, value) for key, value in pairs.items()]


def _server_attributes(rng: random.Random, item: int, status: int) -> dict[str, AttributeValue]:
    return {
        "http.request.method": "GET",
        "http.route": "/api/items/{id}",
        "url.path": f"/api/items/{item}",
        "url.scheme": "https",
        "http.response.status_code": status,
        "server.address": "shop.example.com",
        "server.port": 443,
        "client.address": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
        "network.protocol.version": "1.1",
        "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
        "Firefox/128.0",
        "http.response.body.size": rng.randrange(200, 20_000),
    }


def _db_attributes(rng: random.Random, item: int) -> dict[str, AttributeValue]:
    return {
        "db.system": "postgresql",
        "db.namespace": "shop",
        "db.operation.name": "SELECT",
        "db.collection.name": "items",
        "db.statement": "SELECT id, name, price, stock FROM items WHERE id = $1 AND deleted_at "
        "IS NULL",
        "server.address": "db.internal",
        "server.port": 5432,
        "network.peer.address": "10.1.0.12",
        "db.response.returned_rows": rng.randrange(0, 3),
        "app.item.id": item,
    }


def _http_client_attributes(rng: random.Random, item: int) -> dict[str, AttributeValue]:
    status = 200 if rng.random() < 0.999 else 503
    return {
        "http.request.method": "GET",
        "url.full": f"http://pricing.internal:8080/v2/prices/{item}?currency=EUR",
        "server.address": "pricing.internal",
        "server.port": 8080,
        "http.response.status_code": status,
        "network.protocol.version": "1.1",
        "http.resend_count": 0,
        "user_agent.original": "python-httpx/0.27.0",
    }


def _internal_attributes(rng: random.Random, item: int) -> dict[str, AttributeValue]:
    return {
        "code.function": rng.choice(["render_item", "load_item", "apply_discounts"]),
        "code.namespace": "shop.api.items",
        "code.filepath": "/app/shop/api/items.py",
        "code.lineno": rng.randrange(20, 400),
        "thread.id": rng.randrange(1, 64),
        "thread.name": "MainThread",
        "app.item.id": item,
        "app.cache.hit": rng.random() < 0.8,
        "app.discount.ratio": round(rng.random() / 4, 3),
    }


_CHILD_KINDS: list[tuple[str, int, Callable[[random.Random, int], dict[str, AttributeValue]]]] = [
    ("SELECT items", Span.SPAN_KIND_CLIENT, _db_attributes),
    ("GET", Span.SPAN_KIND_CLIENT, _http_client_attributes),
    ("render item", Span.SPAN_KIND_INTERNAL, _internal_attributes),
]


def _child_span(rng: random.Random, trace_id: bytes, parent: Span, item: int) -> Span:
    name, kind, make_attributes = rng.choice(_CHILD_KINDS)
    attributes = make_attributes(rng, item)
    start = rng.randrange(parent.start_time_unix_nano, parent.end_time_unix_nano)
    # Mostly a few milliseconds; one child in fifty takes up to the rest of its parent.
    longest = parent.end_time_unix_nano - start
    end = start + rng.randrange(
        1, longest + 1 if rng.random() < 0.02 else min(longest, MS * 20) + 1
    )
    span = Span(
        trace_id=trace_id,
        span_id=rng.randbytes(8),
        parent_span_id=parent.span_id,
        name=name,
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=_attributes(attributes),
    )
    if attributes.get("http.response.status_code") == 503:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="503 from pricing"))
    return span


_STACKTRACE = """Traceback (most recent call last):
  File "/app/shop/api/items.py", line 88, in get_item
    return render_item(load_item(item_id))
  File "/app/shop/api/items.py", line 41, in render_item
    "price": item["price"] * (1 - discount),
KeyError: 'price'
"""


def _trace(rng: random.Random, start_ns: int, size: int) -> list[Span]:
    """A SERVER root and its descendants; each parent is the root or an INTERNAL span."""
    trace_id = rng.randbytes(16)
    item = rng.randrange(1, 100_000)
    status = 200 if rng.random() < 0.99 else 500  # the monitoring guide's target: error rate < 1 %
    # Most requests take 20-300 ms; one in fifty is slow (1-3 s).
    duration_ms = rng.randrange(1000, 3000) if rng.random() < 0.02 else rng.randrange(20, 300)
    root = Span(
        trace_id=trace_id,
        span_id=rng.randbytes(8),
        name="GET /api/items/{id}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + duration_ms * MS,
        attributes=_attributes(_server_attributes(rng, item, status)),
        status=Status(code=Status.STATUS_CODE_OK if status == 200 else Status.STATUS_CODE_ERROR),
    )
    if status == 500:  # what the app's instrumentation records on the failing request
        root.events.add(name="exception", time_unix_nano=root.end_time_unix_nano).attributes.extend(
            _attributes({
                "exception.type": "KeyError",
                "exception.message": f"'price' for item {item}",
                "exception.stacktrace": _STACKTRACE,
                "exception.escaped": True,
            })
        )  # fmt: skip
    spans, parents = [root], [root]
    for _ in range(size - 1):
        child = _child_span(rng, trace_id, rng.choice(parents), item)
        spans.append(child)
        if child.kind == Span.SPAN_KIND_INTERNAL:
            parents.append(child)
    return spans


def build_request(
    seed: int = 1, traces: int = TRACES, spans: int = SPANS_PER_REQUEST
) -> ExportTraceServiceRequest:
    """``spans`` spans in ``traces`` traces of equal size (8 of 64 by default)."""
    rng = random.Random(seed)
    resource = _attributes(
        {
            "service.name": "shop-api",
            "service.version": "2.14.1",
            "deployment.environment": "production",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.version": "1.38.0",
            "host.name": "shop-api-7d9f8c6b5-x2k4q",
        }
    )
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans: ResourceSpans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(resource)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "opentelemetry.instrumentation.fastapi"
    scope_spans.scope.version = "0.59b0"
    for index in range(traces):
        start = now - (traces - index) * 1_000_000_000
        scope_spans.spans.extend(_trace(rng, start, spans // traces))
    return request


# --- the load generator (own process) --------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    ok_requests: int
    errors: dict[str, int]
    elapsed_s: float
    ack_ms: tuple[float, float, float]  # how long calls waited for an answer: p50, p99, max
    ok_by_payload: dict[int, int]  # answered OK, per index into the payloads
    sent_at: dict[int, float]  # a request's stamp (see FreshTraces) -> when it was sent (epoch)


def trace_ids(raw: bytes) -> list[bytes]:
    request = ExportTraceServiceRequest.FromString(raw)
    spans = (s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
    return list(dict.fromkeys(span.trace_id for span in spans))


class FreshTraces:
    """Pre-encoded requests whose traces are new at every send, as an app's are: a send counter
    is written over the first 4 bytes of each trace id where it occurs in the encoding. The
    sampler decides from the last 7 bytes, so a trace is kept or dropped as in the payload."""

    def __init__(self, payloads: list[bytes]) -> None:
        self._payloads = payloads
        self._offsets = [self._find(raw) for raw in payloads]
        self._sends = 0

    @staticmethod
    def _find(raw: bytes) -> list[int]:
        offsets = []
        for trace_id in trace_ids(raw):
            at = raw.find(trace_id)
            while at >= 0:
                offsets.append(at)
                at = raw.find(trace_id, at + len(trace_id))
        return offsets

    def send(self, index: int) -> tuple[int, bytes]:
        """The request's stamp (the number its trace ids begin with) and its encoding."""
        self._sends += 1
        stamp = self._sends.to_bytes(4, "big")
        encoded = bytearray(self._payloads[index])
        for at in self._offsets[index]:
            encoded[at : at + 4] = stamp
        return self._sends, bytes(encoded)


def stamp_of(trace_id: bytes) -> int:
    return int.from_bytes(trace_id[:4], "big")


def _load_main(conn: Connection, target: str, work: Load) -> None:
    conn.send(asyncio.run(_drive(conn, target, work)))


async def _drive(conn: Connection, target: str, work: Load) -> LoadResult:
    """``work.calls`` workers send for ``work.seconds``, each as soon as its last call was
    answered or, with a pace, at the next slot of a steady schedule; with ``work.backoff``, a
    worker refused with a RetryInfo waits what it asks first, as the OpenTelemetry SDKs do."""
    import grpc

    from exporters.otlp_grpc import _retry_delay

    payloads, seconds, calls = work.payloads, work.seconds, work.calls
    every = work.spans_per_request / work.pace if work.pace else 0.0

    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), STARTUP_TIMEOUT_S)
        export = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        conn.send("ready")
        await asyncio.to_thread(conn.recv)  # "go"
        fresh = FreshTraces(payloads)
        ok, errors, waits = Counter[int](), Counter[str](), []
        sent_at: dict[int, float] = {}
        started = time.monotonic()
        deadline = started + seconds
        slots = itertools.count()

        async def worker(offset: int) -> None:
            sent = offset
            while time.monotonic() < deadline:
                if every:
                    await asyncio.sleep(started + next(slots) * every - time.monotonic())
                sent += 1
                index = sent % len(payloads)
                asked = time.perf_counter()
                try:
                    stamp, encoded = fresh.send(index)
                    sent_at[stamp] = time.time()
                    await export(encoded, timeout=30)
                    ok[index] += 1
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] += 1
                    delay = _retry_delay(error) if work.backoff else None
                    if delay:
                        waits.append(time.perf_counter() - asked)
                        await asyncio.sleep(delay)
                        continue
                waits.append(time.perf_counter() - asked)

        await asyncio.gather(*(worker(index * 7) for index in range(calls)))
        elapsed = time.monotonic() - started
        return LoadResult(ok.total(), dict(errors), elapsed, _ack_ms(waits), dict(ok), sent_at)


def _ack_ms(waits: list[float]) -> tuple[float, float, float]:
    return _percentiles_ms(waits) if len(waits) > 1 else (0.0, 0.0, 0.0)


def _percentiles_ms(waits: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max in milliseconds (a single wait is all three)."""
    if len(waits) == 1:
        return (waits[0] * 1000,) * 3
    cuts = statistics.quantiles(waits, n=100, method="inclusive")  # never above the max
    return (cuts[49] * 1000, cuts[98] * 1000, max(waits) * 1000)


def hwm_bytes(pid: int) -> int:
    """The kernel's peak resident size of the process (``VmHWM``)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime (fields 14 and 15 of /proc/<pid>/stat), all threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    ok_requests: int
    errors: dict[str, int]
    elapsed_s: float
    cpu_s: float
    ack_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # p50, p99, max
    peak_rss_mib: float = 0.0  # the server's VmHWM after the load
    ok_by_payload: dict[int, int] = field(default_factory=dict)
    cpu_start_s: float = 0.0  # the server's CPU seconds when the load began
    cpu_until_delivered_s: float | None = None  # from the load's start until the sink was quiet
    delivered: dict[str, int] = field(default_factory=dict)  # what the sink received
    sent_at: dict[int, float] = field(default_factory=dict)  # see LoadResult; emptied once used
    delivery_ms: tuple[float, float, float] | None = None  # send to the sink: p50, p99, max
    error_event_ms: tuple[float, float, float] | None = None  # send to an error event's arrival
    spans_written: int | None = None
    spans_per_request: int = SPANS_PER_REQUEST
    spans_per_s: float = field(init=False)
    spans_per_cpu_s: float = field(init=False)

    def __post_init__(self) -> None:
        spans = self.ok_requests * self.spans_per_request
        self.spans_per_s = spans / self.elapsed_s if self.elapsed_s else 0.0
        self.spans_per_cpu_s = spans / self.cpu_s if self.cpu_s else 0.0


@dataclass(frozen=True)
class Load:
    payloads: list[bytes]
    seconds: float
    calls: int  # in flight at most
    pace: float = 0.0  # spans/s on a steady schedule; 0: as fast as answered
    spans_per_request: int = SPANS_PER_REQUEST
    backoff: bool = False  # a refused worker waits what the refusal's RetryInfo asks


def measure(server_pid: int, target: str, work: Load) -> Measurement:
    """Run the load generator against `target`, reading the server's CPU around the window."""
    parent, child = SPAWN.Pipe()
    load = SPAWN.Process(target=_load_main, args=(child, target, work), name="bench-load")
    load.start()
    child.close()
    try:
        _expect(parent, "ready", STARTUP_TIMEOUT_S, "load generator did not connect")
        before = cpu_seconds(server_pid)
        parent.send("go")
        result: LoadResult = _expect(parent, None, work.seconds + 60, "the load gave no result")
        after = cpu_seconds(server_pid)
        peak = hwm_bytes(server_pid) / MIB
    finally:
        load.join(10)
        if load.is_alive():
            load.kill()
    return Measurement(
        result.ok_requests, result.errors, result.elapsed_s, after - before, result.ack_ms, peak,
        result.ok_by_payload, before, sent_at=result.sent_at,
        spans_per_request=work.spans_per_request,
    )  # fmt: skip


def _expect(conn: Connection, wanted: Any, timeout: float, failure: str) -> Any:
    try:
        if conn.poll(timeout):
            message = conn.recv()
            if wanted is None or message == wanted:
                return message
    except EOFError:
        pass
    raise RuntimeError(failure)


# --- phase A: the sidecar --------------------------------------------------------------------


class Drain:
    """Reads a pipe line by line on a thread so it never fills; lines are kept and queued."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self.queue.put(line)
        self.queue.put(None)

    def join(self) -> None:
        self._thread.join(5)


def wait_for_start(stdout: Drain, timeout: float) -> str:
    """The gRPC endpoint from the ``sidecar_started`` log line."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = stdout.queue.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise RuntimeError("sidecar exited before logging sidecar_started")
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "sidecar_started":
            return str(event["endpoints"]["otlp_grpc"])
    raise RuntimeError(f"no sidecar_started line within {timeout:.0f} s")


def wait_until_stable(path: Path, quiet_s: float = 1.0, limit_s: float = 60.0) -> None:
    """Return once the file's size has not changed for `quiet_s` (or after `limit_s`)."""
    deadline = time.monotonic() + limit_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        current = path.stat().st_size if path.exists() else 0
        if current != size:
            size, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


@dataclass
class SidecarReport:
    exit_code: int | None = None
    stderr: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)


def _problems(lines: list[str]) -> list[str]:
    """Log lines at warning level or above, but for the slow-span events the payload causes."""
    found = []
    for line in lines:
        try:
            event = json.loads(line)
            level, name = event.get("level", ""), event.get("event")
        except (json.JSONDecodeError, AttributeError):
            level, name = "unparsed", None
        if level not in ("info", "debug") and name not in ("slow_request", "slow_query"):
            found.append(line)
    return found


def run_sidecar(
    work: Load, workdir: Path, config_text: str, sink: Sink | None
) -> tuple[Measurement, SidecarReport]:
    output = workdir / "bench.jsonl"
    config = workdir / "config.yaml"
    config.write_text(config_text.replace("{path}", str(output)))
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--config", str(config)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = Drain(process.stdout), Drain(process.stderr)
    report = SidecarReport()
    before = Counter[str]() if sink is None else sink.counts()
    if sink is not None:
        sink.arrivals()  # from here on: this run's
    try:
        target = wait_for_start(stdout, STARTUP_TIMEOUT_S)
        result = measure(process.pid, target, work)
        if sink is None:
            wait_until_stable(output)
        else:  # the Sentry exporter holds a segment transaction_wait (2 s) for late spans
            wait_until_steady(lambda: sum(sink.counts().values()), quiet_s=3.0)
        result.cpu_until_delivered_s = cpu_seconds(process.pid) - result.cpu_start_s
        process.send_signal(signal.SIGTERM)
        report.exit_code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stdout.join()
        stderr.join()
        report.stderr = stderr.lines
        report.log_problems = _problems(stdout.lines)
        if report.exit_code is None:
            _dump(report, stdout.lines)
    if sink is None:
        result.spans_written = count_spans(output)
    else:
        result.delivered = dict(sink.counts() - before)
        result.spans_written = result.delivered.get("spans", 0)
        delays(result, sink.arrivals())
    return result, report


def delays(result: Measurement, arrivals: dict[str, list[tuple[int, float]]]) -> None:
    """How long after its request was sent each request's last span and each error event
    reached the sink (both clocks are this machine's)."""
    sent, result.sent_at = result.sent_at, {}
    for kind, name in (("spans", "delivery_ms"), ("event", "error_event_ms")):
        waits = [
            arrived - sent[stamp] for stamp, arrived in arrivals.get(kind, ()) if stamp in sent
        ]
        if waits:
            setattr(result, name, _percentiles_ms(waits))


def wait_until_steady(count: Callable[[], int], quiet_s: float = 1.0, limit_s: float = 60) -> None:
    """Until the sink has received nothing new for ``quiet_s`` (the sender has flushed)."""
    deadline, last, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = count()
        if now_count != last:
            last, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


# --- the OTLP/HTTP backend for "forward" (own process) ----------------------------------------


class Sink:
    """A bare aiohttp server in its own process, an OTLP/HTTP backend and a Sentry: it parses
    each request (the official protobufs; ``sentry_sdk``'s envelopes) and counts spans,
    transactions and error events."""

    def __enter__(self) -> Sink:
        self._conn, child = SPAWN.Pipe()
        self._process = SPAWN.Process(target=_sink_main, args=(child,), name="bench-sink")
        self._process.start()
        self.endpoint = _expect(self._conn, None, STARTUP_TIMEOUT_S, "the sink did not start")
        self.dsn = self.endpoint.replace("://", "://0123456789abcdef0123456789abcdef@") + "/1"
        return self

    def counts(self) -> Counter[str]:
        """Received so far: ``spans`` (OTLP), ``transaction`` and ``event`` (Sentry)."""
        self._conn.send("count")
        return Counter(_expect(self._conn, None, 10, "the sink did not answer"))

    def spans(self) -> int:
        return self.counts()["spans"]

    def arrivals(self) -> dict[str, list[tuple[int, float]]]:
        """Since the last call: (stamp, time) of each request's last span and of each error
        event (their trace ids begin with the request's stamp, see FreshTraces)."""
        self._conn.send("arrivals")
        return dict(_expect(self._conn, None, 10, "the sink did not answer"))

    def sentry_items(self) -> int:
        counts = self.counts()
        return counts["transaction"] + counts["event"]

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def _sink_main(conn: Connection) -> None:
    asyncio.run(_serve_sink(conn))


async def _serve_sink(conn: Connection) -> None:
    import gzip

    from aiohttp import web
    from sentry_sdk.envelope import Envelope

    counts = Counter[str]()
    last_span: dict[int, float] = {}
    events: list[tuple[int, float]] = []
    ok = ExportTraceServiceResponse().SerializeToString()

    async def traces(request: web.Request) -> web.Response:
        body = gzip.decompress(await request.read())
        batch = ExportTraceServiceRequest.FromString(body)
        now = time.time()
        spans = [s for r in batch.resource_spans for ss in r.scope_spans for s in ss.spans]
        counts["spans"] += len(spans)
        last_span.update((stamp_of(span.trace_id), now) for span in spans)
        return web.Response(body=ok, content_type="application/x-protobuf")

    async def envelope(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        now = time.time()
        for item in Envelope.deserialize(body).items:
            counts[item.type or ""] += 1
            if item.type == "event" and item.payload.json is not None:
                trace_id = item.payload.json["contexts"]["trace"]["trace_id"]
                events.append((stamp_of(bytes.fromhex(trace_id)), now))
        return web.Response(text="{}")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/api/{project}/envelope/", envelope)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    conn.send(f"http://127.0.0.1:{runner.addresses[0][1]}")
    while True:
        message = await asyncio.to_thread(conn.recv)
        if message == "stop":
            break
        if message == "arrivals":
            conn.send({"spans": list(last_span.items()), "event": list(events)})
            last_span.clear()
            events.clear()
        else:
            conn.send(dict(counts))
    await runner.cleanup()


def _dump(report: SidecarReport, stdout: list[str]) -> None:
    print("sidecar stdout:", *stdout[-20:], sep="\n  ", file=sys.stderr)
    print("sidecar stderr:", *report.stderr[-20:], sep="\n  ", file=sys.stderr)


# --- phase C: the OpenTelemetry Collector, the peer (own process) ----------------------------

PEER = REPO_ROOT / "bench" / "otelcol" / "bin" / "otelcol-peer"  # built by bench/otelcol/build.sh
# The closest the Collector comes to the reference pipeline: the same sampling share of traces
# (from the trace id), redaction with the scrubber's default key and value rules as RE2
# patterns (it masks a whole value where the scrubber masks the secret in it) and its SQL
# sanitizer, batches of 512, gzip-compressed OTLP/HTTP protobuf to the same sink.
_PEER_KEYS = (
    r"(?i)passw(?:or)?d|secret|api[-_.]?key|auth|credentials?|mysql[-_.]?pwd|private[-_.]?key"
    r"|token|session|csrf|cookie"
)
_PEER_VALUES = [
    r"(?i)\b(?:bearer|basic)[ \t]+[^\s\"',;<>()]+",  # credentials
    r"\b(?:[0-9][ -]?){12,18}[0-9]\b",  # card numbers
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY",
    r"://[^\s/?#\"<>]{1,512}@",  # credentials in a URL
]


PEER_PROCESSORS = ("memory_limiter", "probabilistic_sampler", "redaction", "batch")


def peer_config(port: int, rate: float, otlp: str, skip: tuple[str, ...] = ()) -> str:
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_mib": 512},
            "probabilistic_sampler": {"sampling_percentage": rate * 100},
            "redaction": {
                "allow_all_keys": True,
                "blocked_key_patterns": [_PEER_KEYS],
                "blocked_values": _PEER_VALUES,
                "db_sanitizer": {"sql": {"enabled": True}},
                "summary": "silent",
            },
            "batch": {"timeout": "200ms", "send_batch_size": 512},
        },
        "exporters": {"otlp_http": {"endpoint": otlp, "compression": "gzip"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": [name for name in PEER_PROCESSORS if name not in skip],
                    "exporters": ["otlp_http"],
                }
            },
        },
    }
    return json.dumps(config)  # YAML is a superset of JSON


def run_peer(
    work: Load, workdir: Path, sink: Sink, rate: float, skip: tuple[str, ...] = ()
) -> tuple[Measurement, int | None]:
    """The Collector on the same payloads and sink; its spans written counted at the sink."""
    port = free_port()
    config = workdir / "otelcol.json"
    config.write_text(peer_config(port, rate, sink.endpoint, skip))
    with (workdir / "otelcol.log").open("w+") as log:
        process = subprocess.Popen([str(PEER), "--config", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        try:
            before = sink.spans()
            sink.arrivals()
            result = measure(process.pid, f"127.0.0.1:{port}", work)
            wait_until_steady(sink.spans)
            result.cpu_until_delivered_s = cpu_seconds(process.pid) - result.cpu_start_s
            result.spans_written = sink.spans() - before
            delays(result, sink.arrivals())
            process.terminate()
            exit_code = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.seek(0)
            if problems := log.read().strip():
                print("collector log:", problems[-3000:], sep="\n", file=sys.stderr)
    return result, exit_code


# --- phase B: the ceiling (own process) ------------------------------------------------------


def _ceiling_main(conn: Connection) -> None:
    asyncio.run(_serve_ceiling(conn))


async def _serve_ceiling(conn: Connection) -> None:
    import grpc

    success = ExportTraceServiceResponse().SerializeToString()

    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        ExportTraceServiceRequest.FromString(request)
        return success

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(export)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Export": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    conn.send(f"127.0.0.1:{port}")
    await stop.wait()
    await server.stop(1)


def run_ceiling(work: Load) -> tuple[Measurement, int | None]:
    parent, child = SPAWN.Pipe()
    server = SPAWN.Process(target=_ceiling_main, args=(child,), name="bench-ceiling")
    server.start()
    child.close()
    try:
        target = _expect(parent, None, STARTUP_TIMEOUT_S, "ceiling server did not start")
        assert server.pid is not None
        result = measure(server.pid, target, work)
        server.terminate()  # SIGTERM
        server.join(30)
    finally:
        if server.is_alive():
            server.kill()
            server.join()
    return result, server.exitcode


# --- report ----------------------------------------------------------------------------------


def count_spans(path: Path) -> int:
    """Spans in the file exporter's output (sampling writes fewer than were accepted)."""
    with path.open("rb") as lines:
        return sum(
            len(scope["spans"])
            for line in lines
            for resource in json.loads(line)["resourceSpans"]
            for scope in resource["scopeSpans"]
        )


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def sentry_delivery(payloads: list[bytes], rate: float, side: Measurement) -> dict[str, Any]:
    """Transactions the sink got against the traces the sampler kept of the accepted requests,
    and what they cost: transactions and accepted spans per CPU-second until delivered."""
    floor = sampling.threshold(rate)
    kept = [sum(sampling.randomness(t) >= floor for t in trace_ids(raw)) for raw in payloads]
    cpu = side.cpu_until_delivered_s or 0.0
    transactions = side.delivered.get("transaction", 0)
    accepted = side.ok_requests * side.spans_per_request
    return {
        "kept_traces": sum(kept[index] * ok for index, ok in side.ok_by_payload.items()),
        "transactions": transactions,
        "error_events": side.delivered.get("event", 0),
        "transactions_per_cpu_s": transactions / cpu if cpu else 0.0,
        "spans_per_cpu_s_until_delivered": accepted / cpu if cpu else 0.0,
    }


def results(
    args: argparse.Namespace,
    payloads: list[bytes],
    sidecar: tuple[Measurement, SidecarReport],
    ceiling: tuple[Measurement, int | None],
    peer: tuple[Measurement, int | None] | None = None,
) -> dict[str, Any]:
    (side, report), (top, ceiling_exit) = sidecar, ceiling
    data = {
        "seconds": args.seconds,
        "connections": args.connections,
        "spans_per_request": args.spans,
        "pipeline": args.pipeline,
        "rate": args.rate,
        "traces_per_request": args.traces,
        "spans_per_second_paced": args.spans_per_second,
        "request_bytes": len(payloads[0]),
        "sidecar": {**asdict(side), **asdict(report)},
        "ceiling": {**asdict(top), "exit_code": ceiling_exit},
        "ratios": {
            "spans_per_s": _ratio(side.spans_per_s, top.spans_per_s),
            "spans_per_cpu_s": _ratio(side.spans_per_cpu_s, top.spans_per_cpu_s),
        },
    }
    if args.pipeline == "sentry":
        data["sentry"] = sentry_delivery(payloads, args.rate, side)
    if peer is not None:
        collector, collector_exit = peer
        data["collector"] = {**asdict(collector), "exit_code": collector_exit}
        data["ratios"]["spans_per_cpu_s_vs_collector"] = _ratio(
            side.spans_per_cpu_s, collector.spans_per_cpu_s
        )
    return data


def print_table(data: dict[str, Any]) -> None:
    print(
        f"{data['spans_per_request']} spans/request ({data['request_bytes']} bytes), "
        f"{data['connections']} calls in flight, {data['seconds']} s per phase"
    )
    print(f"{'':10}{'spans/s':>12}{'CPU s':>9}{'spans/CPU-s':>13}{'requests':>10}{'errors':>8}"
          f"{'answer ms p50/p99/max':>24}{'peak RSS MiB':>14}{'written':>10}")  # fmt: skip
    for name in ("sidecar", "collector", "ceiling"):
        if name not in data:
            continue
        row = data[name]
        errors = sum(row["errors"].values())
        waits = "/".join(f"{ms:.0f}" for ms in row["ack_ms"])
        written = "" if row["spans_written"] is None else f"{row['spans_written']:,}"
        print(
            f"{name:10}{row['spans_per_s']:>12,.0f}{row['cpu_s']:>9.2f}"
            f"{row['spans_per_cpu_s']:>13,.0f}{row['ok_requests']:>10}{errors:>8}{waits:>24}"
            f"{row['peak_rss_mib']:>14.0f}{written:>10}"
        )
    for name, value in data["ratios"].items():
        shown = "n/a" if value is None else f"{value:.2f}"
        against = "collector" if name.endswith("_vs_collector") else "ceiling"
        print(f"sidecar/{against} {name.removesuffix('_vs_collector')}: {shown}")
    _print_notes(data)


def _print_notes(data: dict[str, Any]) -> None:
    side = data["sidecar"]
    accepted = side["ok_requests"] * data["spans_per_request"]
    print(f"sidecar spans accepted {accepted}, written {side['spans_written']}")
    for name, what in (
        ("delivery_ms", "a request's last span"),
        ("error_event_ms", "error events"),
    ):
        if waits := side.get(name):
            shown = "/".join(f"{ms:,.0f}" for ms in waits)
            print(f"sent to the sink, {what}: p50/p99/max {shown} ms")
    if sentry := data.get("sentry"):
        print(f"Sentry: {sentry['transactions']:,} transactions for {sentry['kept_traces']:,} "
              f"kept traces, {sentry['error_events']:,} error events; until delivered "
              f"{sentry['transactions_per_cpu_s']:,.0f} transactions and "
              f"{sentry['spans_per_cpu_s_until_delivered']:,.0f} accepted spans "
              "per CPU-s")  # fmt: skip
    exits = (f"{name} {data[name]['exit_code']}" for name in ("sidecar", "collector", "ceiling")
             if name in data)  # fmt: skip
    print("exit codes:", ", ".join(exits))
    for name in ("sidecar", "collector", "ceiling"):
        if name in data and data[name]["errors"]:
            print(f"{name} errors by status: {data[name]['errors']}")
    for title, lines in (("stderr", side["stderr"]), ("log warnings", side["log_problems"])):
        if lines:
            print(f"sidecar {title} ({len(lines)} lines):", *lines[:20], sep="\n  ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load per phase (10)")
    parser.add_argument("--connections", type=int, default=4, help="calls in flight (4)")
    parser.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default="basic",
        help="basic: batch only; reference: the reference trace processors",
    )
    parser.add_argument("--rate", type=float, default=0.1, help="sampler rate (reference)")
    parser.add_argument("--spans", type=int, default=SPANS_PER_REQUEST, help="per request (512)")
    parser.add_argument(
        "--traces", type=int, default=TRACES, help="per request, of equal size (8, of 64 spans)"
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="forward only: also run the OpenTelemetry Collector built by bench/otelcol/build.sh",
    )
    parser.add_argument(
        "--peer-skip",
        action="append",
        default=[],
        choices=PEER_PROCESSORS,
        help="leave a processor out of the Collector's pipeline (repeatable)",
    )
    parser.add_argument(
        "--spans-per-second",
        type=float,
        default=0.0,
        help="send on a steady schedule at this rate instead of as fast as answered",
    )
    parser.add_argument(
        "--backoff",
        action="store_true",
        help="a refused worker waits the delay the refusal's RetryInfo asks, as the SDKs do",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.peer and (args.pipeline != "forward" or not PEER.exists()):
        parser.error("--peer needs --pipeline forward and bench/otelcol/build.sh run first")
    if not 1 <= args.traces <= args.spans or args.spans % args.traces:
        parser.error("--traces must divide --spans")
    payloads = [build_request(seed, args.traces, args.spans).SerializeToString()
                for seed in range(PAYLOADS)]  # fmt: skip
    work = Load(payloads, args.seconds, args.connections, args.spans_per_second, args.spans,
                args.backoff)  # fmt: skip
    processors, exporters = PIPELINES[args.pipeline]
    config = CONFIG.format(processors=processors, exporters=exporters, rate=args.rate)
    with tempfile.TemporaryDirectory(prefix="otel-bench-") as tmp, Sink() as sink:
        config = config.replace("{otlp}", sink.endpoint).replace("{dsn}", sink.dsn)
        counted = sink if args.pipeline in ("forward", "sentry") else None
        sidecar = run_sidecar(work, Path(tmp), config, counted)
        peer = None
        if args.peer:
            peer = run_peer(work, Path(tmp), sink, args.rate, tuple(args.peer_skip))
    ceiling = run_ceiling(work)
    data = results(args, payloads, sidecar, ceiling, peer)
    if args.json:
        print(json.dumps(data))
    else:
        print_table(data)
    exits = [sidecar[1].exit_code, ceiling[1], *([] if peer is None else [peer[1]])]
    return 0 if all(code == 0 for code in exits) else 1


if __name__ == "__main__":
    raise SystemExit(main())
