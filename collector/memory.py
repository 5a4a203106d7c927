"""The bytes of telemetry the sidecar holds in flight: what the memory limiter limits.

Every component that keeps a batch beyond one ``consume`` call (the batch processor's pending
batch, exporters' queues) holds its size here while it keeps it, and releases it after.
Receivers hold each request's cost (what :class:`Admission` judged it will take once parsed)
while the pipeline works on it, through :meth:`HeldBytes.request`, which also remembers it for
the request's own task so that the memory limiter can judge the level *before* that request
(:meth:`HeldBytes.before_request`). Admission lets a request in when what it will cost fits
under the mark beside what is held, or when nothing is held at all (one that could never fit
is refused as too costly), so everything is refused while a stalled exporter holds the mark.
The counter is process-wide: one sidecar, one process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from prometheus_client import Gauge

from collector.telemetry import REGISTRY

MIB = 1 << 20
# What a parsed request costs in memory per byte of its serialised form: 3.6 measured for
# realistic 512-span requests, 8 for one span of a million tiny attributes. Admission counts
# the worst case, before parsing, so that no request can cost more than it was allowed.
PARSED_FACTOR = 8

_GAUGE = Gauge(
    "otelsidecar_memory_held_bytes",
    "Bytes of requests and batches held in receivers, processors and exporter queues.",
    registry=REGISTRY,
)
_THIS_REQUEST: ContextVar[int] = ContextVar("this_request_bytes", default=0)


class HeldBytes:
    def __init__(self) -> None:
        self.value = 0

    def hold(self, size: int) -> None:
        self.value += size

    def release(self, size: int) -> None:
        self.value = max(0, self.value - size)

    @contextmanager
    def request(self, size: int) -> Iterator[None]:
        """Hold a request's bytes while its task hands the batch down the pipeline (what
        :class:`Admission` judged it will cost)."""
        token = _THIS_REQUEST.set(size)
        self.hold(size)
        try:
            yield
        finally:
            self.release(size)
            _THIS_REQUEST.reset(token)

    def before_request(self) -> int:
        """Bytes held by everything but the request the current task is handling."""
        return self.value - _THIS_REQUEST.get()


HELD = HeldBytes()
# Read when scraped: setting the gauge on every hold and release took a lock each time, several
# times a request (1.8 % of the sidecar's CPU on replayed app traffic).
_GAUGE.set_function(lambda: HELD.value)


class Limit(Protocol):
    mark: int  # bytes
    over: bool  # the resident memory is above the limit
    retry_after_s: float


class TooCostly(Exception):
    """A request that could never fit under a memory limit, however empty the sidecar."""


class Admission:
    """The memory limiters' say on a request before it is parsed: what it will cost
    (:data:`PARSED_FACTOR` times its inflated size) is held while its task handles it."""

    def __init__(self) -> None:
        self._limits: list[Limit] = []

    def register(self, limit: Limit) -> None:
        self._limits.append(limit)

    def unregister(self, limit: Limit) -> None:
        if limit in self._limits:
            self._limits.remove(limit)

    @staticmethod
    def cost(size: int) -> int:
        return size * PARSED_FACTOR

    def check(self, size: int) -> None:
        """Raises TooCostly or :class:`~collector.component.Refused` if a request of ``size``
        bytes would be refused now: asked before its body is even read."""
        self._check_cost(self.cost(size))

    def _check_cost(self, cost: int) -> None:
        from collector.component import Refused  # (component imports signals, not this)

        for limit in self._limits:
            if cost > limit.mark:
                raise TooCostly("request too large for the memory limit")
            # With nothing held, any request that could fit is let in: otherwise a resident
            # size the allocator keeps after a spike (freed, not returned) would refuse
            # everything for good. With something held, only one that fits beside it.
            if HELD.value and (limit.over or HELD.value + cost > limit.mark):
                raise Refused("memory_limit", limit.retry_after_s)

    @contextmanager
    def request(self, size: int) -> Iterator[None]:
        """Raises as :meth:`check`, else holds the request's cost while its task runs."""
        self.check(size)
        with HELD.request(self.cost(size)):
            yield

    @contextmanager
    def reading(self, most: int) -> Iterator[None]:
        """While a body whose size is not known yet (chunked, or gzip before inflating) is
        read: hold what it may grow to, ``most`` bytes as received (at most a mark), so that
        bodies read together count each other. Raises Refused as :meth:`check`."""
        hold = min([most, *(limit.mark for limit in self._limits)])
        self._check_cost(hold)
        with HELD.request(hold):
            yield


ADMISSION = Admission()

_RSS = Gauge(
    "otelsidecar_process_resident_bytes",
    "The sidecar's resident memory, as the memory limiter last read it.",
    registry=REGISTRY,
)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """The process's resident set size (Linux), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident = int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0
    _RSS.set(resident)
    return resident


def give_back() -> None:
    """Hand freed memory back to the OS (glibc keeps it otherwise, and the resident size
    would never fall back below the limiter's mark after a spike)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
