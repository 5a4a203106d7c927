"""Overload: refusing at once what could only be acknowledged late.

Every receiver, the pipelines and their exporters share one asyncio loop. When requests arrive
faster than it can handle them, each waits longer for its answer, and an acknowledgement that
comes after the client gave up (the SDK's deadline is 10 s) turns into a resend: more work,
later answers. Three measures keep answers within a second; while any says no, receivers
refuse new requests at once (HTTP 503 + Retry-After, gRPC UNAVAILABLE), before reading or
parsing them, which costs microseconds:

- **the wait before the sidecar saw a call**: grpc.aio hands calls over one at a time, a few
  loop turns each, so calls sent faster than that wait in gRPC's transport, unseen
  (:mod:`collector.receivers.grpc_queue` tells how long each did). One that waited more than
  :data:`MAX_QUEUED_S` is refused (reason ``queued``): refusing is what hands the rest over
  quickly;
- **requests in flight**: by Little's law a new request waits about ``in flight / rate``, the
  rate being requests finished per second lately (an average over ~1 s). More in flight than
  ``MAX_WAIT_S x rate`` (at least :data:`MIN_IN_FLIGHT`, so that an idle sidecar takes a
  burst) is refused (reason ``overloaded``);
- **the loop's lag**: a task asks to wake every :data:`INTERVAL_S`; how long ago its wake-up
  fell due without it running is how far behind the loop is now, whatever is in flight (a
  handler that runs long without awaiting). More than :data:`MAX_LAG_S` is refused (reason
  ``loop_lag``). Measured at the moment of asking, never a stale figure: a loop that was
  blocked once and has caught up takes requests at once.

Requests are handled one at a time (:meth:`Overload.handling`), each step of one (parse,
checks, pipelines) a loop turn of its own, so that between steps the loop hands calls over.
With 512-span gRPC calls kept in flight on one channel, from 8 to 512 at once, answers came
within 0.1-0.95 s; without the first measure 128 took up to 1.2 s and 512 up to 3.1 s, with
4 refused in 8 s: the calls waited where no refusal reached them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from prometheus_client import Gauge

from collector.component import Refused
from collector.telemetry import REGISTRY

MAX_QUEUED_S = 0.3  # a call's wait unseen, then
MAX_WAIT_S = 0.4  # its wait for its turn: 0.3 s of the second is left to handle and answer it
MIN_IN_FLIGHT = 32
INTERVAL_S = 0.05
MAX_LAG_S = 0.25
RETRY_AFTER_S = 1.0
_RATE_WINDOW_S = 1.0  # the rate is a moving average over about this long

_LAG = Gauge(
    "otelsidecar_event_loop_lag_seconds",
    "How late the event loop last ran a timer: the wait before a new request is handled.",
    registry=REGISTRY,
)
_IN_FLIGHT = Gauge(
    "otelsidecar_requests_in_flight",
    "Requests the receivers are reading or handling.",
    registry=REGISTRY,
)


class Overload:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0  # when the watching task should next run (loop time)
        self._task: asyncio.Task[None] | None = None
        self.in_flight = 0
        self._finished = 0  # since the watch last ran
        self.rate = 0.0  # requests finished per second, smoothed
        self._turn: asyncio.Lock | None = None  # the loop's, while watching

    def lag_s(self) -> float:
        """How long the watching task has been due without running: 0 when not watching."""
        return max(0.0, self._loop.time() - self._due) if self._loop is not None else 0.0

    def check(self, waited_s: float = 0.0) -> None:
        """Raises Refused while a new request could not be answered in time: one that waited
        ``waited_s`` before the transport handed it over, or that would wait beyond
        MAX_WAIT_S for its turn."""
        if self._loop is None:
            return  # not watching (a test's in-process pipeline)
        if self.lag_s() > MAX_LAG_S:
            raise Refused("loop_lag", RETRY_AFTER_S)
        if waited_s > MAX_QUEUED_S:
            raise Refused("queued", RETRY_AFTER_S)
        if self.in_flight >= max(MIN_IN_FLIGHT, MAX_WAIT_S * self.rate):
            raise Refused("overloaded", RETRY_AFTER_S)

    @contextlib.asynccontextmanager
    async def handling(self) -> AsyncIterator[None]:
        """Around a request's parsing and its way into the pipelines, once read: counted in
        flight while it waits for its turn and while it has it; one request has the turn at a
        time (when watching; a test's in-process pipeline just counts)."""
        with self.in_flight_while():
            if self._turn is None:
                yield
            else:
                async with self._turn:
                    yield

    @contextlib.contextmanager
    def in_flight_while(self) -> Iterator[None]:
        """Counts a request in flight while the pipelines take it (its body or message already
        read: a client sending slowly holds a connection, not a place)."""
        self.in_flight += 1
        _IN_FLIGHT.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._finished += 1
            _IN_FLIGHT.set(self.in_flight)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._turn = asyncio.Lock()
        self._due = self._loop.time() + INTERVAL_S
        self._task = self._loop.create_task(self._watch(), name="overload-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = self._loop = self._turn = None

    async def _watch(self) -> None:
        assert self._loop is not None
        while True:
            _LAG.set(self.lag_s())  # how late this run came
            elapsed = self._loop.time() - self._due + INTERVAL_S
            if elapsed > 0:
                rate = self._finished / elapsed
                self.rate += (rate - self.rate) * min(1.0, elapsed / _RATE_WINDOW_S)
            self._finished = 0
            self._due = self._loop.time() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)


OVERLOAD = Overload()
