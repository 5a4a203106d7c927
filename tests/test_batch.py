"""The batch processor, called directly: size and timeout triggers, pass-through, flush."""

from __future__ import annotations

import asyncio

import pytest

from collector.component import Refused
from collector.memory import HELD
from collector.processors.batch import BatchProcessor, BatchSettings
from collector.settings import Duration
from collector.signals import Batch, Signal, item_count
from collector.telemetry import REGISTRY
from tests.test_receivers import trace_request


class Recorder:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


def processor(size: int = 10, timeout: float = 60) -> tuple[BatchProcessor, Recorder]:
    recorder = Recorder()
    settings = BatchSettings(timeout=Duration(timeout), send_batch_size=size)
    return BatchProcessor("batch", settings, Signal.TRACES, recorder), recorder


def test_sends_when_size_is_reached() -> None:
    async def scenario() -> None:
        batch, out = processor(size=10)
        for _ in range(4):
            await batch.consume(trace_request(spans=3))
        assert [item_count(b) for b in out.batches] == [12]

    asyncio.run(scenario())


def test_sends_after_timeout() -> None:
    async def scenario() -> None:
        batch, out = processor(size=1000, timeout=0.05)
        await batch.consume(trace_request(spans=2))
        await batch.consume(trace_request(spans=2))
        assert out.batches == []
        await asyncio.sleep(0.3)
        assert [item_count(b) for b in out.batches] == [4]

    asyncio.run(scenario())


def test_full_request_passes_through_uncopied() -> None:
    async def scenario() -> None:
        batch, out = processor(size=5)
        request = trace_request(spans=5)
        await batch.consume(request)
        assert out.batches == [request] and out.batches[0] is request

    asyncio.run(scenario())


def test_shutdown_flushes_pending() -> None:
    async def scenario() -> None:
        batch, out = processor(size=1000)
        await batch.consume(trace_request(spans=3))
        await batch.shutdown()
        assert [item_count(b) for b in out.batches] == [3]
        await batch.shutdown()  # idempotent
        assert len(out.batches) == 1

    asyncio.run(scenario())


class Refusing:
    """A next consumer that refuses (a persistent queue whose store cannot be written)."""

    async def consume(self, batch: Batch) -> None:
        raise Refused("storage_error")


def dropped(reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "otelsidecar_dropped_items_total",
            {"component": "batch", "signal": "traces", "reason": reason},
        )
        or 0.0
    )


def test_a_refusal_after_requests_were_answered_is_counted() -> None:
    async def scenario() -> None:
        settings = BatchSettings(timeout=Duration(0.05), send_batch_size=10)
        batch = BatchProcessor("batch", settings, Signal.TRACES, Refusing())
        before = dropped("storage_error")
        await batch.consume(trace_request(spans=4))  # answered: pending
        with pytest.raises(Refused):
            await batch.consume(trace_request(spans=6))  # fills the batch: refused, resent
        assert dropped("storage_error") - before == 4  # the first request's, answered
        await batch.consume(trace_request(spans=3))
        await asyncio.sleep(0.3)  # the timer's send is refused: nobody to ask again
        assert dropped("storage_error") - before == 7

    asyncio.run(scenario())


class Durable:
    durable = True


