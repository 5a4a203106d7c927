"""The ``batch`` processor: gathers small batches into larger ones for the exporters.

A batch is sent on when it holds ``send_batch_size`` items or when ``timeout`` has passed since
its first item arrived. A request that alone fills a batch passes straight through, uncopied.
Sending awaits the next consumer, so a slow exporter slows the receivers (backpressure) rather
than letting batches pile up here; exporters with full queues refuse at the pipeline's door
(:class:`~collector.pipeline.Door`), before a request's items join a pending batch.

When an exporter of its pipeline is durable (its sending queue on disk), a request is answered
only once the batch holding its items was handed to the exporters: what the client was told
was accepted survives a kill. Then there is no timer: a batch is sent at once, and requests
that arrive while one is being sent gather into the next (a group commit), so batching costs
no latency and a sequential client is not held ``timeout`` per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from collector.component import Consumer, Exporter, Kind, Processor, Refused
from collector.memory import HELD
from collector.settings import Duration, setting
from collector.signals import Batch, Signal, item_count

# A group's send: done with None, or with what failed it (see _settle).
Outcome = asyncio.Future[BaseException | None]


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
        self._waits = False  # requests wait for their batch's send (a durable exporter)
        self._sent: Outcome | None = None  # the pending batch's send, when waiting
        self._sender: asyncio.Task[None] | None = None  # sends while something is pending

    def joined(self, chain: Sequence[object], exporters: Sequence[Exporter]) -> None:
        self._waits = any(exporter.durable for exporter in exporters)

    async def consume(self, batch: Batch) -> None:
        count = item_count(batch)
        if self._pending is None and count >= self._settings.send_batch_size:
            await self._next.consume(batch)
            return
        if self._waits:
            await self._join_next_send(batch, count)
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

    async def _join_next_send(self, batch: Batch, count: int) -> None:
        """Add the items to the pending batch and return once it was sent (raise what its send
        raised). One sender at a time: what arrives meanwhile is sent right after, together,
        up to ``send_batch_size``; beyond, a request waits to join the group after."""
        while self._pending is not None and self._pending_items >= self._settings.send_batch_size:
            # That group's outcome is its requests' own.
            await asyncio.shield(self._sent)  # type: ignore[arg-type]
        if self._pending is None:
            self._pending = self.signal.request_type()
            self._sent = asyncio.get_running_loop().create_future()
        sent = self._sent
        assert sent is not None
        self._pending.MergeFrom(batch)
        self._pending_items += count
        size = batch.ByteSize()
        self._pending_bytes += size
        HELD.hold(size)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_while_pending())
        failure = await asyncio.shield(sent)  # a client that goes away leaves the others alone
        if failure is not None:
            raise _again(failure)

    async def _send_while_pending(self) -> None:
        sent: Outcome | None = None
        try:
            while self._pending is not None:
                sent, self._sent = self._sent, None
                try:
                    await self._send()
                except Exception as error:  # a refusal, or a bug downstream: none answered yet
                    _settle(sent, error)
                    continue
                _settle(sent, None)
        except asyncio.CancelledError:  # the grace period ended: what waits is refused
            _settle(sent, Refused("shutdown"))
            _settle(self._sent, Refused("shutdown"))
            HELD.release(self._pending_bytes)
            self._pending, self._sent, self._pending_items, self._pending_bytes = None, None, 0, 0
            raise

    async def shutdown(self) -> None:
        """Send what is pending and wait for sends started by the timer (or the sender)."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
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


def _settle(sent: Outcome | None, error: BaseException | None) -> None:
    """Tell a group's waiting requests how its send went: what failed is the future's result,
    without its traceback, not an exception the future raises. Raised from the future, one
    exception would be shared by every waiting request, and its traceback would hold each of
    their frames (and batches) in a reference cycle until the garbage collector ran."""
    if sent is not None and not sent.done():
        sent.set_result(None if error is None else error.with_traceback(None))


def _again(failure: BaseException) -> BaseException:
    """What one waiting request raises for its group's failure: a refusal of its own."""
    if isinstance(failure, Refused):
        return Refused(failure.reason, failure.retry_after_s)
    return failure  # a bug downstream: rare, and its type and message are what matter


KIND = Kind(BatchSettings, BatchProcessor)  # registered as an entry point (pyproject.toml)
