"""The bytes of telemetry the sidecar holds in flight: what the memory limiter limits.

Every component that keeps a batch beyond one ``consume`` call (the batch processor's pending
batch, exporters' queues) holds its size here while it keeps it, and releases it after.
Receivers hold each request's bytes while the pipeline works on it, through
:meth:`HeldBytes.request`, which also remembers them for the request's own task so that the
memory limiter can judge the level *before* that request (:meth:`HeldBytes.before_request`):
admission then lets the level reach at most the mark plus one request, and refuses everything
after that while an exporter is stalled. The counter is process-wide: one sidecar, one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Gauge

from collector.telemetry import REGISTRY

MIB = 1 << 20

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
        _GAUGE.set(self.value)

    def release(self, size: int) -> None:
        self.value = max(0, self.value - size)
        _GAUGE.set(self.value)

    @contextmanager
    def request(self, size: int) -> Iterator[None]:
        """Hold a request's bytes while its task hands the batch down the pipeline."""
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
