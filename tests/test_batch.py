"""The batch processor, called directly: size and timeout triggers, pass-through, flush."""

from __future__ import annotations

import asyncio

from collector.processors.batch import BatchProcessor, BatchSettings
from collector.settings import Duration
from collector.signals import Batch, Signal, item_count
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
