"""Serving an aiohttp application on the sidecar's loop, as receivers and extensions do.

Every listener is guarded against connections that hold a file descriptor without ever making
a request (slowloris): at most :data:`MAX_CONNECTIONS` at a time (more are closed at once), and
a connection whose first request's headers have not arrived within
:data:`HEADER_TIMEOUT_S` is closed. Idle keep-alive connections close after
:data:`IDLE_TIMEOUT_S`. Each listener has its own budget: a flood on one port never starves
another (the health port answers while OTLP is saturated).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aiohttp import web

from collector.settings import Endpoint
from collector.telemetry import log

MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 30.0  # a request body must arrive within this (receivers read it whole)
MIN_BODY_RATE = 1 << 20  # bytes/s: a body of known length must come at least this fast


def body_timeout(length: int | None) -> float:
    """How long a body may take to arrive: 2 s plus a second per MiB of its announced length
    (a request holds its admitted cost while its body is read), at most BODY_TIMEOUT_S."""
    if length is None:
        return BODY_TIMEOUT_S
    return min(BODY_TIMEOUT_S, 2.0 + length / MIN_BODY_RATE)


class _Guard:
    """Wraps an aiohttp ``web.Server`` (the protocol factory a site listens with)."""

    def __init__(self, server: web.Server, who: str) -> None:
        self._server = server
        self._who = who
        self._served: weakref.WeakSet[Any] = weakref.WeakSet()  # transports that sent a request
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self._server.connections) >= MAX_CONNECTIONS:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning("connections_refused", listener=self._who, count=self.refused)
            return _Closing()
        protocol = self._server()
        asyncio.get_running_loop().call_later(HEADER_TIMEOUT_S, self._check, protocol)
        return protocol

    def served(self, request: web.Request) -> None:
        if request.transport is not None:
            self._served.add(request.transport)

    def _check(self, protocol: Any) -> None:
        transport = getattr(protocol, "transport", None)
        if transport is not None and not transport.is_closing() and transport not in self._served:
            transport.close()  # no request within the header timeout: a held-open socket


class _Closing(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


async def listen(
    app: web.Application, endpoint: Endpoint, who: str, **runner_options: Any
) -> tuple[web.AppRunner, str]:
    """Start serving ``app``; returns the runner and the address listened on (port 0
    resolved). A port in use is an OSError naming ``who`` and the endpoint."""
    guard: list[_Guard] = []

    @web.middleware
    async def mark_served(request: web.Request, handler: Any) -> web.StreamResponse:
        guard[0].served(request)
        return await handler(request)

    app.middlewares.insert(0, mark_served)
    runner_options.setdefault("keepalive_timeout", IDLE_TIMEOUT_S)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner_options)
    await runner.setup()
    guard.append(_Guard(runner._server, who))  # type: ignore[arg-type]
    runner._server = guard[0]  # type: ignore[assignment]
    # reuse_port off: a second sidecar must fail to start, not share the port.
    site = web.TCPSite(runner, endpoint.host, endpoint.port, reuse_port=False)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise OSError(f"{who}: cannot listen on {endpoint}: {error.strerror}") from None
    return runner, f"{endpoint.host}:{runner.addresses[0][1]}"
