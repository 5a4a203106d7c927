"""Retry and queue settings every exporter takes, with the OpenTelemetry Collector's meanings,
and the backoff they describe.

Errors tell :func:`send_with_retry` what to do (as the collector's consumererror):
:class:`Permanent` is never retried, :class:`Throttled` waits what the server asked,
:class:`Retryable` backs off exponentially with jitter until ``max_elapsed_time``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import TypeVar

from collector.settings import Duration, setting


@dataclass(frozen=True)
class RetrySettings:
    enabled: bool = True
    initial_interval: Duration = setting(Duration(5), minimum=0.001, maximum=3600)
    max_interval: Duration = setting(Duration(30), minimum=0.001, maximum=3600)
    max_elapsed_time: Duration = setting(Duration(300), minimum=0, maximum=86400)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Waits before each retry: doubling from ``initial_interval`` up to ``max_interval``,
        ±50 % jitter, until their sum would pass ``max_elapsed_time``."""
        if not self.enabled:
            return
        rng = rng or random.Random()
        interval, elapsed = float(self.initial_interval), 0.0
        while True:
            delay = interval * rng.uniform(0.5, 1.5)
            if elapsed + delay > self.max_elapsed_time:
                return
            elapsed += delay
            yield delay
            interval = min(interval * 2, float(self.max_interval))


@dataclass(frozen=True)
class QueueSettings:
    queue_size: int = setting(1000, minimum=1, maximum=1_000_000)
    num_consumers: int = setting(4, minimum=1, maximum=64)
    # "memory", or the id of a file_storage extension: the queue is kept on disk.
    storage: str = "memory"
    max_size_mib: int = setting(256, minimum=1, maximum=1_000_000)  # on disk, with storage
    # What does not fit: "refuse" (receivers answer 503 / UNAVAILABLE, the client retries:
    # backpressure) or "drop" (counted), an explicit choice.
    when_full: str = setting("refuse", choices=("refuse", "drop"))
    directory: str = ""  # the storage extension's, filled in when the config is loaded

    @property
    def refuses(self) -> bool:
        return self.when_full == "refuse"


# A destination full for this long is taken for down: its share is dropped and counted so that
# the pipeline's other exporters keep getting data (the app's SDK would drop it anyway once its
# own retries ran out).
REFUSE_FOR_S = 60.0


class WhenFull:
    """What a full sending queue does. With ``when_full: refuse`` the pipeline's door refuses
    new batches (:meth:`door_closed`) while everything already let in is still queued
    (:meth:`keeps`), past ``queue_size`` if need be; after :data:`REFUSE_FOR_S` full, and always
    with ``when_full: drop``, what does not fit is dropped and counted."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self._full_since: float | None = None

    def door_closed(self, room: int) -> bool:
        if not self.refuse or room > 0:
            self._full_since = None
            return False
        if self._full_since is None:
            self._full_since = time.monotonic()
        return not self._given_up()

    def keeps(self) -> bool:
        """Whether an item that finds the queue full is queued all the same."""
        return self.refuse and not self._given_up()

    def _given_up(self) -> bool:
        since = self._full_since
        return since is not None and time.monotonic() - since >= REFUSE_FOR_S


class Permanent(Exception):
    """The destination refused the data for good (4xx): drop, count, do not retry."""


class Retryable(Exception):
    """Worth another try: a network error, 5xx, UNAVAILABLE..."""


class Throttled(Retryable):
    """The destination asked to wait ``retry_after_s`` (429, RetryInfo)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"throttled for {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


def retry_after_s(value: str | None, most: float) -> float | None:
    """Seconds from a ``Retry-After`` header (or one ``X-Sentry-Rate-Limits`` entry), at
    most ``most``; None when absent or not a number (HTTP dates are not honoured)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    if seconds is None or seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), most)


T = TypeVar("T")


async def send_with_retry(send: Callable[[], Awaitable[T]], settings: RetrySettings) -> T:
    """``send()``'s result, trying again on :class:`Retryable` until the budget is spent (then
    the last error is raised); :class:`Permanent` is raised at once. A server's wait counts
    against ``max_elapsed_time`` like the backoff's."""
    budget_ends = time.monotonic() + settings.max_elapsed_time
    asked = 0.0
    last: Retryable | None = None
    for delay in chain([0.0], settings.delays()):
        wait = max(delay, asked)
        if wait and time.monotonic() + wait > budget_ends:
            break
        await asyncio.sleep(wait)
        try:
            return await send()
        except Throttled as error:
            asked, last = error.retry_after_s, error
        except Retryable as error:
            asked, last = 0.0, error
    assert last is not None  # the first try always runs
    try:
        raise last
    finally:  # else this frame and the error, with what was sent, would sit in a cycle
        del last
