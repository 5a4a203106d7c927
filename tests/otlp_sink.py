"""A capturing OTLP/HTTP backend for tests: a real server on 127.0.0.1 that parses what it
gets with the official protobufs and answers what the test scripts."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from collector.signals import Batch, Signal
from tests.http_server import Handler, ThreadedServer

# The OTLP/HTTP specification's paths, written out: the sink must not take them from the
# code under test.
_PATHS = {"/v1/traces": Signal.TRACES, "/v1/logs": Signal.LOGS, "/v1/metrics": Signal.METRICS}


@dataclass
class OtlpSink(ThreadedServer):
    answers: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    requests: list[tuple[str, dict[str, str], Batch | None, int]] = field(default_factory=list)
    port: int = 0
    tls: ssl.SSLContext | None = None
    delay_s: float = 0.0  # how long each answer takes (a slow backend)
    reply_body: bytes | None = None  # what a 200 answers; default: an empty partial_success

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def answer(self, status: int, times: int = 1, **headers: str) -> None:
        for _ in range(times):
            self.answers.append((status, {k.replace("_", "-"): v for k, v in headers.items()}))

    def accepted(self, signal: Signal) -> list[Batch]:
        return [
            b for p, _, b, s in self.requests if _PATHS[p] is signal and s == 200 and b is not None
        ]

    def wait_for(self, condition: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; {len(self.requests)} requests"
            time.sleep(0.05)

    def routes(self) -> dict[str, Handler]:
        return {path: self._handle for path in _PATHS}

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        signal = _PATHS[request.path]
        batch = signal.request_type.FromString(body)
        await asyncio.sleep(self.delay_s)
        status, headers = self.answers.popleft() if self.answers else (200, {})
        self.requests.append((request.path, dict(request.headers), batch, status))
        success = self.reply_body or signal.success_response().SerializeToString()
        answer = success if status == 200 else b""
        return web.Response(
            status=status, headers=headers, body=answer, content_type="application/x-protobuf"
        )
