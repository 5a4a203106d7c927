"""Serving an aiohttp application on the sidecar's loop, as receivers and extensions do."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from collector.settings import Endpoint


async def listen(
    app: web.Application, endpoint: Endpoint, who: str, **runner_options: Any
) -> tuple[web.AppRunner, str]:
    """Start serving ``app``; returns the runner and the address listened on (port 0
    resolved). A port in use is an OSError naming ``who`` and the endpoint."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner_options)
    await runner.setup()
    # reuse_port off: a second sidecar must fail to start, not share the port.
    site = web.TCPSite(runner, endpoint.host, endpoint.port, reuse_port=False)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise OSError(f"{who}: cannot listen on {endpoint}: {error.strerror}") from None
    return runner, f"{endpoint.host}:{runner.addresses[0][1]}"
