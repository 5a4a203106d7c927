"""What every pipeline component promises; the pipeline relies on nothing else.

A *consumer* takes a batch and owns it from then on: processors may change it in place,
exporters must treat it as read-only (one batch fans out to several exporters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from prometheus_client import Counter

from collector.signals import Batch, Signal
from collector.telemetry import DROPPED

ALL = frozenset(Signal)
TRACES_AND_LOGS = frozenset({Signal.TRACES, Signal.LOGS})
TRACES = frozenset({Signal.TRACES})


@dataclass(frozen=True)
class Kind:
    """A component type, as registered under an entry point in the group
    ``otel_sidecar.<section>`` (see :mod:`collector.components`): its settings dataclass
    (built from the YAML and checked), the factory the pipeline calls, and the signals it
    handles. Factories are called ``factory(id, settings, *wiring)``: a receiver gets its
    consumers by signal, a processor its signal and next consumer, an extension the
    components' status, an exporter nothing more."""

    settings: type
    factory: Callable[..., Any]
    signals: frozenset[Signal] = ALL


class Consumer(Protocol):
    async def consume(self, batch: Batch) -> None:
        """Take a batch. Returns when the batch is handed on; raises only :class:`Refused`."""


class Entrance(Consumer, Protocol):
    """What a receiver feeds: the door of a pipeline (or of several), which can say before a
    request is read whether it would be let in."""

    def admit(self) -> None:
        """Raise :class:`Refused` while an exporter behind it has no room for another batch."""


class Component(Protocol):
    name: str

    async def start(self) -> None:
        """Acquire ports, files, connections. Called downstream first."""

    async def shutdown(self) -> None:
        """Hand on or flush what is held, release resources. Called upstream first; idempotent."""


@runtime_checkable
class Exporter(Component, Consumer, Protocol):
    # Whether it takes the error spans of traces the sampler dropped (the ResourceSpans
    # marked errors-only, :mod:`collector.sampling`); the others never see them.
    accepts_unsampled_errors: bool
    # Whether a batch it has taken survives the process being killed (a queue on disk): then
    # what is answered success upstream must have reached it first (see the batch processor).
    durable: bool

    def admit(self) -> None:
        """Raise :class:`Refused` when it has no room for another batch (a full queue)."""

    def status(self) -> tuple[str, str]:
        """(state, message) for the health JSON: ``healthy``, ``degraded``..., never a secret."""


class Receiver(Protocol):
    name: str
    endpoints: dict[str, str]  # transport -> the address listened on (port 0 resolved)

    async def start(self) -> None:
        """Listen. Called last: everything downstream is running."""

    async def shutdown(self, grace_s: float) -> None:
        """Stop listening at once; requests in flight get ``grace_s`` to finish."""


class Extension(Component, Protocol):
    address: str | None  # where it listens, if it does


class PipelineProcessor(Component, Consumer, Protocol):
    """A processor as the pipeline sees it: a consumer with a lifecycle."""


@runtime_checkable
class ServesHealth(Protocol):
    """A receiver with a health service of its own (gRPC's ``grpc.health.v1``)."""

    async def set_ready(self, ready: bool) -> None:
        """Whether the sidecar takes traffic: after start, and until shutdown begins."""


@runtime_checkable
class Readiness(Protocol):
    """An extension that reports whether the sidecar takes traffic (the health probes)."""

    ready: bool


class Processor:
    """What most processors share: a name, the signal, the next consumer, nothing to acquire
    or flush, and drops counted by reason on ``otelsidecar_dropped_items``. A processor that
    holds data between batches overrides :meth:`start` and :meth:`shutdown`."""

    def __init__(self, name: str, signal: Signal, next: Consumer) -> None:
        self.name = name
        self.signal = signal
        self._next = next

    async def start(self) -> None:
        """Nothing to acquire."""

    async def shutdown(self) -> None:
        """Nothing held between batches."""

    def drops(self, reason: str) -> Counter:
        """The counter of items this processor drops for ``reason`` (a Prometheus child)."""
        return DROPPED.labels(self.name, self.signal.value, reason)


@runtime_checkable
class SeesPipeline(Protocol):
    def joined(self, chain: Sequence[object], exporters: Sequence[Exporter]) -> None:
        """Called once its pipeline is built, with the pipeline's processors upstream first
        and its exporters."""


class Refused(Exception):
    """The sidecar cannot take more data right now; receivers answer a retryable error.

    ``reason`` is the drop reason counted on /metrics (for example ``memory_limit``).
    """

    def __init__(self, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
