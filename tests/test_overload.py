"""Receivers refuse while the event loop is behind, and take requests again once it caught up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from collector.component import Refused
from collector.overload import INTERVAL_S, MAX_LAG_S, MIN_IN_FLIGHT, RETRY_AFTER_S, Overload


def block_the_loop(seconds: float) -> None:
    """What a handler does that runs long without awaiting (parsing a big body)."""
    time.sleep(seconds)


def requests_in_flight(overload: Overload, count: int) -> Callable[[], None]:
    """``count`` requests counted in flight until the returned function ends them."""
    held = [overload.in_flight_while() for _ in range(count)]
    for request in held:
        request.__enter__()

    def end() -> None:
        for request in held:
            request.__exit__(None, None, None)

    return end


def test_refuses_while_behind_and_only_then() -> None:
    async def scenario() -> None:
        watch = Overload()
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


def test_refuses_what_could_not_be_answered_within_the_bound() -> None:
    """Little's law: a new request waits about ``in flight / rate``."""

    async def scenario() -> None:
        overload = Overload()
        overload.start()
        end_burst = requests_in_flight(overload, MIN_IN_FLIGHT)  # an idle sidecar takes this
        with pytest.raises(Refused) as refused:
            overload.check()
        assert refused.value.reason == "overloaded"
        overload.rate = 50.0  # finishing 50 a second: 50 may wait their turn within 1 s
        overload.check()
        end_more = requests_in_flight(overload, 50 - MIN_IN_FLIGHT)
        with pytest.raises(Refused):
            overload.check()
        end_burst()
        end_more()
        assert overload.in_flight == 0
        overload.check()
        await overload.stop()

    asyncio.run(scenario())


def test_the_rate_follows_what_is_answered() -> None:
    async def scenario() -> None:
        overload = Overload()
        overload.start()
        for _ in range(40):  # 20 answered a tick, 400 a second
            for _ in range(20):
                with overload.in_flight_while():
                    pass
            await asyncio.sleep(INTERVAL_S)
        assert 100 < overload.rate < 500
        await overload.stop()

    asyncio.run(scenario())


def test_refusals_ask_to_come_back_in_a_second_and_a_stopped_watch_is_gone() -> None:
    async def scenario() -> None:
        overload = Overload()
        overload.start()
        await asyncio.sleep(0)
        assert overload.lag_s() < MAX_LAG_S
        end = requests_in_flight(overload, MIN_IN_FLIGHT)
        with pytest.raises(Refused) as refused:
            overload.check()
        assert refused.value.retry_after_s == RETRY_AFTER_S
        end()
        block_the_loop(MAX_LAG_S + 0.1)
        with pytest.raises(Refused) as refused:
            overload.check()
        assert refused.value.retry_after_s == RETRY_AFTER_S
        task = overload._task
        await overload.stop()
        assert task is not None and task.cancelled() and overload._task is None
        assert overload.lag_s() == 0.0

    asyncio.run(scenario())


class Clock:
    """The watch's loop time, moved by the test; ``sleep`` is the watch's wait between runs:
    ``finished`` requests end in it, then the clock moves on by what was asked (or ``late``)."""

    def __init__(self, overload: Overload, finished: int, runs: int) -> None:
        self.now = 100.0
        self.overload, self.finished, self.runs = overload, finished, runs
        self.late = 0.0  # added to the next wait: the loop was busy
        overload._loop = self  # type: ignore[assignment]
        overload._due = self.now + INTERVAL_S  # as start() sets it

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.runs -= 1
        if self.runs < 0:
            raise asyncio.CancelledError
        for _ in range(self.finished):
            with self.overload.in_flight_while():
                pass
        self.now += seconds + self.late
        self.late = 0.0


def watch(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.overload.asyncio.sleep", clock.sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(clock.overload._watch())


def test_the_rate_is_a_moving_average_of_requests_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    overload = Overload()
    clock = Clock(overload, finished=5, runs=400)  # 5 a tick of 50 ms: 100 a second
    watch(clock, monkeypatch)
    assert overload.rate == pytest.approx(100, rel=1e-3)
    assert overload.lag_s() == 0.0  # every run on time


def test_a_late_run_takes_the_rate_it_measured_over_its_whole_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overload = Overload()
    overload.rate = 400.0
    clock = Clock(overload, finished=300, runs=1)
    clock.late = 2.0 - INTERVAL_S  # 300 answered over 2 s of a busy loop
    watch(clock, monkeypatch)
    assert overload.rate == pytest.approx(150)  # longer than the window: the average is it


def test_lag_is_refused_only_beyond_its_bound() -> None:
    overload = Overload()
    clock = Clock(overload, finished=0, runs=0)
    clock.now = overload._due + MAX_LAG_S
    overload.check()  # exactly at the bound: taken
    clock.now += 0.001
    with pytest.raises(Refused, match="loop_lag"):
        overload.check()


def test_a_started_watch_is_not_late_and_is_named_for_a_task_dump() -> None:
    """Its first run is due one interval after start: no lag before then. The task is named,
    so a dump of the loop's tasks (py-spy, asyncio debug) says what it is."""
    overload = Overload()

    async def scenario() -> None:
        overload.start()
        assert overload.lag_s() == 0.0
        assert overload._task is not None and overload._task.get_name() == "overload-watch"
        overload.check()  # nothing in flight: let in
        await overload.stop()

    asyncio.run(scenario())
