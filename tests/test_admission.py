"""The receivers' admission, in process: what the Intake counts and answers, where the memory
limit's edge lies, what the memory limiter refuses and when it watches (the end-to-end side is
in test_memory_limiter.py and test_receivers.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from types import FrameType, SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.component import Entrance, Refused
from collector.memory import (
    ADMISSION,
    HELD,
    MIB,
    PARSED_FACTOR,
    Admission,
    HeldBytes,
    TooCostly,
    give_back,
    resident_bytes,
)
from collector.pipeline import Door, FanOut
from collector.processors.batch import BatchProcessor, BatchSettings
from collector.processors.memory_limiter import (
    WORKING_SET_MIB,
    MemoryLimiter,
    MemoryLimiterSettings,
)
from collector.receivers.intake import GrpcSettings, HttpSettings, Intake
from collector.receivers.otlp_grpc import OtlpGrpcServer
from collector.receivers.otlp_http import OtlpHttpServer
from collector.settings import Duration, Endpoint
from collector.signals import Batch, InvalidBatch, Signal
from collector.telemetry import REGISTRY
from tests.garbage import cyclic_garbage, frames_in
from tests.test_receivers import trace_request


class Taker:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.batches: list[Batch] = []

    def admit(self) -> None:
        if isinstance(self.error, Refused):
            raise self.error

    async def consume(self, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        self.batches.append(batch)


def refused(transport: str, reason: str) -> float:
    labels = {"receiver": transport, "signal": "traces", "reason": reason}
    return REGISTRY.get_sample_value("otelsidecar_receiver_refused_requests_total", labels) or 0.0


def accepted(transport: str) -> float:
    labels = {"receiver": transport, "signal": "traces"}
    return REGISTRY.get_sample_value("otelsidecar_receiver_accepted_items_total", labels) or 0.0


def test_the_intake_counts_what_it_accepts_and_each_refusal_by_reason() -> None:
    taker = Taker()
    intake = Intake("test_counts", {Signal.TRACES: taker})
    reasons = ("invalid", "too_large", "queue_full", "internal")
    before = {reason: refused("test_counts", reason) for reason in reasons}
    taken = accepted("test_counts")
    asyncio.run(intake.accept(Signal.TRACES, trace_request(spans=3)))
    assert accepted("test_counts") == taken + 3 and len(taker.batches) == 1

    bad_id = trace_request(spans=1)
    bad_id.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01"
    with pytest.raises(InvalidBatch):
        asyncio.run(intake.accept(Signal.TRACES, bad_id))

    flood = trace_request(spans=1)
    span = flood.resource_spans[0].scope_spans[0].spans[0]
    for index in range(5000):
        span.attributes.add(key=f"k{index}").value.bool_value = True
    with pytest.raises(TooCostly, match="attributes"):
        asyncio.run(intake.accept(Signal.TRACES, flood))

    taker.error = Refused("queue_full")
    with pytest.raises(Refused):
        asyncio.run(intake.accept(Signal.TRACES, trace_request(spans=1)))
    taker.error = RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        asyncio.run(intake.accept(Signal.TRACES, trace_request(spans=1)))
    counted = {reason: refused("test_counts", reason) - before[reason] for reason in reasons}
    assert counted == dict.fromkeys(reasons, 1)
    assert accepted("test_counts") == taken + 3  # none of the refused


def test_admission_refusals_say_why_and_when_to_come_back() -> None:
    limit = SimpleNamespace(mark=4 * MIB, over=False, retry_after_s=7.0)
    admission = Admission()
    admission.register(limit)
    with HELD.request(4 * MIB):
        with pytest.raises(Refused) as refusal:
            admission.check(1000)
        assert (refusal.value.reason, refusal.value.retry_after_s) == ("memory_limit", 7.0)
    with pytest.raises(TooCostly, match="request too large for the memory limit"):
        admission.check(MIB)
    admission.unregister(limit)
    admission.check(MIB)  # no limit, no say


def test_what_exactly_fills_the_mark_is_let_in() -> None:
    limit = SimpleNamespace(mark=4 * MIB, over=False, retry_after_s=1.0)
    admission = Admission()
    admission.register(limit)
    with HELD.request(MIB):
        admission.check(3 * MIB // PARSED_FACTOR)  # held + cost == mark
        with pytest.raises(Refused):
            admission.check(3 * MIB // PARSED_FACTOR + 1)
    admission.check(4 * MIB // PARSED_FACTOR)  # nothing held: a whole mark
    with pytest.raises(TooCostly):
        admission.check(4 * MIB // PARSED_FACTOR + 1)


def test_a_request_leaves_its_own_bytes_out_of_what_is_held_before_it() -> None:
    assert HELD.value == 0
    HELD.hold(1000)
    try:
        with HELD.request(300):
            assert HELD.value == 1300
            assert HELD.before_request() == 1000
        assert HELD.before_request() == 1000
    finally:
        HELD.release(1000)
    assert HELD.value == 0


def test_the_resident_size_is_the_process_s() -> None:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    reported = int(line.split()[1]) * 1024
    assert abs(resident_bytes() - reported) < 8 * MIB


def limiter(**settings: Any) -> tuple[MemoryLimiter, Taker]:
    taker = Taker()
    values = {"limit_mib": 64, "check_interval": Duration(0.01), **settings}
    processor = MemoryLimiter(
        "memory_limiter", MemoryLimiterSettings(**values), Signal.TRACES, taker
    )
    return processor, taker


def test_the_limiter_refuses_while_what_others_hold_is_over_its_mark() -> None:
    processor, taker = limiter(retry_after=Duration(3))
    mark = processor.mark
    assert mark == (64 - 64 // 5) * MIB
    asyncio.run(processor.consume(trace_request(spans=1)))  # nothing held
    HELD.hold(mark)
    try:
        asyncio.run(processor.consume(trace_request(spans=1)))  # at the mark: still taken
        HELD.hold(1)
        with pytest.raises(Refused) as refusal:
            asyncio.run(processor.consume(trace_request(spans=1)))
        assert (refusal.value.reason, refusal.value.retry_after_s) == ("memory_limit", 3.0)
    finally:
        HELD.release(mark + 1)
    with HELD.request(2 * mark):  # its own request's bytes are not held against it
        asyncio.run(processor.consume(trace_request(spans=1)))
    assert len(taker.batches) == 3


def test_the_limiter_refuses_while_resident_memory_is_over_and_something_is_held() -> None:
    processor, taker = limiter()

    async def scenario() -> None:
        await processor.start()
        try:
            assert processor._resident_mark >= resident_bytes() + WORKING_SET_MIB * MIB
            processor.over = True
            await processor.consume(trace_request(spans=1))  # nothing held: let in
            with HELD.request(1000):
                HELD.hold(1)
                try:
                    with pytest.raises(Refused):
                        await processor.consume(trace_request(spans=1))
                finally:
                    HELD.release(1)
            await asyncio.sleep(0.05)  # the watch reads the resident size again
            assert processor.over is False
        finally:
            await processor.shutdown()

    asyncio.run(scenario())
    assert len(taker.batches) == 1


def test_the_limiter_takes_part_in_admission_only_while_running() -> None:
    processor, _ = limiter(limit_mib=8)
    before = list(ADMISSION._limits)

    async def scenario() -> None:
        await processor.start()
        try:
            assert ADMISSION._limits == [*before, processor]
            with pytest.raises(TooCostly):
                ADMISSION.check(8 * MIB)
        finally:
            await processor.shutdown()

    asyncio.run(scenario())
    assert ADMISSION._limits == before
    ADMISSION.check(8 * MIB)


def test_the_limiter_watches_the_resident_size_until_shut_down() -> None:
    processor, _ = limiter()

    async def scenario() -> None:
        await processor.start()
        expected = resident_bytes() + WORKING_SET_MIB * MIB + processor.mark
        assert abs(processor._resident_mark - expected) < 8 * MIB
        processor._resident_mark = 0  # as if the process had grown past it
        for _ in range(100):
            if processor.over:
                break
            await asyncio.sleep(0.01)
        assert processor.over is True
        await processor.shutdown()
        assert processor._watch is None
        processor.over = False
        await asyncio.sleep(0.05)
        assert processor.over is False  # no watch left to set it

    asyncio.run(scenario())


def test_a_spike_limit_of_zero_is_allowed() -> None:
    settings = MemoryLimiterSettings(limit_mib=64, spike_limit_mib=0)
    settings.check("processors.memory_limiter")
    assert settings.refuse_above_bytes == 64 * MIB


def test_the_intake_s_checks_before_reading_refuse_and_count_by_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    intake = Intake("test_checks", {Signal.TRACES: Taker()})
    reasons = ("memory_limit", "too_large", "loop_lag", "queue_full")
    before = {reason: refused("test_checks", reason) for reason in reasons}
    limit = SimpleNamespace(mark=4 * MIB, over=False, retry_after_s=3.0)
    ADMISSION.register(limit)
    try:
        intake.check_admission(Signal.TRACES, 1000)  # room: nothing said, nothing counted
        intake.check_ready(Signal.TRACES)
        with HELD.request(4 * MIB), pytest.raises(Refused, match="memory_limit"):
            intake.check_admission(Signal.TRACES, 1000)
        with pytest.raises(TooCostly):
            intake.check_admission(Signal.TRACES, MIB)  # could never fit under the mark
    finally:
        ADMISSION.unregister(limit)

    class Lagging:
        def check(self, waited_s: float) -> None:
            raise Refused("loop_lag", 1.0)

    monkeypatch.setattr("collector.receivers.intake.OVERLOAD", Lagging())
    with pytest.raises(Refused, match="loop_lag"):
        intake.check_ready(Signal.TRACES)
    monkeypatch.undo()
    # A pipeline whose exporter has no room: refused before a byte is read, not after parsing.
    full = Intake("test_checks", {Signal.TRACES: Taker(Refused("queue_full", 1.0))})
    with pytest.raises(Refused, match="queue_full"):
        full.check_ready(Signal.TRACES)
    counted = {reason: refused("test_checks", reason) - before[reason] for reason in reasons}
    assert counted == {"memory_limit": 1, "too_large": 1, "loop_lag": 1, "queue_full": 1}


def test_a_new_count_holds_nothing_and_never_goes_below_zero() -> None:
    held = HeldBytes()
    assert held.value == 0
    held.hold(10)
    held.release(25)
    assert held.value == 0


def test_too_costly_says_so_in_words() -> None:
    limit = SimpleNamespace(mark=MIB, over=False, retry_after_s=1.0)
    admission = Admission()
    admission.register(limit)
    with pytest.raises(TooCostly) as raised:
        admission.check(MIB)
    assert str(raised.value) == "request too large for the memory limit"


def test_freed_memory_is_handed_back_to_the_os(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[tuple[str, int]] = []

    class Libc:
        def __init__(self, name: str) -> None:
            self.name = name

        def malloc_trim(self, pad: int) -> int:
            trims.append((self.name, pad))
            return 1

    monkeypatch.setattr("collector.memory.ctypes.CDLL", Libc)
    give_back()
    assert trims == [("libc.so.6", 0)]  # glibc's, keeping no padding

    def not_glibc(name: str) -> None:
        raise OSError(name)

    monkeypatch.setattr("collector.memory.ctypes.CDLL", not_glibc)
    give_back()  # elsewhere: nothing to trim, no error


class RefusesOnceRead:
    """A pipeline that lets calls be read, then refuses them: the exporter's queue filled."""

    def admit(self) -> None:
        pass

    async def consume(self, batch: Batch) -> None:
        raise Refused("queue_full", 1.0)


