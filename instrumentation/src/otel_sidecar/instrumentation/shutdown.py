"""Nothing lost on a graceful stop.

The SDK flushes its batches at interpreter exit (``atexit``). uvicorn, since 0.29, ends its
graceful shutdown by raising the SIGTERM (or SIGINT) it caught again, with the default action
restored, so the process dies by the signal and ``atexit`` never runs: everything batched
since the last export (up to ``OTEL_BSP_SCHEDULE_DELAY``, 5 s) would be lost, on every deploy,
scale-down and ``--reload``. So once uvicorn's ``Server.shutdown`` has finished (requests done,
lifespan shutdown run), the tracer, logger and meter providers are flushed (the meter exports
once a minute: what was recorded since would be lost too). This covers uvicorn, its
``--workers`` and ``--reload`` processes, and gunicorn's uvicorn workers.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import _logs, metrics, trace

from otel_sidecar.instrumentation.patches import patch

FLUSH_TIMEOUT_MS = 5000


def install() -> None:
    from wrapt import register_post_import_hook

    register_post_import_hook(_patch_uvicorn, "uvicorn.server")


def flush(timeout_ms: int = FLUSH_TIMEOUT_MS) -> None:
    """Export what the providers hold, in a thread of its own: a flush that hangs (the signal
    came while this thread held a lock the exporter needs) costs at most the timeout."""

    def run() -> None:
        providers = (trace.get_tracer_provider(), _logs.get_logger_provider(),
                     metrics.get_meter_provider())  # fmt: skip
        for provider in providers:
            force_flush = getattr(provider, "force_flush", None)
            if force_flush is not None:
                force_flush(timeout_ms)

    flusher = threading.Thread(target=run, name="otel-sidecar-flush", daemon=True)
    flusher.start()
    flusher.join(2 * timeout_ms / 1000)


def _patch_uvicorn(module: Any) -> None:
    def wrap(original: Any) -> Any:
        async def shutdown(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                await original(self, *args, **kwargs)
            finally:
                flush()

        return shutdown

    patch(module.Server, "shutdown", wrap)
