"""A capturing OTLP/HTTP backend for tests: a real server on 127.0.0.1 that parses what it
gets with the official protobufs and answers what the test scripts."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from collector.signals import Batch, Signal


@dataclass
class OtlpSink:
    answers: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    requests: list[tuple[str, dict[str, str], Batch | None, int]] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, status: int, times: int = 1, **headers: str) -> None:
        for _ in range(times):
            self.answers.append((status, {k.replace("_", "-"): v for k, v in headers.items()}))

    def accepted(self, signal: Signal) -> list[Batch]:
        path = "/v1/traces" if signal is Signal.TRACES else "/v1/logs"
        return [b for p, _, b, s in self.requests if p == path and s == 200 and b is not None]

    def wait_for(self, condition: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; {len(self.requests)} requests"
            time.sleep(0.05)

    def __enter__(self) -> OtlpSink:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main(started))

    async def _main(self, started: threading.Event) -> None:
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._handle)
        app.router.add_post("/v1/logs", self._handle)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        started.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        signal = Signal.TRACES if request.path == "/v1/traces" else Signal.LOGS
        batch = signal.request_type.FromString(body)
        status, headers = self.answers.popleft() if self.answers else (200, {})
        self.requests.append((request.path, dict(request.headers), batch, status))
        answer = signal.success_response().SerializeToString() if status == 200 else b""
        return web.Response(
            status=status, headers=headers, body=answer, content_type="application/x-protobuf"
        )
