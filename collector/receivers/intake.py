"""What the OTLP transports share: their settings and the :class:`Intake`.

Both transports decode a request into an export request (a batch) and pass it to the Intake,
which checks the ids, counts, and hands it to the pipelines of its signal. Transports turn the
Intake's exceptions into protocol answers: :class:`InvalidBatch` is a bad request (HTTP 400,
gRPC INVALID_ARGUMENT), :class:`TooCostly` too large (413, RESOURCE_EXHAUSTED),
:class:`Refused` retryable backpressure (HTTP 503 + Retry-After, gRPC UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.component import Entrance, Refused
from collector.memory import ADMISSION, TooCostly
from collector.overload import OVERLOAD
from collector.sampling import strip_markers
from collector.settings import Endpoint, setting
from collector.signals import Batch, Signal, TooManyAttributes, validate
from collector.telemetry import RECEIVED, REFUSED


@dataclass(frozen=True)
class GrpcSettings:
    endpoint: Endpoint = setting(Endpoint("127.0.0.1:4317"))
    max_recv_msg_size_mib: int = setting(4, minimum=1, maximum=1024)


@dataclass(frozen=True)
class HttpSettings:
    endpoint: Endpoint = setting(Endpoint("127.0.0.1:4318"))
    # Bounds the body as sent and, separately, after gzip is undone (a gzip bomb is refused).
    max_request_body_size_mib: int = setting(8, minimum=1, maximum=1024)


class Intake:
    """What every transport does with a decoded batch: check it, count it, hand it on."""

    def __init__(self, transport: str, consumers: Mapping[Signal, Entrance]) -> None:
        self.transport = transport
        self._consumers = dict(consumers)
        self._accepted = {s: RECEIVED.labels(transport, s.value) for s in self._consumers}

    def serves(self, signal: Signal) -> bool:
        return signal in self._consumers

    def refused(self, signal: Signal, reason: str) -> None:
        REFUSED.labels(self.transport, signal.value, reason).inc()

    @contextmanager
    def admission(self, signal: Signal, size: int) -> Iterator[None]:
        """Around parsing and :meth:`accept`: the memory limiters' say on a request of ``size``
        bytes (inflated), before it is parsed; what it will cost is held meanwhile. Raises
        TooCostly (answered 413 / RESOURCE_EXHAUSTED) or Refused (503 / UNAVAILABLE), counted;
        Refused also while the sidecar could not answer it in time (:mod:`collector.overload`)."""
        with ExitStack() as held:
            try:
                OVERLOAD.check()
                held.enter_context(ADMISSION.request(size))
            except (TooCostly, Refused) as error:
                self.refused(signal, getattr(error, "reason", "too_large"))
                raise
            yield

    @contextmanager
    def reading(self, signal: Signal, most: int) -> Iterator[None]:
        """Around reading a body of unknown size, at most ``most`` bytes: that much held
        (:meth:`Admission.reading <collector.memory.Admission.reading>`). Raises Refused,
        counted."""
        with ExitStack() as held:
            try:
                held.enter_context(ADMISSION.reading(most))
            except Refused as error:
                self.refused(signal, error.reason)
                raise
            yield

    def check_ready(self, signal: Signal, waited_s: float = 0.0) -> None:
        """Refuses (counted) a request the sidecar could not answer in time
        (:mod:`collector.overload`; ``waited_s`` before the transport handed it over) or its
        pipelines would not let in (an exporter's queue full), before anything of it is read:
        reading and parsing it would be wasted work, taken from the requests that can be let
        in."""
        try:
            OVERLOAD.check(waited_s)
            self._consumers[signal].admit()
        except Refused as error:
            self.refused(signal, error.reason)
            raise

    def check_admission(self, signal: Signal, size: int) -> None:
        """:meth:`admission`'s verdict without holding anything, before a body is read."""
        try:
            ADMISSION.check(size)
        except (TooCostly, Refused) as error:
            self.refused(signal, getattr(error, "reason", "too_large"))
            raise

    async def accept(self, signal: Signal, batch: Batch) -> None:
        """Raises InvalidBatch, TooCostly (too many attributes) or Refused; counted here. Within
        :meth:`Overload.handling <collector.overload.Overload.handling>`: parsing, checking
        and the pipelines each take a loop turn of their own."""
        await asyncio.sleep(0)
        try:
            count = validate(batch)
        except ValueError:
            self.refused(signal, "invalid")
            raise
        except TooManyAttributes as error:
            self.refused(signal, "too_large")
            raise TooCostly(str(error)) from None
        if isinstance(batch, ExportTraceServiceRequest):
            strip_markers(batch)
        await asyncio.sleep(0)
        try:
            await self._consumers[signal].consume(batch)
        except Exception as error:
            self.refused(signal, getattr(error, "reason", "internal"))
            raise
        self._accepted[signal].inc(count)
