"""A real aiohttp server on 127.0.0.1 in a thread of its own, for test peers (sinks)."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]


class ThreadedServer:
    """``with Server(): ...`` serves ``routes()`` (POST path -> handler) on ``self.port``.

    Bodies arrive raw (``auto_decompress`` off) so tests can check what was really sent.
    """

    port: int = 0  # 0: a free one, set once serving
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context

    def routes(self) -> dict[str, Handler]:
        raise NotImplementedError

    def __enter__(self) -> ThreadedServer:
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
        for path, handler in self.routes().items():
            app.router.add_post(path, handler)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.tls).start()
        self.port = runner.addresses[0][1]
        started.set()
        await self._stop.wait()
        await runner.cleanup()
