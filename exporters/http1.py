"""POSTs over kept-alive HTTP/1.1 connections, for the Sentry exporter's one request per envelope.

Sentry takes one event or transaction per envelope, so the exporter makes a request for
nearly every trace it sends. aiohttp spends ~350 µs of CPU on each (its session, connector,
timers and tracing hooks); this client writes the request in one go and reads the answer on
the connection it came from, ~150 µs. It does what that exchange needs and no more: http and
https (the system's CAs), connections reused until the server closes them or says
``Connection: close``, answers with Content-Length, chunked, or to the end of the connection,
no redirects, no proxies, no cookies; interim (1xx) answers skipped. An idle connection is
not reused once it is older than IDLE_S (a NAT or load balancer may have forgotten it
without a word), closed, or holding bytes nobody asked for (a server's 408 before it
closes). One taken from the idle ones that turns out closed before a byte of the answer
arrived is replaced: a server may close an idle connection just as the request is written,
which is not a failure of the request. (Should the server have taken the request before
closing, it arrives twice: Sentry drops a repeated event or transaction id; a log item
would be counted twice.)
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from collector import __version__

MAX_ANSWER_BYTES = 1 << 20  # Sentry answers a few bytes of JSON; anything bigger is not it
MAX_HEAD_BYTES = 64 * 1024
MAX_TRAILER_LINES = 64
IDLE_S = 15.0  # an idle connection older than this is closed, not reused (aiohttp's default)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")  # at most 4 GiB: the cap below is 1 MiB


class HttpError(Exception):
    """The exchange failed (not an HTTP error status): a broken or malformed answer."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def reusable(self, now: float) -> bool:
        """Young enough, open, and with nothing unasked-for waiting to be read."""
        return (
            now - self.idle_since < IDLE_S
            and not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # StreamReader has no public peek: asyncio's own field
        )

    def close(self) -> None:
        self.writer.close()


class Http1Client:
    """POSTs to one URL with the same headers; ``post`` raises HttpError, OSError or
    TimeoutError when no answer came (the caller retries)."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        timeout_s: float,
        tls: ssl.SSLContext | None = None,  # for https: the system's CAs if not given
        max_idle: int = 8,  # connections kept between requests: one per concurrent sender
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL is needed")
        self._host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self._port = parts.port or default_port
        self._ssl = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host = self._host if self._host.isascii() else self._host.encode("idna").decode()
        host = f"[{host}]" if ":" in host else host  # an IPv6 literal
        # As browsers and sentry-sdk send it: no default port, never the userinfo.
        authority = host if self._port == default_port else f"{host}:{self._port}"
        lines = [f"POST {target} HTTP/1.1", f"Host: {authority}",
                 f"User-Agent: otel-sidecar/{__version__}"]  # fmt: skip
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}")
        self._head = "\r\n".join([*lines, "Content-Length: "]).encode("latin-1")
        self._timeout_s = timeout_s
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    async def post(self, body: bytes) -> Answer:
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        async with asyncio.timeout(self._timeout_s):
            while connection := self._take_idle():
                try:
                    return await self._exchange(connection, request)
                except _ClosedBeforeAnswer:
                    pass  # closed by the server while idle: the next one, or a new one
            try:
                return await self._exchange(await self._open(), request)
            except _ClosedBeforeAnswer:
                raise HttpError("connection closed before an answer") from None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest alive
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._ssl, limit=MAX_HEAD_BYTES
        )
        return _Connection(reader, writer)

    async def _exchange(self, connection: _Connection, request: bytes) -> Answer:
        try:
            answer, keep = await _answer(connection, request)
        except BaseException:  # failed, cancelled or timed out: the connection is unusable
            connection.close()
            raise
        if keep and len(self._idle) < self._max_idle:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return answer


class _ClosedBeforeAnswer(Exception):
    pass


async def _answer(connection: _Connection, request: bytes) -> tuple[Answer, bool]:
    reader, writer = connection.reader, connection.writer
    try:
        writer.write(request)
        await writer.drain()
        raw = await reader.readuntil(b"\r\n\r\n")
        while raw.startswith(b"HTTP/1.1 1") and not raw.startswith(b"HTTP/1.1 101"):
            raw = await reader.readuntil(b"\r\n\r\n")  # an interim answer: the next is ours
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise HttpError("answer cut short") from None
        raise _ClosedBeforeAnswer from None
    except ConnectionError:
        raise _ClosedBeforeAnswer from None
    except asyncio.LimitOverrunError:
        raise HttpError("answer head too long") from None
    try:
        answer, keep = _parse_head(raw)
        keep = await _read_body(reader, answer, keep)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        raise HttpError("malformed answer") from None
    return answer, keep


def _parse_head(raw: bytes) -> tuple[Answer, bool]:
    """The status and headers, and whether the connection may carry another request."""
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise HttpError("not an HTTP/1 answer")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, colon, value = line.partition(":")
            if not colon:
                raise HttpError("malformed header line")
            name, value = name.strip().lower(), value.strip()
            if name in headers:  # repeated: a list, except a length, which must agree
                if name == "content-length" and value != headers[name]:
                    raise HttpError("conflicting Content-Length")
                value = f"{headers[name]}, {value}"
            headers[name] = value
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
    return Answer(int(rest[:3]), headers), keep


async def _read_body(reader: asyncio.StreamReader, answer: Answer, keep: bool) -> bool:
    """Read (and discard: Sentry's answers carry nothing the exporter needs) the body; whether
    the connection can still be kept."""
    headers = answer.headers
    if answer.status in (204, 304) or answer.status < 200:
        return keep  # no body, whatever the headers say
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while size := _chunk_size(await reader.readuntil(b"\r\n")):
            total += size
            if total > MAX_ANSWER_BYTES:
                raise HttpError("answer too long")
            await reader.readexactly(size + 2)  # the chunk and its CRLF
        for _ in range(MAX_TRAILER_LINES):  # trailers, then the end
            if await reader.readuntil(b"\r\n") == b"\r\n":
                return keep
        raise HttpError("too many trailer lines")
    length = headers.get("content-length", "").partition(",")[0] or None
    if length is not None:
        if not length.isdigit() or int(length) > MAX_ANSWER_BYTES:
            raise HttpError("bad Content-Length")
        await reader.readexactly(int(length))
        return keep
    total = 0  # neither: the body ends with the connection
    while chunk := await reader.read(64 * 1024):
        total += len(chunk)
        if total > MAX_ANSWER_BYTES:
            raise HttpError("answer too long")
    return False


def _chunk_size(line: bytes) -> int:
    """A chunk's size line (hex digits, then maybe ;extensions)."""
    digits = line.split(b";")[0].strip()
    if not _CHUNK_SIZE.fullmatch(digits):
        raise HttpError("bad chunk size")
    return int(digits, 16)
