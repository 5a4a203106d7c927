"""The ``memory_limiter`` processor: admission control, first in a pipeline.

Two measures, either of which refuses new batches with :class:`Refused` (receivers answer
HTTP 503 + Retry-After or gRPC UNAVAILABLE: the OpenTelemetry SDK exporters retry later, so the
data waits in the app instead of piling up here):

- the bytes held in flight (:mod:`collector.memory`: requests being processed, as parsed,
  batches waiting in processors and exporter queues) above ``limit_mib - spike_limit_mib``;
- the process's actual resident memory, read every ``check_interval`` (as the Collector reads
  its heap), above the same mark over what the process held when it started (plus
  :data:`WORKING_SET_MIB` that the first requests make it grow by: buffers, caches, threads;
  8 MiB measured): this catches what no count sees (the Sentry trace buffer, allocator slack,
  a request's parse).

Below the mark, data is accepted again; memory freed after a spike is handed back to the OS
so that the resident size can fall. The spike margin leaves room for requests being read.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass

from collector.component import Consumer, Kind, Processor, Refused
from collector.memory import ADMISSION, HELD, MIB, give_back, resident_bytes
from collector.settings import ConfigError, Duration, setting
from collector.signals import Batch, Signal

WORKING_SET_MIB = 16


@dataclass(frozen=True)
class MemoryLimiterSettings:
    limit_mib: int = setting(256, minimum=1, maximum=1 << 20)
    spike_limit_mib: int | None = None  # default: a fifth of limit_mib, as in the collector
    retry_after: Duration = setting(Duration(1), minimum=0, maximum=3600)
    check_interval: Duration = setting(Duration(0.1), minimum=0.01, maximum=60)

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


class MemoryLimiter(Processor):
    def __init__(
        self, name: str, settings: MemoryLimiterSettings, signal: Signal, next: Consumer
    ) -> None:
        super().__init__(name, signal, next)
        self.mark = settings.refuse_above_bytes
        self.retry_after_s = float(settings.retry_after)
        self._interval = float(settings.check_interval)
        self._resident_mark = 0  # set at start, over the process's size then
        self.over = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        give_back()
        self._resident_mark = resident_bytes() + WORKING_SET_MIB * MIB + self.mark
        self._watch = asyncio.create_task(self._watch_resident(), name=f"{self.name}-watch")
        ADMISSION.register(self)

    async def shutdown(self) -> None:
        ADMISSION.unregister(self)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None

    async def _watch_resident(self) -> None:
        while True:
            over = resident_bytes() > self._resident_mark
            if over:
                gc.collect()  # cyclic garbage first: the sidecar collects it rarely (cli.tune_gc)
                give_back()
                over = resident_bytes() > self._resident_mark
            self.over = over
            await asyncio.sleep(self._interval)

    async def consume(self, batch: Batch) -> None:
        held = HELD.before_request()
        if held and (self.over or held > self.mark):
            # Counted by the receiver that answers the retryable refusal (reason memory_limit).
            raise Refused("memory_limit", self.retry_after_s)
        await self._next.consume(batch)


KIND = Kind(MemoryLimiterSettings, MemoryLimiter)  # registered as an entry point (pyproject.toml)
