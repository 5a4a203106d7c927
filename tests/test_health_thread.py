"""The probes are served on a thread of their own: while the pipelines' loop is busy the
liveness probe answers at once, and once the loop has been stuck past STALLED_S it says so."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from collector import health
from collector.health import HealthServer, HealthSettings
from collector.overload import Overload
from collector.settings import Endpoint


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def block_the_loop(seconds: float) -> None:
    """What a handler does that runs long without awaiting."""
    time.sleep(seconds)


def test_liveness_is_answered_while_the_loop_is_busy_and_fails_when_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = Overload()
    monkeypatch.setattr(health, "OVERLOAD", watch)
    monkeypatch.setattr(health, "STALLED_S", 0.6)
    answers: list[tuple[int, dict]] = []

    async def scenario() -> None:
        watch.start()
        server = HealthServer("health", HealthSettings(Endpoint("127.0.0.1:0")), dict)
        await server.start()
        url = f"http://{server.address}/health/live"
        assert get(url) == (200, {"status": "alive"})

        def probe() -> None:
            for _ in range(2):
                time.sleep(0.5)
                answers.append(get(url))

        prober = threading.Thread(target=probe)
        prober.start()
        block_the_loop(1.5)  # the pipelines' loop runs nothing meanwhile
        prober.join()
        await asyncio.sleep(0.1)  # caught up
        assert get(url)[0] == 200
        await server.shutdown()
        await watch.stop()

    asyncio.run(scenario())
    (early, _), (late, body) = answers  # both answered while the loop was blocked
    assert early == 200  # under 0.5 s behind: busy, not stuck
    assert late == 503 and body["status"] == "stalled"  # about 1 s behind: stuck
