"""The sending queue exporters share: bounded, drained by a few workers, its bytes counted.

``submit`` never waits: an item that does not fit goes to the exporter's ``on_overflow`` (to be
counted and reported), so a slow destination can never make the sidecar grow. While queued,
an item's size is held in :mod:`collector.memory`, which the memory limiter watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from collector.memory import HELD
from collector.telemetry import log
from exporters.retry import QueueSettings

T = TypeVar("T")


class SendingQueue(Generic[T]):
    def __init__(
        self,
        name: str,
        settings: QueueSettings,
        deliver: Callable[[T], Awaitable[None]],
        size_of: Callable[[T], int],
        on_drop: Callable[[T, str], None],
    ) -> None:
        self.name = name
        self._queue: asyncio.Queue[T] = asyncio.Queue(settings.queue_size)
        self._workers_wanted = settings.num_consumers
        self._deliver = deliver
        self._size_of = size_of
        self._on_drop = on_drop
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"{self.name}-sender-{index}")
            for index in range(self._workers_wanted)
        ]

    def submit(self, item: T) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._on_drop(item, "queue_full")
            return
        HELD.hold(self._size_of(item))

    def empty(self) -> bool:
        return self._queue.empty()

    async def drain(self) -> None:
        """Returns when everything submitted so far was delivered or dropped."""
        await self._queue.join()

    async def stop(self) -> None:
        """Stop the workers; what is still queued is dropped (and counted) as undelivered."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            HELD.release(self._size_of(item))
            self._on_drop(item, "shutdown")

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._deliver(item)
            except asyncio.CancelledError:  # stopped mid-send: it did not arrive
                self._on_drop(item, "shutdown")
                raise
            except Exception as error:  # a bug must not kill the worker
                log.error("export_failed", exporter=self.name, error=type(error).__name__)
                self._on_drop(item, "internal_error")
            finally:
                HELD.release(self._size_of(item))
                self._queue.task_done()
