"""Connections that hold a socket without making a request (slowloris) cannot exhaust a
listener: over the cap, new connections are closed at once; a connection whose request headers
do not arrive within the header timeout is closed; a normal request is served throughout."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from collector import http
from collector.settings import Endpoint


def _half_open(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    connection = socket.create_connection((host, int(port)), timeout=5)
    connection.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")  # never finished
    return connection


def _closed_by_server(connection: socket.socket) -> bool:
    connection.settimeout(2)
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset
        return True
    except TimeoutError:
        return False


def test_half_open_connections_are_capped_and_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 5)
    monkeypatch.setattr(http, "HEADER_TIMEOUT_S", 0.5)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", ok)
        runner, address = await http.listen(app, Endpoint("127.0.0.1:0"), "test")
        loop = asyncio.get_running_loop()
        try:
            held = [await loop.run_in_executor(None, _half_open, address) for _ in range(5)]
            over = await loop.run_in_executor(None, _half_open, address)
            assert await loop.run_in_executor(None, _closed_by_server, over)  # over the cap
            await asyncio.sleep(1.0)  # the header timeout passes
            closed = [await loop.run_in_executor(None, _closed_by_server, c) for c in held]
            assert all(closed)
            reader, writer = await asyncio.open_connection(*address.rsplit(":", 1))
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
            writer.close()
            for connection in [*held, over]:
                connection.close()
        finally:
            await runner.cleanup()

    asyncio.run(main())
