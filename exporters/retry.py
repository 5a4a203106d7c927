"""Retry and queue settings every exporter takes, with the OpenTelemetry Collector's meanings,
and the backoff they describe.

Errors tell the retry layer what to do (as the collector's consumererror): :class:`Permanent`
is never retried, :class:`Throttled` waits what the server asked, anything else backs off
exponentially with jitter until ``max_elapsed_time``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

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
    storage: str = setting("memory", choices=("memory",))


class Permanent(Exception):
    """The destination refused the data for good (4xx): drop, count, do not retry."""


class Throttled(Exception):
    """The destination asked to wait ``retry_after_s`` (429)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"throttled for {retry_after_s:g} s")
        self.retry_after_s = retry_after_s
