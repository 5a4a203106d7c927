"""OTLP/gRPC transport (grpc.aio): the Trace, Logs and Metrics services' Export.

Requests arrive as raw bytes and are parsed here, so a malformed message is answered
INVALID_ARGUMENT (grpc's own deserializer failure would be INTERNAL). Oversized messages are
refused by grpc itself with RESOURCE_EXHAUSTED before they are read. The handler runs before
the message is read, so a call the sidecar cannot take now is refused UNAVAILABLE without
reading it, and no more messages are read at once than memory admission allows.

A refusal asks the client when to try again, as HTTP's ``Retry-After`` does: a ``RetryInfo``
in the status details (``grpc-status-details-bin``, read by the Collector and the Go and Java
SDKs) and on its own (``google.rpc.retryinfo-bin``, read by the Python SDK). Without it an
SDK retries after 1, 2, 4... s of its own; a client that has no backoff at all would come
straight back.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import NamedTuple

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health

from collector.component import Refused
from collector.http import body_timeout
from collector.memory import ADMISSION, MIB, TooCostly
from collector.overload import OVERLOAD
from collector.receivers.grpc_queue import WAITED_S, TransportQueue
from collector.receivers.intake import GrpcSettings, Intake
from collector.settings import Endpoint
from collector.signals import InvalidBatch, Signal
from collector.telemetry import log


class Failure(NamedTuple):
    """What a call is answered instead of success: a status, its details and, for a refusal
    the client should retry, after how long."""

    code: grpc.StatusCode
    details: str
    retry_after_s: float | None = None

    def trailers(self) -> tuple[tuple[str, bytes], ...]:
        return () if self.retry_after_s is None else _retry_trailers(*self)


@functools.lru_cache(maxsize=64)  # a flood of refusals has a handful of distinct answers
def _retry_trailers(
    code: grpc.StatusCode, details: str, retry_after_s: float
) -> tuple[tuple[str, bytes], ...]:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(round(retry_after_s * 1e9))
    status = status_pb2.Status(code=code.value[0], message=details)
    status.details.add().Pack(info)
    return (
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    )


def _why_not_listening(endpoint: Endpoint) -> str:
    """gRPC says only that it could not bind: the operating system's reason, found by trying
    (the host's lookup, then the bind)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            endpoint.host.strip("[]"), endpoint.port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind) as probe:
            probe.bind(address)
        return "gRPC could not bind it"
    except OSError as error:
        return error.strerror or type(error).__name__


def _overloaded(refusal: Refused) -> Failure:
    # At least a second, as HTTP's Retry-After says: the Python SDK takes the delay asked
    # instead of its own backoff, and would send again at once, and again, for a 0.
    return Failure(
        grpc.StatusCode.UNAVAILABLE,
        f"sidecar overloaded ({refusal.reason}), retry",
        max(1.0, refusal.retry_after_s),
    )


class OtlpGrpcServer:
    def __init__(self, settings: GrpcSettings, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self.address = str(settings.endpoint)
        self._server: grpc.aio.Server | None = None
        self._queue: TransportQueue | None = None
        self._health: health.HealthServicer | None = None

    async def set_ready(self, ready: bool) -> None:
        """``grpc.health.v1``: SERVING once the pipelines run, NOT_SERVING from shutdown on,
        for the whole server (``""``) and each OTLP service it serves."""
        if self._health is None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if ready else (
            health_pb2.HealthCheckResponse.NOT_SERVING)  # fmt: skip
        for service in ["", *(s.grpc_service for s in Signal if self.intake.serves(s))]:
            await self._health.set(service, status)

    async def start(self) -> None:
        limit = self.settings.max_recv_msg_size_mib * MIB
        options = [
            ("grpc.max_receive_message_length", limit),
            # Without this a second sidecar could silently share the port.
            ("grpc.so_reuseport", 0),
            # Flow-control windows stay at their initial size instead of growing to what the
            # link could carry: a call refused before its message is read has sent little of
            # it (16 clients' 3.7 MiB calls: a peak of 130 MiB, not 195).
            ("grpc.http2.bdp_probe", 0),
        ]
        server, self._queue = TransportQueue.new_server(options)
        handlers = [
            grpc.method_handlers_generic_handler(
                signal.grpc_service, {"Export": self._export_handler(signal)}
            )
            for signal in Signal
            if self.intake.serves(signal)
        ]
        server.add_generic_rpc_handlers(handlers)
        self._health = health.HealthServicer()
        await self.set_ready(False)  # until the pipelines say otherwise
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        endpoint = self.settings.endpoint
        try:
            port = server.add_insecure_port(endpoint)
        except RuntimeError:
            port = 0
        if port == 0 and endpoint.port != 0:
            await server.stop(None)  # not left for its finalizer, after the loop is closed
            raise OSError(f"{self.intake.transport}: cannot listen on {endpoint}: "
                          f"{_why_not_listening(endpoint)}")  # fmt: skip
        self.address = f"{endpoint.host}:{port}"
        await server.start()
        self._server = server
        if self._queue is not None:
            self._queue.start()

    async def shutdown(self, grace_s: float) -> None:
        if self._queue is not None:
            await self._queue.stop()
            self._queue = None
        if self._server is not None:
            # Refuses new calls at once; calls in flight get `grace_s` to finish.
            await self._server.stop(grace_s)
            self._server = None

    def _export_handler(self, signal: Signal) -> grpc.RpcMethodHandler:
        parse = signal.request_type.FromString
        limit = self.settings.max_recv_msg_size_mib * MIB
        success = signal.success_response().SerializeToString()
        intake = self.intake

        async def export(requests: object, context: grpc.aio.ServicerContext) -> bytes:
            failure = await take(context, WAITED_S.get())
            if failure is not None:
                # Raised only here, where nothing the call read is reachable: grpc keeps an
                # abort's exception in a reference cycle, and every frame of its traceback
                # (the request's bytes, the parsed batch) with it, until the garbage
                # collector runs; a flood of refused calls would hold their batches until then.
                await context.abort(failure.code, failure.details, failure.trailers())
            return success

        async def take(context: grpc.aio.ServicerContext, waited_s: float) -> Failure | None:
            """Read, check and accept the call's message; None, or what to answer instead."""
            try:
                intake.check_ready(signal, waited_s)
                # Held while read: what the biggest message would cost parsed, so that no
                # more is read at once than could then be let in.
                with intake.reading(signal, ADMISSION.cost(limit)):
                    request = await read(context)
                if not isinstance(request, bytes):
                    return request
                with intake.admission(signal, len(request)):
                    async with OVERLOAD.handling():
                        return await parse_and_accept(request)
            except TooCostly as error:
                return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
            except Refused as refusal:
                return _overloaded(refusal)

        async def read(context: grpc.aio.ServicerContext) -> bytes | Failure:
            try:
                async with asyncio.timeout(body_timeout(limit)):  # no task of its own to cycle
                    request, after = await read_one(context)
            except TimeoutError:  # a message trickling in holds what its read may cost
                intake.refused(signal, "timeout")
                return Failure(grpc.StatusCode.UNAVAILABLE, "request message too slow")
            if request is grpc.aio.EOF:
                if context.done():  # cancelled, or too large: grpc has answered already
                    raise asyncio.CancelledError
                intake.refused(signal, "invalid")
                return Failure(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            if after is not grpc.aio.EOF:  # Export is unary: a second message is not ours to drop
                intake.refused(signal, "invalid")
                return Failure(
                    grpc.StatusCode.INVALID_ARGUMENT, "Export takes one request message per call"
                )
            assert isinstance(request, bytes)  # no deserializer: grpc hands over the bytes
            return request

        async def read_one(context: grpc.aio.ServicerContext) -> tuple[object, object]:
            """The message and what follows it: the end of the stream from a unary client."""
            request = await context.read()
            if request is grpc.aio.EOF:
                return request, request
            return request, await context.read()

        async def parse_and_accept(request: bytes) -> Failure | None:
            try:
                batch = parse(request)
            except DecodeError:
                intake.refused(signal, "invalid")
                return Failure(
                    grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid OTLP protobuf message"
                )
            try:
                await intake.accept(signal, batch)
            except InvalidBatch as error:
                return Failure(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except TooCostly as error:
                return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
            except Refused as refusal:
                return _overloaded(refusal)
            except Exception:
                log.exception("receiver_error", receiver=intake.transport, signal=signal.value)
                return Failure(grpc.StatusCode.INTERNAL, "internal error")
            return None

        # A unary call on the wire, taken as client-streaming so that the handler runs before
        # the message is read: it can refuse at once, and what the read may cost is held.
        # No (de)serializers: the handler parses bytes itself and answers pre-encoded bytes.
        return grpc.stream_unary_rpc_method_handler(export)
