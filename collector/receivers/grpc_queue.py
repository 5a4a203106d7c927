"""How long a gRPC call waited before the sidecar saw it.

grpc.aio hands calls to handlers one at a time, a few loop turns each; a turn that handles a
batch takes milliseconds. Calls a client sends faster than that wait in gRPC's transport,
where no handler sees them and so none can refuse them: 512 calls in flight on one channel
waited 3 s for their answer, with no refusal. How long a call waited there says what the
sidecar can no longer answer in time, however many wait behind it.

gRPC's core counts each call as it arrives (channelz's ``callsStarted``) and hands them over
in arrival order. Sampled every :data:`~collector.overload.INTERVAL_S` while calls come in,
that count says when the n-th call arrived; the handler of the n-th call handed over knows
when it starts. A call is taken to have arrived at the first sample that counted it: its wait
is short by at most one interval (more while the loop lags, and for the first call after an
idle spell, when no sample runs). Every call handed over is counted, whatever its service;
calls that leave without one (cancelled while queued) would shift the count, which is set
right whenever nothing waits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc._cython import cygrpc  # channelz: the only way to read gRPC core's call counts

from collector.overload import INTERVAL_S
from collector.telemetry import log

_SAMPLES = 256  # ~13 s of samples: far beyond any wait let in
_CHANNELZ_ERRORS = (AttributeError, KeyError, TypeError, ValueError)  # off, or not in this grpc
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_MAX_METHODS = 64  # a sidecar server has six: Export for each signal, health Check, List, Watch

WAITED_S: contextvars.ContextVar[float] = contextvars.ContextVar("waited_s", default=0.0)
"""How long the call whose handler runs in this task waited for it."""


def _server_ids() -> set[int]:
    """gRPC core's servers in this process, by channelz id (the first 100; the sidecar runs
    one per OTLP gRPC receiver)."""
    listed = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
    return {int(server["ref"]["serverId"]) for server in listed}


class TransportQueue:
    """Calls in one gRPC server's transport, and how long each waited for its handler."""

    def __init__(self, channelz_id: int = 0) -> None:
        self._id = channelz_id
        self._arrived: collections.deque[tuple[float, int]] = collections.deque(maxlen=_SAMPLES)
        self._handed = 0  # calls handed to handlers so far
        self._skipped = 0  # calls counted as arrived that were never handed over
        self._handling = 0  # calls handed over whose handler has not ended
        self._sampled_at_handed = 0  # handed over as of the last sample
        self._waiting = False  # the last sample found calls waiting
        self._busy = asyncio.Event()  # set by a handover: sample until idle again
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def new_server(cls, options: list[tuple[str, Any]]) -> tuple[
        grpc.aio.Server, TransportQueue | None]:  # fmt: skip
        """A grpc.aio server with ``options``, and its queue: None if channelz cannot tell
        which server is new, or is off (calls are then taken as not having waited)."""
        try:
            before = _server_ids()
        except _CHANNELZ_ERRORS:
            return grpc.aio.server(options=options), None
        queue = cls()
        server = grpc.aio.server(options=options, interceptors=[_Counting(queue)])
        try:
            new = _server_ids() - before
        except _CHANNELZ_ERRORS:
            new = set()
        if len(new) != 1:
            return server, None
        queue._id = new.pop()
        return server, queue

    def _counts(self) -> tuple[int, int]:
        """Calls arrived and calls finished, in gRPC's core."""
        data = json.loads(cygrpc.channelz_get_server(self._id))["server"]["data"]
        finished = int(data.get("callsSucceeded", 0)) + int(data.get("callsFailed", 0))
        return int(data.get("callsStarted", 0)), finished

    def sample(self) -> None:
        arrived, finished = self._counts()
        self._waiting = arrived - finished > self._handling
        if not self._waiting or self._handed + self._skipped > arrived:  # all accounted for
            self._skipped = arrived - self._handed
        self._arrived.append((time.monotonic(), arrived))
        self._sampled_at_handed = self._handed

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._sampling(), name="grpc-queue")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sampling(self) -> None:
        """Samples while calls come in (~250 us each), and sleeps while none do: the first
        call of a burst is handed over before a sample counted it, so as not having waited."""
        while True:
            await self._busy.wait()
            await asyncio.sleep(INTERVAL_S)
            try:
                self.sample()
            except _CHANNELZ_ERRORS as error:  # calls are taken as not having waited from now
                log.warning("grpc_queue_unknown", error=f"{type(error).__name__}: {error}")
                self._arrived.clear()
                return
            if not self._waiting and self._handed == self._sampled_at_handed:
                self._busy.clear()

    @contextlib.contextmanager
    def handed_over(self) -> Iterator[float]:
        """Around a call's handler: how long the call waited for it, in seconds (also in
        :data:`WAITED_S` meanwhile)."""
        self._handed += 1
        self._handling += 1
        self._busy.set()
        waited_s = self.waited_s(self._handed + self._skipped)
        token = WAITED_S.set(waited_s)
        try:
            yield waited_s
        finally:
            WAITED_S.reset(token)
            self._handling -= 1

    def waited_s(self, call: int) -> float:
        """How long ago the ``call``-th arrival was first counted (0 if not yet)."""
        first_counted = None
        for at, arrived in reversed(self._arrived):  # a waiting call is among the last samples
            if arrived < call:
                break
            first_counted = at
        return 0.0 if first_counted is None else max(0.0, time.monotonic() - first_counted)


class _Counting(grpc.aio.ServerInterceptor):
    """Counts every call gRPC hands over, whatever it is for (OTLP, a health check or Watch
    stream, a method the server does not have), from then until its handler ends: gRPC's
    count of arrivals does not say what a call is for."""

    def __init__(self, queue: TransportQueue) -> None:
        self._queue = queue
        # Each method's handler, counted: made once, not per call.
        self._counted_handlers: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED at once
            with self._queue.handed_over():
                return None
        counted = self._counted_handlers.get(handler)
        if counted is None:
            kind = next(kind for kind in _KINDS if getattr(handler, kind) is not None)
            counted = handler._replace(**{kind: self._counted(getattr(handler, kind))})  # type: ignore[attr-defined]
            if len(self._counted_handlers) < _MAX_METHODS:  # a handler made per call: not kept
                self._counted_handlers[handler] = counted
        return counted

    def _counted(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        queue = self._queue
        if inspect.isasyncgenfunction(behaviour):  # grpc.aio tells streams apart by this

            async def streaming(request: object, context: object) -> AsyncIterator[object]:
                with queue.handed_over():
                    async for response in behaviour(request, context):
                        yield response

            return streaming

        async def answering(request: object, context: object) -> object:
            with queue.handed_over():
                return await behaviour(request, context)

        return answering
