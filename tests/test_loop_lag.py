"""Receivers refuse while the event loop is behind, and take requests again once it caught up."""

from __future__ import annotations

import asyncio
import time

import pytest

from collector.component import Refused
from collector.loop_lag import MAX_LAG_S, LoopLag


def block_the_loop(seconds: float) -> None:
    """What a handler does that runs long without awaiting (parsing a big body)."""
    time.sleep(seconds)


def test_refuses_while_behind_and_only_then() -> None:
    async def scenario() -> None:
        watch = LoopLag()
        watch.check()  # not watching: nothing to say
        watch.start()
        await asyncio.sleep(0.1)
        watch.check()  # an idle loop is not behind
        block_the_loop(MAX_LAG_S + 0.15)
        with pytest.raises(Refused) as refused:
            watch.check()  # a request handled now has waited that long
        assert refused.value.reason == "loop_lag"
        await asyncio.sleep(0.1)  # the loop catches up, the watch runs
        watch.check()
        await watch.stop()
        block_the_loop(MAX_LAG_S + 0.15)
        watch.check()  # stopped: never refuses

    asyncio.run(scenario())
