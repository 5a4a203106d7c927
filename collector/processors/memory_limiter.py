"""The ``memory_limiter`` processor: admission control, first in a pipeline.

When the bytes held in flight (:mod:`collector.memory`: requests being processed, batches
waiting in processors and exporter queues) are above ``limit_mib -
spike_limit_mib``, new batches are refused with :class:`Refused`, which receivers answer with
HTTP 503 + Retry-After or gRPC UNAVAILABLE: both make the OpenTelemetry SDK exporters retry
later, so the data waits in the app instead of piling up here. Below the mark, data is
accepted again. The spike margin leaves room for requests already being read.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.component import Consumer, Refused
from collector.memory import HELD, MIB
from collector.settings import ConfigError, Duration, setting
from collector.signals import Batch, Signal


@dataclass(frozen=True)
class MemoryLimiterSettings:
    limit_mib: int = setting(256, minimum=1, maximum=1 << 20)
    spike_limit_mib: int | None = None  # default: a fifth of limit_mib, as in the collector
    retry_after: Duration = setting(Duration(1), minimum=0, maximum=3600)

    def check(self, path: str) -> None:
        if self.spike_limit_mib is not None and not 0 <= self.spike_limit_mib < self.limit_mib:
            raise ConfigError(
                f"{path}.spike_limit_mib: must be at least 0 and below limit_mib "
                f"({self.limit_mib}), got {self.spike_limit_mib}"
            )

    @property
    def refuse_above_bytes(self) -> int:
        spike = self.spike_limit_mib if self.spike_limit_mib is not None else self.limit_mib // 5
        return (self.limit_mib - spike) * MIB


class MemoryLimiter:
    def __init__(
        self, name: str, settings: MemoryLimiterSettings, signal: Signal, next: Consumer
    ) -> None:
        self.name = name
        self._mark = settings.refuse_above_bytes
        self._retry_after_s = settings.retry_after
        self._next = next

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def consume(self, batch: Batch) -> None:
        if HELD.before_request() > self._mark:
            # Counted by the receiver that answers the retryable refusal (reason memory_limit).
            raise Refused("memory_limit", self._retry_after_s)
        await self._next.consume(batch)
