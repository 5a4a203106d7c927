"""The Sentry exporter's HTTP/1.1 client against real sockets: a server that answers each
request as the test says (kept alive, chunked, closing, silent, malformed), and TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from exporters.http1 import MAX_ANSWER_BYTES, Http1Client, HttpError
from tests.certificates import self_signed

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
Reply = Callable[[int], bytes | None]  # the request's number -> what to write (None: close)


class Server:
    """Reads whole requests (head and Content-Length body) and writes what ``reply`` says."""

    def __init__(self, reply: Reply, close_after_answer: bool = False) -> None:
        self.reply = reply
        self.close_after_answer = close_after_answer
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.reply(len(self.requests))
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def serve(
    server: Server | Reply,
    scenario: Callable[[Http1Client, Server], Awaitable[None]],
    tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    timeout_s: float = 5,
    max_idle: int = 8,
) -> Server:
    server = server if isinstance(server, Server) else Server(server)

    async def main() -> None:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0,
                                               ssl=None if tls is None else tls[0])  # fmt: skip
        port = listening.sockets[0].getsockname()[1]
        scheme = "http" if tls is None else "https"
        url = f"{scheme}://key@127.0.0.1:{port}/api/1/envelope/?x=1"
        client = Http1Client(url, {"X-Test": "yes"}, timeout_s, None if tls is None else tls[1],
                             max_idle)  # fmt: skip
        try:
            await scenario(client, server)
        finally:
            await client.close()
            listening.close()

    asyncio.run(main())
    return server


def test_requests_share_one_kept_connection_and_carry_their_head_and_body() -> None:
    async def scenario(client: Http1Client, server: Server) -> None:
        for body in (b"first", b"second" * 1000):
            assert (await client.post(body)).status == 200

    server = serve(lambda _: OK, scenario)
    assert server.connections == 1
    head, _, body = server.requests[1].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/1/envelope/?x=1 HTTP/1.1"
    assert lines[1].startswith("Host: 127.0.0.1:")  # never the userinfo
    assert "X-Test: yes" in lines and "Content-Length: 6000" in lines
    assert lines[2].startswith("User-Agent: otel-sidecar/")
    assert body == b"second" * 1000


def test_chunked_answers_with_trailers_and_headers_are_read_whole() -> None:
    chunked = (b"HTTP/1.1 429 Too Many\r\nX-Sentry-Rate-Limits: 60:transaction:key\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n"
               b"X-Trailer: t\r\n\r\n")  # fmt: skip

    async def scenario(client: Http1Client, server: Server) -> None:
        answer = await client.post(b"x")
        assert answer.status == 429
        assert answer.headers["x-sentry-rate-limits"] == "60:transaction:key"
        assert (await client.post(b"y")).status == 429  # the same connection, read to its end

    assert serve(lambda _: chunked, scenario).connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\n\r\n{}",  # no length: the body ends with the connection
    ],
)
def test_a_connection_the_server_will_close_is_not_kept(answer: bytes) -> None:
    async def scenario(client: Http1Client, server: Server) -> None:
        for _ in range(3):
            assert (await client.post(b"x")).status == 200

    server = serve(Server(lambda _: answer, close_after_answer=True), scenario)
    assert server.connections == 3


def test_an_idle_connection_the_server_closed_is_replaced_without_failing_the_request() -> None:
    """The answer says the connection is kept, the server closes it all the same (as idle
    timeouts do): the next request goes on a new connection instead of failing."""

    async def scenario(client: Http1Client, server: Server) -> None:
        assert (await client.post(b"1")).status == 200
        await asyncio.sleep(0.05)  # the close reaches the client
        assert (await client.post(b"2")).status == 200

    server = serve(Server(lambda _: OK, close_after_answer=True), scenario)
    assert server.connections == 2 and len(server.requests) == 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1 answer"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_ANSWER_BYTES + 1),
            "bad Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "malformed answer"),  # cut short
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "not an HTTP/1 answer"),
        (b"HTTQ/1.1 200 OK\r\n\r\n", "not an HTTP/1 answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "answer cut short"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "answer head too long"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n", "bad chunk size"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: t\r\n" * 65,
            "too many trailer lines",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            "conflicting Content-Length",
        ),
    ],
)
def test_broken_answers_fail_the_request_with_a_clear_error(answer: bytes, error: str) -> None:
    async def scenario(client: Http1Client, server: Server) -> None:
        with pytest.raises(HttpError) as raised:
            await client.post(b"x")
        if error is not None:
            assert error in str(raised.value)

    serve(Server(lambda _: answer, close_after_answer=True), scenario)


def test_a_server_that_never_answers_times_out_and_one_that_is_gone_is_an_os_error() -> None:
    async def scenario(client: Http1Client, server: Server) -> None:
        async with asyncio.timeout(30) as guard:  # a client without its own timeout hangs
            with pytest.raises(TimeoutError):
                await client.post(b"x")
        assert not guard.expired()  # the client's timeout fired, not the guard's

    serve(lambda _: b"", scenario, timeout_s=0.2)  # reads the request, writes nothing

    async def refused() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        client = Http1Client(f"http://127.0.0.1:{port}/", {}, 5)
        with pytest.raises(OSError):
            await client.post(b"x")

    asyncio.run(refused())


def test_interim_answers_are_skipped_and_each_request_gets_its_own_answer() -> None:
    answers = {1: b"HTTP/1.1 100 Continue\r\n\r\n" + OK.replace(b"200 OK", b"201 Created"),
               2: OK}  # fmt: skip

    async def scenario(client: Http1Client, server: Server) -> None:
        assert [(await client.post(b"x")).status for _ in range(2)] == [201, 200]

    assert serve(lambda number: answers[number], scenario).connections == 1


def test_an_idle_connection_with_unasked_for_bytes_or_too_old_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that says 408 on an idle connection before closing it: that answer is not
    the next request's. A connection idle past IDLE_S may be gone without a word."""
    timeout = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    class Nagging(Server):
        async def handle(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:  # fmt: skip
            self.connections += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            self.requests.append(head + await reader.readexactly(length))
            writer.write(OK)
            await asyncio.sleep(0.05)
            writer.write(timeout)  # unasked for, and the connection stays open a while
            await asyncio.sleep(0.5)
            writer.close()

    async def nagged(client: Http1Client, server: Server) -> None:
        assert (await client.post(b"1")).status == 200
        await asyncio.sleep(0.2)
        assert (await client.post(b"2")).status == 200

    assert serve(Nagging(lambda _: OK), nagged).connections == 2

    async def aged(client: Http1Client, server: Server) -> None:
        for _ in range(2):
            assert (await client.post(b"x")).status == 200

    assert serve(lambda _: OK, aged).connections == 1
    monkeypatch.setattr("exporters.http1.IDLE_S", 0.0)
    assert serve(lambda _: OK, aged).connections == 2


def test_no_more_idle_connections_are_kept_than_asked() -> None:
    async def scenario(client: Http1Client, server: Server) -> None:
        await asyncio.gather(*(client.post(b"x") for _ in range(3)))
        assert server.connections == 3 and len(client._idle) == 1

    serve(lambda _: OK, scenario, max_idle=1)


@pytest.mark.parametrize(
    ("head", "connections"),
    [
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n", 1),  # 1.0 keeps only if it says so
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\n", 2),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive,close\r\n", 2),
        (b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\nConnection: close\r\n", 2),
        (b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\n", 1),
    ],
)
def test_whether_a_connection_is_kept_follows_its_version_and_connection_headers(
    head: bytes, connections: int
) -> None:
    answer = head + b"Content-Length: 2\r\n\r\n{}"

    async def scenario(client: Http1Client, server: Server) -> None:
        for _ in range(2):
            assert (await client.post(b"x")).status == 200

    # The server keeps the connection open whatever it said: the client decides alone.
    assert serve(lambda _: answer, scenario).connections == connections


def test_repeated_headers_are_joined_and_equal_lengths_accepted() -> None:
    answer = (b"HTTP/1.1 429 Too Many\r\nX-Sentry-Rate-Limits: 60:transaction:k\r\n"
              b"x-sentry-rate-limits: 30:error:k\r\nContent-Length: 2\r\n"
              b"Content-Length: 2\r\n\r\n{}")  # fmt: skip

    async def scenario(client: Http1Client, server: Server) -> None:
        answer = await client.post(b"x")
        assert answer.headers["x-sentry-rate-limits"] == "60:transaction:k, 30:error:k"
        assert (await client.post(b"y")).status == 429  # the body was read: still in step

    serve(lambda _: answer, scenario)


@pytest.mark.parametrize(
    ("framing", "size"),
    [
        ("length", MAX_ANSWER_BYTES),
        ("chunked", MAX_ANSWER_BYTES),
        ("chunked", MAX_ANSWER_BYTES + 1),
        ("close", MAX_ANSWER_BYTES),
        ("close", MAX_ANSWER_BYTES + 1),
    ],
)
def test_answers_up_to_the_cap_are_read_and_one_byte_more_refused(framing: str, size: int) -> None:
    half = size // 2
    body = {
        "length": b"Content-Length: %d\r\n\r\n" % size + b"a" * size,
        "chunked": b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (half, b"a" * half, size - half, b"b" * (size - half)),
        "close": b"\r\n" + b"a" * size,
    }[framing]
    answer = b"HTTP/1.1 200 OK\r\n" + body

    async def scenario(client: Http1Client, server: Server) -> None:
        if size <= MAX_ANSWER_BYTES:
            assert (await client.post(b"x")).status == 200
        else:
            with pytest.raises(HttpError, match="answer too long"):
                await client.post(b"x")

    serve(Server(lambda _: answer, close_after_answer=True), scenario)


def test_no_body_answers_keep_the_connection() -> None:
    async def scenario(client: Http1Client, server: Server) -> None:
        assert [(await client.post(b"x")).status for _ in range(3)] == [204, 304, 200]

    answers = {1: b"HTTP/1.1 204 No Content\r\n\r\n", 2: b"HTTP/1.1 304 Not Modified\r\n\r\n",
               3: OK}  # fmt: skip
    assert serve(lambda number: answers[number], scenario).connections == 1


def test_an_ipv6_sentry_is_reached_with_its_address_in_brackets() -> None:
    """As the Sentry exporter builds its URL from a DSN such as http://key@[::1]:9000/5."""
    from exporters.retry import QueueSettings, RetrySettings
    from exporters.sentry.transport import SentryTransport

    server = Server(lambda _: OK)

    async def main() -> None:
        listening = await asyncio.start_server(server.handle, "::1", 0)
        port = listening.sockets[0].getsockname()[1]
        transport = SentryTransport("sentry", f"http://key@[::1]:{port}/5", QueueSettings(),
                                    RetrySettings(), 5.0)  # fmt: skip
        try:
            assert await transport._post(b"x") == 200
        finally:
            await transport._client.close()
            listening.close()

    asyncio.run(main())
    lines = server.requests[0].split(b"\r\n")
    assert lines[0] == b"POST /api/5/envelope/ HTTP/1.1" and lines[1].startswith(b"Host: [::1]:")
    saas = SentryTransport("sentry", "https://key@o1.ingest.sentry.io/5", QueueSettings(),
                           RetrySettings(), 5.0)  # fmt: skip
    assert saas._client._head.split(b"\r\n")[:2] == [
        b"POST /api/5/envelope/ HTTP/1.1",
        b"Host: o1.ingest.sentry.io",  # as sentry-sdk sends
    ]


def test_the_request_head_names_the_host_as_sent_without_default_ports() -> None:
    """What the Host header says for the DSNs users have (Sentry's own has no port)."""
    cases = {
        "https://o1.ingest.sentry.io/api/5/envelope/": (b"o1.ingest.sentry.io", 443),
        "http://sentry.internal/api/5/envelope/": (b"sentry.internal", 80),
        "http://sentry.internal:9000/api/5/envelope/": (b"sentry.internal:9000", 9000),
        "https://k@b\u00fccher.example/api/1/envelope/": (b"xn--bcher-kva.example", 443),
    }
    for url, (host, port) in cases.items():
        client = Http1Client(url, {}, 5)
        assert client._head.split(b"\r\n")[1] == b"Host: " + host and client._port == port


def test_header_values_with_line_breaks_are_refused() -> None:
    for evil in ("a\r\nInjected: 1", "a\nInjected: 1", "a\rInjected: 1"):
        with pytest.raises(ValueError, match="X-Evil"):
            Http1Client("http://127.0.0.1/", {"X-Evil": evil}, 5)
    with pytest.raises(ValueError, match="http:// or https://"):
        Http1Client("ftp://127.0.0.1/", {}, 5)


def test_https_is_verified_against_the_trusted_certificates(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def trusted(client: Http1Client, server: Server) -> None:
        assert (await client.post(b"x")).status == 200

    assert len(serve(lambda _: OK, trusted, tls=(server_side, trusting)).requests) == 1

    async def untrusted(client: Http1Client, server: Server) -> None:
        with pytest.raises(ssl.SSLError):
            await client.post(b"x")

    serve(lambda _: OK, untrusted, tls=(server_side, ssl.create_default_context()))