class Gate(Recorder):
    """Holds each send until the test opens it; refuses when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.refusal: Refused | None = None

    async def consume(self, batch: Batch) -> None:
        await self.open.wait()
        if self.refusal is not None:
            raise self.refusal
        await super().consume(batch)


def waiting_processor() -> tuple[BatchProcessor, Gate]:
    gate = Gate()
    batch = BatchProcessor("batch", BatchSettings(timeout=Duration(60), send_batch_size=1000),
                           Signal.TRACES, gate)  # fmt: skip
    batch.joined([batch], [Durable()])  # type: ignore[list-item]
    return batch, gate


def test_with_a_durable_exporter_a_request_returns_once_its_batch_was_sent() -> None:
    """No timer: the first request is sent at once; those arriving meanwhile go together in
    the next send (a group commit), and each returns only after the send holding it."""

    async def scenario() -> None:
        batch, gate = waiting_processor()
        first = asyncio.create_task(batch.consume(trace_request(spans=1)))
        await asyncio.sleep(0.01)
        others = [asyncio.create_task(batch.consume(trace_request(spans=n))) for n in (2, 3)]
        await asyncio.sleep(0.01)
        assert not any(t.done() for t in [first, *others])  # nothing answered before its send
        gate.open.set()
        await asyncio.gather(first, *others)
        assert [item_count(b) for b in gate.batches] == [1, 5]
        await batch.shutdown()

    asyncio.run(scenario())


def test_with_a_durable_exporter_a_refused_send_refuses_every_request_in_it() -> None:
    async def scenario() -> None:
        batch, gate = waiting_processor()
        gate.refusal = Refused("queue_full")
        before = dropped("queue_full")
        requests = [asyncio.create_task(batch.consume(trace_request(spans=2))) for _ in range(3)]
        await asyncio.sleep(0.01)
        gate.open.set()
        results = await asyncio.gather(*requests, return_exceptions=True)
        assert [type(r) for r in results] == [Refused] * 3
        assert dropped("queue_full") == before  # nobody was told it was accepted
        gate.refusal = None
        await batch.consume(trace_request(spans=4))  # and it goes on
        assert [item_count(b) for b in gate.batches] == [4]

    asyncio.run(scenario())


def test_held_bytes_come_back_when_batches_leave_whichever_way() -> None:
    """What a pending batch holds in collector.memory is released once it is sent: gathered
    to size, on the timer, or sent at once for a durable exporter."""

    async def scenario() -> None:
        start = HELD.value
        sized, _ = processor(size=6)
        for _ in range(3):
            await sized.consume(trace_request(spans=2))
        timed, _ = processor(size=1000, timeout=0.01)
        await timed.consume(trace_request(spans=2))
        await asyncio.sleep(0.1)
        waiting, gate = waiting_processor()
        gate.open.set()
        await asyncio.gather(*(waiting.consume(trace_request(spans=1)) for _ in range(4)))
        assert HELD.value == start

    asyncio.run(scenario())


def test_shutdown_waits_for_sends_in_flight() -> None:
    """A send started by the timer, or the durable mode's sender, finishes before shutdown
    returns: the exporters it feeds are shut down after."""

    async def scenario() -> None:
        for durable in (False, True):
            gate = Gate()
            batch = BatchProcessor("batch", BatchSettings(timeout=Duration(0.01)), Signal.TRACES,
                                   gate)  # fmt: skip
            if durable:
                batch.joined([batch], [Durable()])  # type: ignore[list-item]
            request = asyncio.create_task(batch.consume(trace_request(spans=3)))
            await asyncio.sleep(0.05)  # the send has started and waits at the gate
            stopping = asyncio.create_task(batch.shutdown())
            await asyncio.sleep(0.05)
            assert not stopping.done(), durable
            gate.open.set()
            await asyncio.gather(request, stopping)
            assert [item_count(b) for b in gate.batches] == [3], durable

    asyncio.run(scenario())


def test_waiting_groups_are_capped_errors_reach_their_requests_and_a_cancel_refuses() -> None:
    async def scenario() -> None:
        start = HELD.value
        batch, gate = waiting_processor()
        batch._settings = BatchSettings(timeout=Duration(60), send_batch_size=3)
        first = asyncio.create_task(batch.consume(trace_request(spans=1)))
        await asyncio.sleep(0.01)
        rest = [asyncio.create_task(batch.consume(trace_request(spans=1))) for _ in range(4)]
        await asyncio.sleep(0.01)
        gate.open.set()
        await asyncio.gather(first, *rest)
        assert [item_count(b) for b in gate.batches] == [1, 3, 1]  # no group past the size

        gate.refusal = RuntimeError("a bug downstream")  # type: ignore[assignment]
        with pytest.raises(RuntimeError):
            await batch.consume(trace_request(spans=1))
        gate.refusal = None
        await batch.consume(trace_request(spans=2))  # the sender goes on
        assert [item_count(b) for b in gate.batches][-1] == 2

        gate.open.clear()
        sending = asyncio.create_task(batch.consume(trace_request(spans=1)))
        await asyncio.sleep(0.01)  # its group is being sent; the next ones form the next group
        waiting = [asyncio.create_task(batch.consume(trace_request(spans=1))) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert batch._sender is not None and batch._pending_items == 2
        batch._sender.cancel()  # what the grace period's end does to a shutdown in progress
        gathered = asyncio.gather(sending, *waiting, return_exceptions=True)
        results = await asyncio.wait_for(gathered, 30)  # a request never answered: fail, not hang
        assert [r.reason for r in results if isinstance(r, Refused)] == ["shutdown"] * 3
        assert HELD.value == start
        assert (batch._pending, batch._pending_items, batch._pending_bytes) == (None, 0, 0)
        gate.open.set()
        await batch.consume(trace_request(spans=4))  # and it takes requests again
        assert item_count(gate.batches[-1]) == 4 and HELD.value == start

    asyncio.run(scenario())
