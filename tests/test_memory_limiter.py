"""Admission control: with a stalled exporter the receivers answer 503 / UNAVAILABLE instead of
growing, and accept again once the exporter drains; the SDK's retry then delivers the data."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from collector.component import Refused
from collector.memory import HELD, MIB, Admission, TooCostly
from collector.processors.memory_limiter import MemoryLimiterSettings
from collector.settings import ConfigError
from tests.sidecar import BASIC_CONFIG, Sidecar, spans_in
from tests.test_receivers import TRACE_EXPORT, post, trace_request

# Refuse above 4 MiB held; pass each request straight to the (stalled) file exporter.
LIMITED_CONFIG = (
    BASIC_CONFIG.replace(
        "processors:\n", "processors:\n  memory_limiter: {limit_mib: 8, spike_limit_mib: 4}\n"
    )
    .replace("timeout: 50ms, send_batch_size: 512", "timeout: 50ms, send_batch_size: 1")
    .replace(
        "processors: [batch], exporters: [file]}\n    logs",
        "processors: [memory_limiter, batch], exporters: [file]}\n    logs",
    )
)


class StalledPipe:
    """The file exporter's output is a FIFO nobody reads until ``drain()``: a stalled sink."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
        # Open the read end first so the exporter's open() does not block; read nothing yet.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.received = bytearray()
        self._stop = threading.Event()

    def drain(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = os.read(self._fd, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if chunk:
                self.received += chunk
            else:
                time.sleep(0.01)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in bytes(self.received).splitlines()]

    def close(self) -> None:
        self._stop.set()
        os.close(self._fd)


def big_request(tag: str, size: int = 450_000) -> bytes:
    request = trace_request(spans=1, name=tag)
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(
        key="payload"
    ).value.string_value = "x" * size
    return request.SerializeToString()


PROBE = big_request("probe", 100_000)  # 0.8 MB as parsed: more than is left beside 3.6 MB


def probe_grpc(sidecar: Sidecar) -> grpc.StatusCode:
    with grpc.insecure_channel(sidecar.endpoints["otlp_grpc"]) as channel:
        try:
            channel.unary_unary(TRACE_EXPORT)(PROBE, timeout=0.5)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_stalled_exporter_gives_backpressure_then_recovers(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path, LIMITED_CONFIG)
    pipe = StalledPipe(sidecar.output)
    with sidecar:
        # A 450 kB request stuck behind the stalled exporter holds 3.6 MB (8x, as parsed) of
        # the 4 MiB the limiter lets in: a second one, or a probe of 100 kB, does not fit.
        stuck = threading.Thread(
            target=post, args=(sidecar, "/v1/traces", big_request("s0")), daemon=True
        )
        stuck.start()
        deadline = time.monotonic() + 20
        while probe_grpc(sidecar) != grpc.StatusCode.UNAVAILABLE:
            assert time.monotonic() < deadline, "the limiter never refused"
        status, _, headers = post(sidecar, "/v1/traces", PROBE)
        assert status == 503
        assert headers["Retry-After"] == "1"

        # The SDK's own HTTP exporter, sending during the stall, gets through after the drain.
        provider = TracerProvider(resource=Resource.create({"service.name": "retrying"}))
        exporter = OTLPSpanExporter(endpoint=sidecar.url("/v1/traces"), timeout=30)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        result: list[object] = []
        sdk = threading.Thread(
            target=lambda: result.append(
                provider.get_tracer("t").start_span("after the stall").end()
            ),
            daemon=True,
        )
        sdk.start()
        time.sleep(1.5)  # sent (and held) while the exporter is stalled
        pipe.drain()
        sdk.join(40)
        assert not sdk.is_alive()
        stuck.join(30)
        assert probe_grpc(sidecar) == grpc.StatusCode.OK
        assert sidecar.stop() == 0
    pipe.close()
    names = [
        span["name"]
        for line in pipe.lines()
        for rs in line.get("resourceSpans", [])
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    assert "after the stall" in names
    assert "s0" in names


def test_spike_limit_must_be_below_limit() -> None:
    with pytest.raises(ConfigError, match=r"processors\.memory_limiter\.spike_limit_mib"):
        MemoryLimiterSettings(limit_mib=10, spike_limit_mib=10).check("processors.memory_limiter")


def test_default_spike_is_a_fifth() -> None:
    assert MemoryLimiterSettings(limit_mib=100).refuse_above_bytes == 80 * 1024 * 1024


def test_a_request_that_could_never_fit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """A gzip bomb (8 KB on the wire, 8 MiB inflated) under limit_mib 64: what it would cost
    parsed (8 bytes a byte, the measured worst case) is over the limit: 413 before parsing,
    over HTTP and gRPC; an ordinary request still gets through."""
    import gzip

    bomb = trace_request(spans=1)
    bomb.resource_spans[0].scope_spans[0].spans[0].attributes.add(
        key="payload"
    ).value.string_value = "x" * (8 << 20)
    raw = bomb.SerializeToString()
    config = (
        BASIC_CONFIG.replace("processors:\n", "processors:\n  memory_limiter: {limit_mib: 64}\n")
        .replace("max_request_body_size_mib: 1", "max_request_body_size_mib: 20")
        .replace("max_recv_msg_size_mib: 1", "max_recv_msg_size_mib: 20")
        .replace(
            "processors: [batch], exporters: [file]}\n    logs",
            "processors: [memory_limiter, batch], exporters: [file]}\n    logs",
        )
    )
    with Sidecar(tmp_path, config) as sidecar:
        status, body, _ = post(
            sidecar, "/v1/traces", gzip.compress(raw), **{"Content-Encoding": "gzip"}
        )
        assert status == 413 and b"memory limit" in body
        channel = grpc.insecure_channel(sidecar.endpoints["otlp_grpc"])
        with channel, pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(TRACE_EXPORT)(raw, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert post(sidecar, "/v1/traces", trace_request().SerializeToString())[0] == 200
        assert sidecar.stop() == 0
    assert len(spans_in(sidecar.lines())) == 2  # the ordinary request, nothing of the bomb


def test_admission_lets_in_what_fits_beside_what_is_held() -> None:
    limit = SimpleNamespace(mark=4 * MIB, over=True, retry_after_s=1.0)
    admission = Admission()
    admission.register(limit)
    assert HELD.value == 0
    # Nothing held: the resident size over the mark is memory the allocator kept, not data.
    admission.check(100_000)
    with HELD.request(MIB), pytest.raises(Refused):
        admission.check(100_000)  # over, and something is held
    limit.over = False
    with HELD.request(3 * MIB):
        admission.check(100_000)  # 0.8 MB as parsed fits beside 3 MiB
        with pytest.raises(Refused):
            admission.check(200_000)  # 1.6 MB does not
    with pytest.raises(TooCostly):
        admission.check(MIB)  # 8 MiB as parsed: could never fit


def test_a_body_of_unknown_size_holds_what_it_may_grow_to_while_read() -> None:
    limit = SimpleNamespace(mark=4 * MIB, over=False, retry_after_s=1.0)
    admission = Admission()
    admission.register(limit)
    with admission.reading(8 * MIB):
        assert HELD.value == 4 * MIB  # at most a mark: one such body alone always fits
        with pytest.raises(Refused):
            admission.check(1000)  # nothing fits beside it
    assert HELD.value == 0


def test_the_resident_watch_refuses_above_its_mark_and_recovers_below(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over the mark (not at it), cyclic garbage is collected and memory given back, then
    measured again; the limiter refuses while it stays over, lets data in once below, and
    stops watching at shutdown."""
    import asyncio

    from collector.memory import ADMISSION
    from collector.processors import memory_limiter as module
    from collector.settings import Duration
    from collector.signals import Signal

    resident = [100 * MIB]
    given_back = [0]
    freed_to: list[int | None] = [None]  # what giving memory back brings the size down to

    steps: list[str] = []

    def give_back() -> None:
        given_back[0] += 1
        steps.append("give_back")
        if freed_to[0] is not None:
            resident[0] = freed_to[0]

    monkeypatch.setattr(module, "resident_bytes", lambda: resident[0])
    monkeypatch.setattr(module, "give_back", give_back)
    monkeypatch.setattr(module.gc, "collect", lambda: steps.append("collect"))
    passed: list[object] = []

    class Next:
        async def consume(self, batch: object) -> None:
            passed.append(batch)

    settings = MemoryLimiterSettings(limit_mib=64, spike_limit_mib=0,
                                     check_interval=Duration(0.01))  # fmt: skip
    limiter = module.MemoryLimiter("memory_limiter", settings, Signal.TRACES, Next())

    async def until(condition: object) -> None:
        for _ in range(5_000):  # until the watch has run (no time asserted)
            if condition():  # type: ignore[operator]
                return
            await asyncio.sleep(0.001)

    async def scenario() -> None:
        await limiter.start()
        mark = 100 * MIB + module.WORKING_SET_MIB * MIB + 64 * MIB
        resident[0] = mark  # at the mark: not over it, nothing to give back
        await asyncio.sleep(0.05)
        assert not limiter.over and given_back[0] == 1  # once, at start
        freed_to[0] = mark  # over; giving memory back brings it to the mark: enough
        resident[0] = mark + 1
        await until(lambda: given_back[0] > 1)
        assert not limiter.over  # the run that gave back measured again
        freed_to[0] = None  # over, and nothing to give back
        resident[0] = mark + 1
        await until(lambda: limiter.over)
        assert limiter.over
        HELD.hold(1)  # something else is held: the watch's verdict decides
        try:
            with pytest.raises(Refused) as refused:
                await limiter.consume("batch")
            assert refused.value.reason == "memory_limit"
            resident[0] = mark - 1
            await until(lambda: not limiter.over)
            await limiter.consume("batch")
        finally:
            HELD.release(1)
        assert passed == ["batch"]
        await limiter.shutdown()
        assert limiter._watch is None and limiter not in ADMISSION._limits
        # At start, memory is only given back; over the mark, garbage is collected first.
        assert steps[0] == "give_back" and set(steps[1::2]) == {"collect"}
        assert set(steps[2::2]) == {"give_back"} and len(steps) % 2 == 1

    asyncio.run(scenario())