class FullStorage:
    """A durable exporter whose storage refuses what it is given (disk full)."""

    name = "full_storage"
    accepts_unsampled_errors = True
    durable = True

    def admit(self) -> None:
        pass

    async def consume(self, batch: Batch) -> None:
        raise Refused("storage_error", 1.0)


def fanned_out() -> Door:
    """A pipeline's door straight to the fan-out to its exporters."""
    exporter = FullStorage()
    return Door(FanOut([exporter]), [exporter])


def wired_pipeline() -> Door:
    """The way the sidecar wires a pipeline for a durable exporter: its door, a batch
    processor that waits for the exporter's send, the fan-out."""
    exporter = FullStorage()
    batch = BatchProcessor("batch", BatchSettings(send_batch_size=10_000), Signal.TRACES,
                           FanOut([exporter]))  # fmt: skip
    batch.joined([], [exporter])
    return Door(batch, [exporter])


def holding(frames: list[FrameType], payloads: list[bytes]) -> list[str]:
    """The frames whose locals hold one of ``payloads`` or a parsed batch."""
    return [
        frame.f_code.co_name
        for frame in frames
        for value in frame.f_locals.values()
        if value in payloads or isinstance(value, ExportTraceServiceRequest)
    ]


@pytest.mark.parametrize(
    "pipeline", [RefusesOnceRead, fanned_out, wired_pipeline], ids=["refusing", "fan-out", "wired"]
)
def test_a_refused_call_leaves_nothing_it_read_in_cyclic_garbage(
    pipeline: Callable[[], Entrance],
) -> None:
    """grpc keeps an abort's exception in a reference cycle until the garbage collector runs,
    with every frame of its traceback: none of those may hold the call's bytes or its parsed
    batch, or a flood of calls refused after reading holds all of theirs until then (the
    sidecar collects cycles less often than Python's default). Refused by the pipeline
    (directly, and through a door, a waiting batch processor and the fan-out), not protobuf,
    and with invalid ids: each answered as before."""
    request = trace_request(spans=50)
    bad_ids = trace_request(spans=1)
    bad_ids.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01"
    payloads = [request.SerializeToString(), b"\xff\xff not protobuf", bad_ids.SerializeToString()]
    codes: list[grpc.StatusCode] = []

    async def calls() -> None:
        intake = Intake("test_garbage", {Signal.TRACES: pipeline()})
        server = OtlpGrpcServer(GrpcSettings(endpoint=Endpoint("127.0.0.1:0")), intake)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                export = channel.unary_unary(f"/{Signal.TRACES.grpc_service}/Export")
                for payload in payloads:
                    with pytest.raises(grpc.aio.AioRpcError) as raised:
                        await export(payload)
                    codes.append(raised.value.code())
        finally:
            await server.shutdown(0)

    # The sidecar's frames (the test's own hold what they sent).
    frames = frames_in(cyclic_garbage(lambda: asyncio.run(calls())), "/collector/")
    assert codes == [grpc.StatusCode.UNAVAILABLE, *[grpc.StatusCode.INVALID_ARGUMENT] * 2]
    assert holding(frames, payloads) == []


