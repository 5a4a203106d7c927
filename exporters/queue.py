"""The sending queue exporters share: bounded, drained by a few workers, its bytes counted.

``submit`` never waits. What a full queue does is :class:`~exporters.retry.WhenFull`'s say:
with ``when_full: refuse`` the refusal comes at the pipeline's door (:meth:`admit` raises
:class:`Refused`: receivers answer 503 / UNAVAILABLE before anything takes the batch), and what
was let in is queued, if need be past ``queue_size`` by what the pipeline held when the door
closed, so that data the sidecar acknowledged is not dropped for want of room (the memory
limiter bounds it all); a destination full for a minute is taken for down, and then, as with
``when_full: drop``, what does not fit is dropped and counted. A slow destination never makes
the sidecar grow without bound. While queued, an item's size is held in
:mod:`collector.memory`, which the memory limiter watches. With a storage extension the queue
is kept on disk instead (:mod:`exporters.storage`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.component import Refused
from collector.memory import HELD, MIB
from collector.telemetry import REGISTRY, log
from exporters.retry import QueueSettings, WhenFull
from exporters.storage import Codec, PersistentQueue

T = TypeVar("T")


def sending_queue(
    name: str,
    settings: QueueSettings,
    deliver: Callable[[T], Awaitable[None]],
    size_of: Callable[[T], int],
    on_drop: Callable[[T, str], None],
    codec: Codec[T],
) -> SendingQueue[T] | PersistentQueue[T]:
    """The queue ``settings`` ask for: in memory, or on disk with a storage extension."""
    queue: SendingQueue[T] | PersistentQueue[T]
    if settings.storage == "memory":
        queue = SendingQueue(name, settings, deliver, size_of, on_drop)
    else:
        limits = (settings.queue_size, settings.max_size_mib * MIB, settings.refuses)
        queue = PersistentQueue(name, Path(settings.directory), limits, deliver, on_drop, codec,
                                settings.num_consumers)  # fmt: skip
    _QUEUES.add(queue)
    return queue


_QUEUES: weakref.WeakSet[SendingQueue[object] | PersistentQueue[object]] = weakref.WeakSet()


class _Depths:
    """Each running queue's depth and capacity, read when /metrics is."""

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("otelsidecar_exporter_queue_size",
                                 "Batches waiting in an exporter's sending queue (memory or disk).",
                                 labels=["exporter"])  # fmt: skip
        capacity = GaugeMetricFamily("otelsidecar_exporter_queue_capacity",
                                     "An exporter's queue_size.", labels=["exporter"])  # fmt: skip
        for queue in [q for q in list(_QUEUES) if q.running]:  # (a reload's old ones are not)
            size.add_metric([queue.name], queue.depth())
            capacity.add_metric([queue.name], queue.capacity)
        yield size
        yield capacity


REGISTRY.register(_Depths())  # type: ignore[arg-type]


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
        self._queue: asyncio.Queue[T] = asyncio.Queue()  # bounded here, by queue_size
        self._capacity = settings.queue_size
        self._workers_wanted = settings.num_consumers
        self._when_full = WhenFull(settings.refuses)
        self._deliver = deliver
        self._size_of = size_of
        self._on_drop = on_drop
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"{self.name}-sender-{index}")
            for index in range(self._workers_wanted)
        ]

    def admit(self) -> None:
        """The pipeline's door: Refused("queue_full") while full and refusing."""
        if self._when_full.door_closed(self.room()):
            raise Refused("queue_full")

    def submit(self, item: T) -> None:
        """Queue ``item``, or drop it (counted) when full and not keeping what finds it so."""
        if self.room() == 0 and not self._when_full.keeps():
            self._on_drop(item, "queue_full")
            return
        self._queue.put_nowait(item)
        HELD.hold(self._size_of(item))

    def empty(self) -> bool:
        return self._queue.empty()

    @property
    def running(self) -> bool:
        return bool(self._workers)

    @property
    def capacity(self) -> int:
        return self._capacity

    def depth(self) -> int:
        return self._queue.qsize()

    def room(self) -> int:
        """Items that can be submitted now within ``queue_size``."""
        return max(0, self._capacity - self._queue.qsize())

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
