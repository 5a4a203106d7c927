"""How late the event loop runs, and the refusal that keeps acknowledgements prompt.

Every receiver, the health server and the pipelines share one asyncio loop. When requests
arrive faster than it can parse them, each one waits longer before its handler runs, and an
acknowledgement that comes after the client gave up (the SDK's deadline is 10 s) turns into a
resend: more work, later answers. So a task asks to wake every :data:`INTERVAL_S`; how long
ago its wake-up fell due without it running is how far behind the loop is now. While that is
more than :data:`MAX_LAG_S`, receivers refuse new requests at once (HTTP 503 + Retry-After,
gRPC UNAVAILABLE), before reading or parsing them. A refusal costs microseconds, the backlog
clears, the task runs and requests are taken again. Measured at the moment of asking, never
a stale figure: a loop that was blocked once and has caught up takes requests at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Gauge

from collector.component import Refused
from collector.telemetry import REGISTRY

INTERVAL_S = 0.05
MAX_LAG_S = 0.25
RETRY_AFTER_S = 1.0

_GAUGE = Gauge(
    "otelsidecar_event_loop_lag_seconds",
    "How late the event loop last ran a timer: the wait before a new request is handled.",
    registry=REGISTRY,
)


class LoopLag:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0  # when the watching task should next run (loop time)
        self._task: asyncio.Task[None] | None = None

    def lag_s(self) -> float:
        """How long the watching task has been due without running: 0 when not watching."""
        return max(0.0, self._loop.time() - self._due) if self._loop is not None else 0.0

    def check(self) -> None:
        """Raises Refused("loop_lag") while the loop is more than MAX_LAG_S behind."""
        if self.lag_s() > MAX_LAG_S:
            raise Refused("loop_lag", RETRY_AFTER_S)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + INTERVAL_S
        self._task = self._loop.create_task(self._watch(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = self._loop = None

    async def _watch(self) -> None:
        assert self._loop is not None
        while True:
            _GAUGE.set(self.lag_s())  # how late this run came
            self._due = self._loop.time() + INTERVAL_S
            await asyncio.sleep(INTERVAL_S)


LOOP_LAG = LoopLag()
