"""The ``health`` extension: the pod's probes, the sidecar's metrics, the health JSON.

``GET /health`` answers the health JSON (HTTP 503 when a component is unhealthy)::

    {"status": "healthy", "timestamp": "...", "version": "...",
     "components": {"otlp_grpc": {"status": "healthy", "message": "listening on ..."}, ...}}

``/health/live`` answers while the process runs (never depends on anything downstream) and its
event loop is not stuck (503 once the loop has been :data:`STALLED_S` behind);
``/health/ready`` once the pipelines are built and the receivers listen, until shutdown starts;
``/metrics`` is Prometheus text.

The server runs on an event loop of its own, in its own thread: a request that keeps the
pipelines' loop busy (parsing, scrubbing a 20 MiB batch) cannot delay a probe past its timeout
and get a working pod restarted. The health JSON is still computed on the pipelines' loop,
where the state it reports lives. Optional ``checks`` probe the app's own dependencies in the
background (a database, an HTTP service, a TCP port) and add them as components, as the
monitoring guide's backend did. No message ever carries a URL, DSN or header value.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector import __version__
from collector.component import Kind
from collector.http import listen
from collector.overload import OVERLOAD
from collector.settings import ConfigError, Duration, Endpoint, setting
from collector.status_page import render
from collector.telemetry import REGISTRY, log

HEALTHY, UNHEALTHY = "healthy", "unhealthy"
# Liveness fails once the pipelines' loop has run nothing for this long: no single request
# takes a tenth of it, and a probe's default period times failures is 30 s.
STALLED_S = 10.0
_REPORT_TIMEOUT_S = 5.0
_DATABASE_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "redis": 6379,
                   "mongodb": 27017, "mssql": 1433}  # fmt: skip
# Whose protocol a database check speaks (see _speaks_database); others: the port only.
_DATABASES = {"postgresql": "PostgreSQL", "postgres": "PostgreSQL", "mysql": "MySQL",
              "redis": "Redis"}  # fmt: skip
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass(frozen=True)
class CheckSettings:
    type: str = setting("tcp", choices=("database", "http", "tcp"))
    url: str = setting("", secret=True)  # database URLs carry passwords
    address: str = ""  # host:port, for tcp
    interval: Duration = setting(Duration(15), minimum=1, maximum=3600)
    timeout: Duration = setting(Duration(2), minimum=0.1, maximum=60)


@dataclass(frozen=True)
class HealthSettings:
    endpoint: Endpoint = setting(Endpoint("127.0.0.1:13133"))
    checks: dict[str, CheckSettings] = setting(factory=dict)

    def check(self, path: str) -> None:
        for name, probe in self.checks.items():
            where = f"{path}.checks.{name}"
            if probe.type == "tcp" and _target(probe) is None:
                raise ConfigError(f"{where}.address: a tcp check needs host:port")
            if probe.type in ("database", "http") and probe.url and _target(probe) is None:
                raise ConfigError(f"{where}.url: not a URL with a host")


Components = Callable[[], dict[str, dict[str, str]]]


# The page loads nothing and may not be framed.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


class HealthServer:
    """Serves the probes; ``components`` is asked for the sidecar's own parts on each /health."""

    def __init__(self, name: str, settings: HealthSettings, components: Components) -> None:
        self.name = name
        self.settings = settings
        self.address = str(settings.endpoint)
        self.ready = False
        self._components = components
        self._checks: dict[str, dict[str, str]] = {
            name: {"status": "unknown", "message": "not checked yet"} for name in settings.checks
        }
        self._runner: web.AppRunner | None = None
        self._probes: list[asyncio.Task[None]] = []
        self._pipelines_loop: asyncio.AbstractEventLoop | None = None
        self._thread: _LoopThread | None = None

    async def start(self) -> None:
        self._pipelines_loop = asyncio.get_running_loop()
        self._thread = _LoopThread(f"{self.name}-server")
        try:
            await self._thread.run(self._serve())
        except BaseException:
            self._thread.stop()
            raise

    async def shutdown(self) -> None:
        self.ready = False
        if self._thread is not None:
            try:
                await self._thread.run(self._stop_serving())
            finally:  # cut short by the grace period too: no thread left behind
                self._thread.stop()
                self._thread = None

    async def _serve(self) -> None:
        """On the server's own loop."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._status_page)
        self._runner, self.address = await listen(app, self.settings.endpoint, self.name)
        self._probes = [
            asyncio.create_task(self._probe_loop(name, probe), name=f"health-check-{name}")
            for name, probe in self.settings.checks.items()
        ]

    async def _stop_serving(self) -> None:
        for task in self._probes:
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def report(self) -> dict[str, Any]:
        components = {**self._components(), **self._checks}
        unhealthy = any(c["status"] == UNHEALTHY for c in components.values())
        return {
            "status": UNHEALTHY if unhealthy or not self.ready else HEALTHY,
            "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
            "version": __version__,
            "components": components,
        }

    async def _health(self, request: web.Request) -> web.Response:
        try:
            report = await asyncio.wait_for(self._report_from_pipelines(), _REPORT_TIMEOUT_S)
        except TimeoutError:
            return web.json_response(
                {"status": UNHEALTHY, "message": "the pipelines' event loop is not answering"},
                status=503,
            )
        return web.json_response(report, status=200 if report["status"] == HEALTHY else 503,
                                 dumps=_dumps)  # fmt: skip

    async def _status_page(self, request: web.Request) -> web.Response:
        """The status page (:mod:`collector.status_page`) for a person; the JSON is /health.
        Rendered on the pipelines' loop, where what it reads is written."""
        assert self._pipelines_loop is not None

        async def page() -> str:
            return render(self.report(), REGISTRY)

        future = asyncio.run_coroutine_threadsafe(page(), self._pipelines_loop)
        try:
            text = await asyncio.wait_for(asyncio.wrap_future(future), _REPORT_TIMEOUT_S)
        except TimeoutError:
            text = render({"status": UNHEALTHY, "components": {}}, REGISTRY)
        return web.Response(text=text, content_type="text/html", headers=_PAGE_HEADERS)

    async def _report_from_pipelines(self) -> dict[str, Any]:
        assert self._pipelines_loop is not None

        async def report() -> dict[str, Any]:
            return self.report()

        future = asyncio.run_coroutine_threadsafe(report(), self._pipelines_loop)
        return await asyncio.wrap_future(future)

    async def _live(self, request: web.Request) -> web.Response:
        lag = OVERLOAD.lag_s()
        if lag > STALLED_S:
            return web.json_response({"status": "stalled", "event_loop_lag_s": round(lag, 1)},
                                     status=503)  # fmt: skip
        return web.json_response({"status": "alive"})

    async def _ready(self, request: web.Request) -> web.Response:
        status = "ready" if self.ready else "not ready"
        return web.json_response({"status": status}, status=200 if self.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _probe_loop(self, name: str, probe: CheckSettings) -> None:
        lookup = _Lookup()  # one name lookup in flight per check, however slow DNS is
        while True:
            started = time.monotonic()
            try:
                self._checks[name] = await asyncio.wait_for(_probe(probe, lookup), probe.timeout)
            except TimeoutError:
                self._checks[name] = _result(UNHEALTHY, f"no answer within {probe.timeout:g} s")
            except Exception as error:  # a probe must not die; say what kind of failure
                self._checks[name] = _result(UNHEALTHY, f"check failed: {type(error).__name__}")
                log.warning("health_check_failed", check=name, error=type(error).__name__)
            await asyncio.sleep(max(0.0, probe.interval - (time.monotonic() - started)))


class _LoopThread:
    """An event loop of its own, running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, work: Any) -> Any:
        """Await a coroutine on this thread's loop from another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class _Lookup:
    """DNS on a daemon thread of its own, at most one at a time: a hung lookup can neither hold
    the loop's thread pool (which exporters' lookups share) nor delay the process's exit."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[list[tuple[int, str, int]]] | None = None

    async def __call__(self, host: str, port: int) -> list[tuple[int, str, int]]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [(socket.AF_INET6 if address.version == 6 else socket.AF_INET, host, port)]
        if self._pending is not None and not self._pending.done():
            raise OSError(0, "name lookup still pending")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[tuple[int, str, int]]] = loop.create_future()
        self._pending = future

        def resolve() -> None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                found = [(family, addr[0], addr[1]) for family, _, _, _, addr in infos]
                loop.call_soon_threadsafe(_settle, future, found, None)
            except OSError as error:
                loop.call_soon_threadsafe(_settle, future, None, error)

        threading.Thread(target=resolve, name="health-dns", daemon=True).start()
        return await asyncio.shield(future)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


class _Resolver(AbstractResolver):
    """aiohttp's resolver, through :class:`_Lookup`."""

    def __init__(self, lookup: _Lookup) -> None:
        self._lookup = lookup

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        return [
            {"hostname": host, "host": ip, "port": found_port, "family": found_family,
             "proto": 0, "flags": socket.AI_NUMERICHOST}
            for found_family, ip, found_port in await self._lookup(host, port)
        ]  # fmt: skip

    async def close(self) -> None:
        pass


async def _probe(probe: CheckSettings, lookup: _Lookup) -> dict[str, str]:
    if probe.type in ("database", "http") and not probe.url:
        return _result("disabled", "no URL configured")
    if probe.type == "http":
        timeout = aiohttp.ClientTimeout(total=float(probe.timeout))
        connector = aiohttp.TCPConnector(resolver=_Resolver(lookup))
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
                session.get(probe.url, allow_redirects=False) as response,
            ):
                ok = response.status < 400
                return _result(HEALTHY if ok else UNHEALTHY, f"HTTP {response.status}")
        except aiohttp.ClientError as error:
            return _result(UNHEALTHY, f"Request failed: {type(error).__name__}")
    host, port = _target(probe) or ("", 0)
    what = "Database connection" if probe.type == "database" else "Connection"
    try:
        _, ip, port = (await lookup(host, port))[0]
        reader, writer = await asyncio.open_connection(ip, port)
    except OSError as error:
        return _result(UNHEALTHY, f"{what} failed: {error.strerror or type(error).__name__}")
    try:
        if probe.type == "tcp":
            return _result(HEALTHY, "Connection successful")
        scheme = urlsplit(probe.url).scheme.split("+")[0]
        speaks = await _speaks_database(scheme, reader, writer)
    except OSError as error:
        return _result(UNHEALTHY, f"{what} failed: {error.strerror or type(error).__name__}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if speaks is None:
        return _result(HEALTHY, f"Database port open (no {scheme} protocol check)")
    if not speaks:
        return _result(UNHEALTHY, f"{what} failed: not a {_DATABASES[scheme]} server")
    return _result(HEALTHY, f"{what} successful")


async def _speaks_database(
    scheme: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool | None:
    """Whether the server answers in the URL's database protocol, asked before any
    authentication (no credentials are sent); None for a scheme not checked here."""
    if scheme in ("postgresql", "postgres"):
        # SSLRequest: every PostgreSQL server answers it with one byte, S or N.
        writer.write(_SSL_REQUEST)
        await writer.drain()
        return await reader.read(1) in (b"S", b"N")
    if scheme == "mysql":
        # The server speaks first: a packet (3 bytes of length, a sequence number) whose
        # payload starts with the protocol version, 10, or 0xff for an error it reports.
        try:
            header = await reader.readexactly(5)
        except asyncio.IncompleteReadError:
            return False
        return header[4] in (10, 0xFF)
    if scheme == "redis":
        writer.write(b"PING\r\n")
        await writer.drain()
        return (await reader.readline()).startswith((b"+PONG", b"-NOAUTH", b"-ERR", b"-WRONGPASS"))
    return None


def _target(probe: CheckSettings) -> tuple[str, int] | None:
    """Where a tcp or database check connects (a database is checked by reaching its port)."""
    if probe.type == "tcp":
        host, _, port = probe.address.rpartition(":")
        host = host.strip("[]")  # [::1]:7000
        valid = host and port.isdigit() and 0 < int(port) < 65536
        return (host, int(port)) if valid else None
    try:
        parts = urlsplit(probe.url)
        scheme = parts.scheme.split("+")[0]
        port = parts.port or _DATABASE_PORTS.get(scheme) or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def _result(status: str, message: str) -> dict[str, str]:
    return {"status": status, "message": message}


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


KIND = Kind(HealthSettings, HealthServer)  # registered as an entry point (pyproject.toml)
