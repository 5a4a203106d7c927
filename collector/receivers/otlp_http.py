"""OTLP/HTTP transport (aiohttp): ``POST /v1/traces`` and ``POST /v1/logs``.

Bodies are ``application/x-protobuf`` or ``application/json`` (OTLP/JSON), optionally
``Content-Encoding: gzip``. The size limit applies to the body as sent and again to the body
after decompression, which is done here with a bounded output so a gzip bomb costs nothing.
Answers carry a ``google.rpc.Status`` in the request's encoding, as the OTLP spec asks.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status

from collector import otlp_json
from collector.component import Refused
from collector.http import body_timeout, listen
from collector.memory import MIB, TooCostly
from collector.overload import OVERLOAD
from collector.receivers.intake import HttpSettings, Intake
from collector.signals import InvalidBatch, Signal
from collector.telemetry import log

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# gRPC status codes carried in the Status body.
_INVALID_ARGUMENT, _RESOURCE_EXHAUSTED, _UNAVAILABLE, _INTERNAL = 3, 8, 14, 13


class TooLarge(ValueError):
    pass


class OtlpHttpServer:
    def __init__(self, settings: HttpSettings, intake: Intake) -> None:
        self.settings = settings
        self.intake = intake
        self.address = str(settings.endpoint)
        self._limit = settings.max_request_body_size_mib * MIB
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=self._limit)
        for signal in Signal:
            if self.intake.serves(signal):
                app.router.add_post(signal.http_path, self._handler(signal))
        # auto_decompress off: aiohttp would inflate gzip without our output bound.
        self._runner, self.address = await listen(
            app, self.settings.endpoint, self.intake.transport, auto_decompress=False
        )

    async def set_ready(self, ready: bool) -> None:
        """Nothing to say: OTLP/HTTP has no health service (the health extension is it)."""

    async def shutdown(self, grace_s: float) -> None:
        """Stop listening at once; requests in flight get ``grace_s`` to finish."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            await asyncio.wait_for(runner.cleanup(), grace_s)
        except TimeoutError:
            log.warning("receiver_shutdown_timeout", receiver=self.intake.transport)

    def _handler(self, signal: Signal) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self._export(signal, request)

        return handle

    async def _export(self, signal: Signal, request: web.Request) -> web.Response:
        intake = self.intake
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            intake.refused(signal, "unsupported")
            return _status(
                415,
                _INVALID_ARGUMENT,
                f"unsupported content type {content_type!r}; use {PROTOBUF} or {JSON}",
                PROTOBUF,
            )
        limit = self._limit if content_type == PROTOBUF else min(self._limit, MAX_JSON_BODY)
        if request.content_length is not None and request.content_length > limit:
            intake.refused(signal, "too_large")
            return _status(413, _RESOURCE_EXHAUSTED, self._too_large(limit), content_type)
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity"):
            intake.refused(signal, "unsupported")
            return _status(
                415,
                _INVALID_ARGUMENT,
                f"unsupported content encoding {encoding!r}; use gzip or none",
                content_type,
            )
        try:
            intake.check_ready(signal)
            if encoding == "identity" and request.content_length is not None:
                # Its cost is known before a byte is read: held while it is read, so that
                # requests arriving together count each other's.
                with intake.admission(signal, request.content_length):
                    body = await self._read(signal, request, encoding, limit)
                    if isinstance(body, web.Response):
                        return body
                    return await self._parse_and_accept(signal, body, content_type)
            if request.content_length is not None:  # nothing read for a request refused anyway
                intake.check_admission(signal, request.content_length)
            with intake.reading(signal, limit):  # chunked, or gzip: up to limit once inflated
                body = await self._read(signal, request, encoding, limit)
            if isinstance(body, web.Response):
                return body
            with intake.admission(signal, len(body)):  # a gzip body: its inflated size
                return await self._parse_and_accept(signal, body, content_type)
        except TooCostly as error:
            return _status(413, _RESOURCE_EXHAUSTED, str(error), content_type)
        except Refused as refusal:
            return self._overloaded(refusal, content_type)

    async def _read(
        self, signal: Signal, request: web.Request, encoding: str, limit: int
    ) -> bytes | web.Response:
        """The body, inflated, at most ``limit`` bytes; or the answer that refuses it."""
        intake, content_type = self.intake, request.content_type
        try:
            # Not wait_for: on 3.11 it reads in a task of its own, and a body refused for its
            # size left that task, its exception and the part read in a reference cycle
            # (8.7 MiB of garbage per refusal until the garbage collector ran).
            async with asyncio.timeout(body_timeout(request.content_length)):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            intake.refused(signal, "too_large")
            return _status(413, _RESOURCE_EXHAUSTED, self._too_large(limit), content_type)
        except TimeoutError:  # a body trickling in: the connection is not kept for it
            intake.refused(signal, "timeout")
            return _status(408, _UNAVAILABLE, "request body too slow", content_type)
        if encoding == "gzip":
            try:
                body = gunzip(body, limit)
            except TooLarge:
                intake.refused(signal, "too_large")
                return _status(413, _RESOURCE_EXHAUSTED, self._too_large(limit), content_type)
            except zlib.error:
                intake.refused(signal, "invalid")
                return _status(400, _INVALID_ARGUMENT, "body is not valid gzip", content_type)
        if len(body) > limit:  # a JSON body sent without its length
            intake.refused(signal, "too_large")
            return _status(413, _RESOURCE_EXHAUSTED, self._too_large(limit), content_type)
        return body

    async def _parse_and_accept(
        self, signal: Signal, body: bytes, content_type: str
    ) -> web.Response:
        async with OVERLOAD.handling():
            return await self._parse_and_accept_now(signal, body, content_type)

    async def _parse_and_accept_now(
        self, signal: Signal, body: bytes, content_type: str
    ) -> web.Response:
        intake = self.intake
        try:
            if content_type == PROTOBUF:
                batch = signal.request_type.FromString(body)
            elif len(body) > _JSON_ON_LOOP_MAX:
                # Decoding JSON is Python work (seconds for 10 MiB): off the loop, so that
                # health probes and other requests are answered meanwhile.
                batch = await asyncio.to_thread(otlp_json.decode, body, signal)
            else:
                batch = otlp_json.decode(body, signal)
        except (DecodeError, otlp_json.InvalidJson) as error:
            intake.refused(signal, "invalid")
            detail = str(error) if content_type == JSON else "not a valid OTLP protobuf message"
            return _status(400, _INVALID_ARGUMENT, f"malformed request: {detail}", content_type)
        try:
            await intake.accept(signal, batch)
        except InvalidBatch as error:
            return _status(400, _INVALID_ARGUMENT, str(error), content_type)
        except TooCostly as error:
            return _status(413, _RESOURCE_EXHAUSTED, str(error), content_type)
        except Refused as refusal:
            return self._overloaded(refusal, content_type)
        except Exception:
            log.exception("receiver_error", receiver=intake.transport, signal=signal.value)
            return _status(500, _INTERNAL, "internal error", content_type)
        return _encoded(200, signal.success_response(), content_type)

    @staticmethod
    def _overloaded(refusal: Refused, content_type: str) -> web.Response:
        response = _status(
            503, _UNAVAILABLE, f"sidecar overloaded ({refusal.reason}), retry", content_type
        )
        response.headers["Retry-After"] = str(max(1, round(refusal.retry_after_s)))
        return response

    def _too_large(self, limit: int) -> str:
        if limit < self._limit:
            return (f"OTLP/JSON body exceeds {limit // MIB} MiB (decoding JSON cannot be "
                    f"interrupted); send protobuf, or smaller batches")  # fmt: skip
        return f"request body exceeds {self.settings.max_request_body_size_mib} MiB"


_JSON_ON_LOOP_MAX = 256 << 10
# Decoding JSON holds the interpreter lock throughout (40-70 ms per MiB measured): past this the
# health probes, served by another thread, would wait too long.
MAX_JSON_BODY = 2 * MIB


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate at most ``limit`` bytes (over all gzip members, as RFC 1952 allows several);
    raises TooLarge past that, zlib.error on bad input."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise TooLarge
        if not inflater.eof:
            raise zlib.error("truncated gzip stream")
        data = inflater.unused_data
        if not data:
            return bytes(out)


def _status(http_status: int, code: int, message: str, content_type: str) -> web.Response:
    return _encoded(http_status, Status(code=code, message=message), content_type)


def _encoded(http_status: int, message: Message, content_type: str) -> web.Response:
    if content_type == JSON:
        body = otlp_json.encode(message)
    else:
        content_type = PROTOBUF
        body = message.SerializeToString()
    return web.Response(status=http_status, body=body, content_type=content_type)
