"""How long a gRPC call waited in the transport before its handler: from gRPC core's own call
counts, and refused past the bound, against a real grpc.aio server and the real sidecar."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector.overload import INTERVAL_S, MAX_QUEUED_S
from collector.receivers import grpc_queue
from collector.receivers.grpc_queue import TransportQueue
from tests.sidecar import Sidecar
from tests.test_plugins import install_plugin
from tests.test_receivers import trace_request

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Core:
    """gRPC core's counts and the clock, as a test sets them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 100.0
        self.arrived = self.finished = 0
        monkeypatch.setattr(grpc_queue, "time", SimpleNamespace(monotonic=lambda: self.now))
        monkeypatch.setattr(TransportQueue, "_counts", lambda _: (self.arrived, self.finished))

    def at(self, now: float, arrived: int, finished: int = 0) -> None:
        self.now, self.arrived, self.finished = now, arrived, finished


def test_a_call_waited_since_the_first_count_that_included_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core, queue = Core(monkeypatch), TransportQueue(channelz_id=0)
    for now, arrived in [(100.0, 0), (101.0, 10), (102.0, 20)]:
        core.at(now, arrived)
        queue.sample()
    core.now = 102.5
    waits = []
    for _ in range(21):
        with queue.handed_over() as waited_s:
            waits.append(waited_s)
    assert waits[0] == waits[9] == 1.5  # arrived between the samples at 100 and 101
    assert waits[10] == waits[19] == 0.5
    assert waits[20] == 0.0  # not counted yet: arrived after the last sample


def test_calls_no_handler_of_ours_sees_are_set_right_when_nothing_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Health checks are counted as arrived but handed to the health service: while they are
    open the count stays; once nothing waits, the next call is the next to arrive."""
    core, queue = Core(monkeypatch), TransportQueue(channelz_id=0)
    core.at(100.0, arrived=5, finished=4)  # one health check still open: something waits
    queue.sample()
    core.at(101.0, arrived=6, finished=4)
    queue.sample()
    core.now = 101.5
    with queue.handed_over() as waited_s:
        assert waited_s == 1.5  # taken as the first to arrive: the count is not set right yet
    core.at(102.0, arrived=6, finished=6)  # all answered
    queue.sample()
    core.at(103.0, arrived=7, finished=6)
    queue.sample()
    core.now = 103.25
    with queue.handed_over() as waited_s:
        assert waited_s == 0.25  # the 7th to arrive, first counted at 103


def test_a_call_in_its_handler_is_not_taken_for_one_that_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core, queue = Core(monkeypatch), TransportQueue(channelz_id=0)
    core.at(100.0, arrived=1)
    queue.sample()
    with queue.handed_over():
        core.at(101.0, arrived=3, finished=0)  # two health checks open meanwhile, then done
        queue.sample()
        core.at(102.0, arrived=3, finished=2)
        queue.sample()  # only the call in its handler is open: nothing waits
        core.at(103.0, arrived=4, finished=2)
        queue.sample()
    core.now = 103.5
    with queue.handed_over() as waited_s:
        assert waited_s == 0.5


def test_it_samples_while_calls_come_in_and_not_while_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each sample asks gRPC's core (~250 us): an idle sidecar asks nothing."""
    core, queue = Core(monkeypatch), TransportQueue(channelz_id=0)
    asked = []
    monkeypatch.setattr(TransportQueue, "_counts", lambda _: asked.append(1) or (1, core.finished))

    async def until_asked(times: int) -> None:
        for _ in range(200):
            if len(asked) >= times:
                return
            await asyncio.sleep(INTERVAL_S / 2)
        raise AssertionError(f"asked {len(asked)} times, not {times}")

    async def scenario() -> list[int]:
        queue.start()
        seen = [len(asked)]  # the first sample, at start
        await asyncio.sleep(INTERVAL_S * 4)
        seen.append(len(asked))  # idle
        with queue.handed_over():
            pass  # its handler has ended; gRPC has not counted it finished yet
        await until_asked(3)  # so it looks waiting: sampled on
        core.finished = 1
        await until_asked(len(asked) + 1)
        settled = len(asked)
        await asyncio.sleep(INTERVAL_S * 4)
        seen += [settled, len(asked)]
        await queue.stop()
        return seen

    first, idle, settled, later = asyncio.run(scenario())
    assert (first, idle) == (1, 1)
    assert settled >= 3 and later - settled <= 1  # at most the sample that found it idle