def test_a_body_refused_for_its_size_leaves_nothing_in_cyclic_garbage() -> None:
    """A chunked OTLP/HTTP body that grows past the limit is answered 413; the part read must
    not sit in a reference cycle (asyncio.wait_for's task left one: 8.7 MiB per refusal)."""
    chunk = b"\x00" * (256 * 1024)
    codes: list[int] = []

    async def post() -> None:
        settings = HttpSettings(endpoint=Endpoint("127.0.0.1:0"), max_request_body_size_mib=1)
        intake = Intake("test_garbage_http", {Signal.TRACES: RefusesOnceRead()})
        receiver = OtlpHttpServer(settings, intake)
        await receiver.start()
        try:
            host, port = receiver.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: application/x-protobuf\r\n\r\n")  # fmt: skip
            for _ in range(8):  # 2 MiB, twice the limit
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            writer.write(b"0\r\n\r\n")
            codes.append(int((await reader.readline()).split()[1]))
            writer.close()
        finally:
            await receiver.shutdown(0)

    garbage = cyclic_garbage(lambda: asyncio.run(post()))
    held = [
        len(value)
        for item in garbage
        for value in gc.get_referents(item)
        if isinstance(value, (bytes, bytearray)) and len(value) >= len(chunk)
    ]
    assert codes == [413]
    assert held == []


