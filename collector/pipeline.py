"""Builds the running sidecar from a Config: receivers → processors → fan-out to exporters.

Start order is downstream first (exporters, processors, receivers) so nothing is accepted
before there is somewhere to put it; shutdown is upstream first, so what receivers accepted
drains through processors into exporters that are still running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector import components
from collector.component import (
    Component,
    Consumer,
    Entrance,
    Exporter,
    Extension,
    PipelineProcessor,
    Readiness,
    Receiver,
    Refused,
    SeesPipeline,
    ServesHealth,
)
from collector.config import Config
from collector.sampling import without_errors_only
from collector.settings import ConfigError
from collector.signals import Batch, Signal, item_count, signal_of
from collector.telemetry import DROPPED, log


class FanOut:
    """Hands one batch to every exporter of a pipeline; one failing never stops the others.

    Unsampled error spans (see :mod:`collector.sampling`) go only to exporters that declare
    ``accepts_unsampled_errors``; the others get the batch without them.
    """

    def __init__(self, exporters: Sequence[Exporter]) -> None:
        self._exporters = list(exporters)
        self._error_paths = [e.accepts_unsampled_errors for e in exporters]

    async def consume(self, batch: Batch) -> None:
        sampled: Batch | None = batch
        if isinstance(batch, ExportTraceServiceRequest) and not all(self._error_paths):
            sampled = without_errors_only(batch)
        deliveries = [
            self._deliver(exporter, batch if error_path else sampled)
            for exporter, error_path in zip(self._exporters, self._error_paths, strict=True)
            if error_path or sampled is not None
        ]
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        refusals = [r for r in results if isinstance(r, Refused)]
        if refusals:
            try:
                raise refusals[0]  # after every other exporter had the batch
            finally:  # else this frame, and the batch, sit in a cycle with the refusal
                del results, refusals

    async def _deliver(self, exporter: Exporter, batch: Batch) -> None:
        try:
            await exporter.consume(batch)
        except Refused:
            raise  # a full persistent queue: the client is asked to send again
        except Exception as error:
            signal = signal_of(batch).value
            DROPPED.labels(exporter.name, signal, "export_failed").inc(item_count(batch))
            # The type only: an exception text may carry an endpoint or a credential.
            log.error(
                "export_failed", exporter=exporter.name, signal=signal, error=type(error).__name__
            )


class Door:
    """A pipeline's entrance: before any of its processors takes a batch, every exporter says
    whether it has room (``admit`` raises Refused, answered 503 / UNAVAILABLE). Past this
    point nothing is refused for want of queue room, so a batch that a processor (``batch``)
    holds after its request was answered cannot be refused later and lost."""

    def __init__(self, head: Consumer, exporters: Sequence[Exporter]) -> None:
        self._head = head
        self._exporters = list(exporters)

    def admit(self) -> None:
        for exporter in self._exporters:
            exporter.admit()

    async def consume(self, batch: Batch) -> None:
        self.admit()
        await self.enter(batch)

    async def enter(self, batch: Batch) -> None:
        """Hand a batch to the first processor, its admission already asked for."""
        await self._head.consume(batch)


class Tee:
    """Feeds one receiver's batches to several pipelines of a signal, each its own copy
    (processors change batches in place). Every pipeline's exporters are asked for room before
    any pipeline takes the batch, so that a full queue in one cannot make the client send
    again what another already took. (A memory_limiter inside a later pipeline can still
    refuse after an earlier one took it; the receivers' admission, asked first, makes that
    rare.)"""

    def __init__(self, doors: Sequence[Door]) -> None:
        self._doors = list(doors)

    def admit(self) -> None:
        for door in self._doors:
            door.admit()

    async def consume(self, batch: Batch) -> None:
        self.admit()
        *others, last = self._doors
        for door in others:
            copy = type(batch)()
            copy.CopyFrom(batch)
            await door.enter(copy)
        await last.enter(batch)


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        pipelines = config.pipelines()
        used = {
            role: {i for _, p in pipelines.values() for i in getattr(p, role)}
            for role in ("receivers", "exporters")
        }
        self.exporters = {
            eid: _exporter(eid, config.exporters[eid]) for eid in sorted(used["exporters"])
        }
        self.processors: list[PipelineProcessor] = []  # in pipeline order, upstream first
        heads: dict[str, tuple[Signal, Door]] = {}
        for name, (signal, pipeline) in pipelines.items():
            head: Consumer = FanOut([self.exporters[eid] for eid in pipeline.exporters])
            chain: list[PipelineProcessor] = []
            for pid in reversed(pipeline.processors):
                head = _make("processors", pid, config.processors[pid], signal, head)
                chain.insert(0, head)
            for processor in chain:
                if isinstance(processor, SeesPipeline):
                    processor.joined(chain, [self.exporters[e] for e in pipeline.exporters])
            self.processors.extend(chain)
            heads[name] = (signal, Door(head, [self.exporters[e] for e in pipeline.exporters]))
        self.receivers: dict[str, Receiver] = {}
        for rid in sorted(used["receivers"]):
            consumers: dict[Signal, Entrance] = {}
            for signal in Signal:
                feeds = [
                    head
                    for name, (sig, head) in heads.items()
                    if sig is signal and rid in pipelines[name][1].receivers
                ]
                if feeds:
                    consumers[signal] = feeds[0] if len(feeds) == 1 else Tee(feeds)
            self.receivers[rid] = _make("receivers", rid, config.receivers[rid], consumers)
        self.extensions: dict[str, Extension] = {
            eid: _make("extensions", eid, settings, self.component_status)
            for eid, settings in config.extensions.items()
        }

    def endpoints(self) -> dict[str, str]:
        """Every address listened on: receivers' transports and extensions."""
        listening = {t: a for r in self.receivers.values() for t, a in r.endpoints.items()}
        listening.update(
            (eid, e.address) for eid, e in self.extensions.items() if e.address is not None
        )
        return listening

    def component_status(self) -> dict[str, dict[str, str]]:
        """The sidecar's own parts for /health: receivers listening, exporters' states. An
        exporter named like a receiver's transport (``otlp_http`` both) is ``exporter/<id>``:
        one entry per component."""
        status = {
            transport: {"status": "healthy", "message": f"listening on {address}"}
            for receiver in self.receivers.values()
            for transport, address in receiver.endpoints.items()
        }
        for eid, exporter in self.exporters.items():
            state, message = exporter.status()
            status[f"exporter/{eid}" if eid in status else eid] = {
                "status": state, "message": message,
            }  # fmt: skip
        return status

    async def start(self) -> None:
        started: list[Component | Receiver] = []
        try:
            for component in [
                *self.extensions.values(),
                *self.exporters.values(),
                *reversed(self.processors),
                *self.receivers.values(),
            ]:
                await component.start()
                started.append(component)
        except BaseException:
            for component in reversed(started):
                await component.shutdown()
            raise
        await self._set_ready(True)

    async def _set_ready(self, ready: bool) -> None:
        for extension in self.extensions.values():
            if isinstance(extension, Readiness):
                extension.ready = ready
        for receiver in self.receivers.values():
            if isinstance(receiver, ServesHealth):
                await receiver.set_ready(ready)

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, then flush processors and exporters, within ``grace_s`` overall."""
        deadline = time.monotonic() + grace_s
        await self._set_ready(False)  # the pod stops getting traffic first
        # Those listening first: a receiver that makes data of its own (key_metrics' last
        # snapshot) then sees everything the others let in.
        for receiver in sorted(self.receivers.values(), key=lambda r: not r.endpoints):
            await _within(receiver.shutdown(grace_s=min(5.0, grace_s / 4)), deadline, receiver)
        for processor in self.processors:  # in order: each flushes into the next
            await _within(processor.shutdown(), deadline, processor)
        # Exporters drain side by side, so one slow destination cannot starve the others.
        await asyncio.gather(
            *(
                _within(exporter.shutdown(), deadline, exporter)
                for exporter in self.exporters.values()
            )
        )
        for extension in self.extensions.values():  # probes answer until the very end
            await _within(extension.shutdown(), deadline + 1.0, extension)


def _make(section: str, component_id: str, settings: Any, *wiring: Any) -> Any:
    kind = components.sections()[section][components.type_of(component_id)]
    return kind.factory(component_id, settings, *wiring)


def _exporter(component_id: str, settings: Any) -> Exporter:
    exporter = _make("exporters", component_id, settings)
    if not isinstance(exporter, Exporter):  # a third party's, missing a member
        raise ConfigError(
            f"exporters.{component_id}: {type(exporter).__name__} is not an exporter (it needs "
            "name, start, shutdown, consume, admit, status, accepts_unsampled_errors, durable)"
        )
    return exporter


async def _within(
    shutdown: Awaitable[None], deadline: float, component: Component | Receiver
) -> None:
    """Run a shutdown until the deadline, then cancel it. It always starts first, so even with
    no time left its cleanup (counting what it drops) runs."""
    task = asyncio.ensure_future(shutdown)
    await asyncio.sleep(0)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    if not done:
        log.error("shutdown_timeout", component=component.name)
        task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    if isinstance(results[0], Exception):
        log.error("shutdown_failed", component=component.name, error=type(results[0]).__name__)
