"""A capturing OTLP/gRPC backend for tests: a real grpc.aio server on 127.0.0.1, in a thread of
its own, that parses what it gets with the official protobufs, records the call's metadata and
compression, and answers what the test scripts (a status code, optionally with RetryInfo, or a
partial_success)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector.signals import Batch, Signal

# The services' names as the official protobufs declare them.
_SERVICES = {
    Signal.TRACES: trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
    Signal.LOGS: logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name,
    Signal.METRICS: metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
}


@dataclass
class Call:
    signal: Signal
    batch: Batch
    metadata: dict[str, str]
    code: grpc.StatusCode


@dataclass
class OtlpGrpcSink:
    answers: deque[tuple[grpc.StatusCode, float | None]] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    reply: dict[Signal, bytes] = field(default_factory=dict)  # a 200's body, per signal
    port: int = 0
    credentials: grpc.ServerCredentials | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(
        self, code: grpc.StatusCode, times: int = 1, retry_after: float | None = None
    ) -> None:
        self.answers.extend([(code, retry_after)] * times)

    def accepted(self, signal: Signal) -> list[Batch]:
        return [c.batch for c in self.calls if c.signal is signal and c.code == grpc.StatusCode.OK]

    def wait_for(self, condition: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; {len(self.calls)} calls"
            time.sleep(0.02)

    # --- the server --------------------------------------------------------------------------

    def __enter__(self) -> OtlpGrpcSink:
        started = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),),
                                        daemon=True)  # fmt: skip
        self._thread.start()
        assert started.wait(10), "the gRPC sink did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self, started: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = grpc.aio.server()
        handlers = [
            grpc.method_handlers_generic_handler(service, {
                "Export": grpc.unary_unary_rpc_method_handler(self._handler(signal)),
            })
            for signal, service in _SERVICES.items()
        ]  # fmt: skip
        server.add_generic_rpc_handlers(handlers)
        address = "127.0.0.1:0"
        if self.credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, self.credentials)
        await server.start()
        started.set()
        await self._stop.wait()
        await server.stop(0)

    def _handler(self, signal: Signal) -> Any:
        async def export(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            code, retry_after = (
                self.answers.popleft() if self.answers else (grpc.StatusCode.OK, None)
            )
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            self.calls.append(Call(signal, signal.request_type.FromString(body), metadata, code))
            if code == grpc.StatusCode.OK:
                return self.reply.get(signal) or signal.success_response().SerializeToString()
            if retry_after is not None:
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", _retry_info(code, retry_after)),)
                )
            await context.abort(code, "scripted")
            return b""

        return export


def _retry_info(code: grpc.StatusCode, seconds: float) -> bytes:
    detail = AnyProto()
    delay = Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message="scripted", details=[detail])
    return status.SerializeToString()