@pytest.mark.parametrize(("retry_after_s", "asked_s"), [(2.5, 2.5), (0.0, 1.0)])
def test_a_refused_call_tells_grpc_clients_when_to_come_back(
    monkeypatch: pytest.MonkeyPatch, retry_after_s: float, asked_s: float
) -> None:
    """gRPC's Retry-After: a refusal carries the refusal's delay as a ``RetryInfo``, in the
    status details (the Collector's and our otlp_grpc exporter's reading) and on its own (the
    OpenTelemetry Python SDK's). The SDK's exporter is the client; without RetryInfo it would
    back off 0.8-1.2 s of its own, and it takes the delay asked instead: at least a second,
    as HTTP's Retry-After, or a 0 (``retry_after: 0s``) would have it send again at once."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider

    from exporters.otlp_grpc import _retry_delay

    span = TracerProvider().get_tracer("test").start_span("GET /x")
    span.end()
    backoffs: list[float] = []

    def sdk_export(address: str) -> None:
        exporter = OTLPSpanExporter(endpoint=address, insecure=True, timeout=30)
        # Where the SDK sleeps before retrying: the delay it chose, and no retry.
        monkeypatch.setattr(
            exporter._shutdown_in_progress, "wait", lambda s: backoffs.append(s) or True
        )
        exporter.export([span])
        exporter.shutdown()

    async def calls() -> grpc.aio.AioRpcError:
        refusal = Refused("queue_full", retry_after_s)
        intake = Intake("test_retry_info", {Signal.TRACES: Taker(refusal)})
        server = OtlpGrpcServer(GrpcSettings(endpoint=Endpoint("127.0.0.1:0")), intake)
        await server.start()
        try:
            await asyncio.to_thread(sdk_export, server.address)
            async with grpc.aio.insecure_channel(server.address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await channel.unary_unary(f"/{Signal.TRACES.grpc_service}/Export")(b"")
            return raised.value
        finally:
            await server.shutdown(0)

    refused = asyncio.run(calls())
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert "queue_full" in (refused.details() or "")
    assert _retry_delay(refused) == asked_s
    assert backoffs == [asked_s]
