"""The ``batch`` processor: gathers small batches into larger ones for the exporters.

A batch is sent on when it holds ``send_batch_size`` items or when ``timeout`` has passed since
its first item arrived. A request that alone fills a batch passes straight through, uncopied.
Sending awaits the next consumer, so a slow exporter slows the receivers (backpressure) rather
than letting batches pile up here; exporters with full queues refuse at the pipeline's door
(:class:`~collector.pipeline.Door`), before a request's items join a pending batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from collector.component import Consumer, Kind, Processor, Refused
from collector.memory import HELD
from collector.settings import Duration, setting
from collector.signals import Batch, Signal, item_count


@dataclass(frozen=True)
class BatchSettings:
    timeout: Duration = setting(Duration(0.2), minimum=0.001, maximum=60)
    send_batch_size: int = setting(512, minimum=1, maximum=100_000)


class BatchProcessor(Processor):
    def __init__(self, name: str, settings: BatchSettings, signal: Signal, next: Consumer) -> None:
        super().__init__(name, signal, next)
        self._settings = settings
        self._pending: Batch | None = None
        self._pending_items = 0
        self._pending_bytes = 0  # held in collector.memory until sent
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()

    async def consume(self, batch: Batch) -> None:
        count = item_count(batch)
        if self._pending is None and count >= self._settings.send_batch_size:
            await self._next.consume(batch)
            return
        if self._pending is None:
            self._pending = self.signal.request_type()
            self._timer = asyncio.get_running_loop().call_later(
                self._settings.timeout, self._send_on_timeout
            )
        self._pending.MergeFrom(batch)  # appends the resource lists
        self._pending_items += count
        size = batch.ByteSize()
        self._pending_bytes += size
        HELD.hold(size)
        if self._pending_items >= self._settings.send_batch_size:
            answered = self._pending_items - count  # other requests' items, answered already
            try:
                await self._send()
            except Refused as refusal:  # this request is refused and sent again; not those
                self.drops(refusal.reason).inc(answered)
                raise

    async def shutdown(self) -> None:
        """Send what is pending and wait for sends started by the timer."""
        await self._send_answered(self._pending_items)
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def _send(self) -> None:
        batch, self._pending, self._pending_items = self._pending, None, 0
        size, self._pending_bytes = self._pending_bytes, 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if batch is None:
            return
        try:
            await self._next.consume(batch)
        finally:
            HELD.release(size)

    def _send_on_timeout(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._send_answered(self._pending_items))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_answered(self, items: int) -> None:
        """Send what requests already answered left pending (on the timer, at shutdown): a
        refusal now (storage failing; room is checked at the pipeline's door) has nobody to
        ask to resend, so it is counted."""
        try:
            await self._send()
        except Refused as refusal:
            self.drops(refusal.reason).inc(items)


KIND = Kind(BatchSettings, BatchProcessor)  # registered as an entry point (pyproject.toml)