def test_the_queue_is_that_of_the_server_just_made_and_counts_every_call() -> None:
    """Its own server's calls, whatever they are for: a method it does not have too."""

    async def scenario() -> tuple[tuple[int, int], tuple[int, int], int, int]:
        other = grpc.aio.server()  # another server in the process is not counted
        other.add_insecure_port("127.0.0.1:0")
        server, queue = TransportQueue.new_server([])
        assert queue is not None
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        before = queue._counts()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await channel.unary_unary("/no.Such/Method")(b"", timeout=10)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        after = queue._counts()
        await server.stop(None)
        return before, after, queue._handed, queue._handling

    assert asyncio.run(scenario()) == ((0, 0), (1, 1), 1, 0)


def test_without_channelz_calls_are_taken_as_not_having_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def off(start: int) -> bytes:
        raise ValueError("Failed to get servers")

    monkeypatch.setattr(grpc_queue.cygrpc, "channelz_get_servers", off)

    async def scenario() -> object:
        server, queue = TransportQueue.new_server([])
        await server.stop(None)
        return queue

    assert asyncio.run(scenario()) is None


def test_a_sample_that_fails_stops_sampling_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    core, queue = Core(monkeypatch), TransportQueue(channelz_id=0)

    def gone(_: TransportQueue) -> tuple[int, int]:
        raise ValueError("Failed to get the server")

    async def scenario() -> float:
        core.at(100.0, arrived=3)
        queue.start()
        monkeypatch.setattr(TransportQueue, "_counts", gone)
        with queue.handed_over():
            pass
        for _ in range(200):
            if queue._task is not None and queue._task.done():
                break
            await asyncio.sleep(INTERVAL_S / 2)
        await queue.stop()  # ends as a stopped task does, raising nothing
        core.now = 105.0
        with queue.handed_over() as waited_s:
            return waited_s

    assert asyncio.run(scenario()) == 0.0
    assert "grpc_queue_unknown" in capsys.readouterr().out


SLOW_CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
exporters:
  span_names: {path: "NAMES", block_s: 0.1}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [span_names]}
"""


def test_calls_that_waited_unseen_past_the_bound_are_refused(tmp_path: Path) -> None:
    """An exporter that holds the loop 0.1 s a batch: 100 calls sent at once wait in gRPC's
    transport, where the rules on what is in flight never see them (fewer are handled at
    once than the 32 always taken). Those handed over after more than MAX_QUEUED_S are
    refused at once, saying so; every call taken is written."""
    env = install_plugin(tmp_path / "site")
    names = tmp_path / "names.txt"
    body = trace_request(spans=2, name="queued").SerializeToString()

    async def burst(endpoint: str) -> list[str]:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            export = channel.unary_unary(TRACE_EXPORT)

            async def call() -> str:
                try:
                    await export(body, timeout=60)
                    return "OK"
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    return error.details() or ""

            return await asyncio.gather(*(call() for _ in range(100)))

    config = SLOW_CONFIG.replace("NAMES", str(names))
    with Sidecar(tmp_path, config, env) as sidecar:
        answers = asyncio.run(burst(sidecar.endpoints["otlp_grpc"]))
    taken = answers.count("OK")
    assert 0 < taken < 100 * MAX_QUEUED_S, answers
    assert "sidecar overloaded (queued), retry" in answers
    deadline = time.monotonic() + 10
    while len(names.read_text().splitlines()) < 2 * taken and time.monotonic() < deadline:
        time.sleep(0.05)
    assert names.read_text().splitlines() == ["queued"] * 2 * taken


WATCHED_CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}
exporters:
  span_names: {path: "NAMES"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [span_names]}
"""


def test_a_health_watch_held_open_does_not_make_calls_look_queued(tmp_path: Path) -> None:
    """A Watch stream is a call gRPC counts as arrived and not yet finished for as long as it
    is open; calls sent one at a time, further apart than the bound, are still taken."""
    env = install_plugin(tmp_path / "site")
    body = trace_request(spans=1, name="watched").SerializeToString()

    async def watched(endpoint: str) -> list[str]:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            export, answers = channel.unary_unary(TRACE_EXPORT), []
            for _ in range(4):
                await asyncio.sleep(MAX_QUEUED_S + 0.2)
                try:
                    await export(body, timeout=10)
                    answers.append("OK")
                except grpc.aio.AioRpcError as error:
                    answers.append(error.details() or "")
            watch.cancel()
            return answers

    config = WATCHED_CONFIG.replace("NAMES", str(tmp_path / "names.txt"))
    with Sidecar(tmp_path, config, env) as sidecar:
        assert asyncio.run(watched(sidecar.endpoints["otlp_grpc"])) == ["OK"] * 4
