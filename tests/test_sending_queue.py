"""The exporter helper, in process: the sending queue every exporter shares (bounded, held
bytes counted, drops counted by reason, drained and stopped) and the retry loop (backoff,
a server's wait, permanent errors, the time budget)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from collector.component import Refused
from collector.memory import HELD
from collector.settings import Duration
from exporters import retry
from exporters.queue import SendingQueue, sending_queue
from exporters.retry import (
    Permanent,
    QueueSettings,
    Retryable,
    RetrySettings,
    Throttled,
    retry_after_s,
    send_with_retry,
)
from tests.garbage import cyclic_garbage, frames_in


class Destination:
    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.dropped: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def deliver(self, item: str) -> None:
        await self.gate.wait()
        if item.startswith("bug"):
            raise RuntimeError("a bug in the exporter")
        self.delivered.append(item)

    def drop(self, item: str, reason: str) -> None:
        self.dropped.append((item, reason))


def queue(destination: Destination, **settings: Any) -> SendingQueue[str]:
    made = sending_queue("test", QueueSettings(**settings), destination.deliver, len,
                         destination.drop, None)  # type: ignore[arg-type]  # fmt: skip
    assert isinstance(made, SendingQueue)
    return made


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())
    assert HELD.value == 0  # every byte held while queued was released


def test_every_item_is_delivered_once_and_its_bytes_held_meanwhile() -> None:
    destination = Destination()

    async def scenario() -> None:
        sending = queue(destination, num_consumers=3)
        destination.gate.clear()
        sending.start()
        for index in range(10):
            sending.submit(f"item-{index}")
        await asyncio.sleep(0)
        assert HELD.value == sum(len(f"item-{i}") for i in range(10))
        assert not sending.empty()
        destination.gate.set()
        await sending.drain()
        assert sending.empty()
        await sending.stop()

    run(scenario)
    assert sorted(destination.delivered) == sorted(f"item-{i}" for i in range(10))
    assert destination.dropped == []


def test_a_full_queue_refuses_at_the_door_and_keeps_what_was_let_in() -> None:
    destination = Destination()

    async def scenario() -> None:
        sending = queue(destination, queue_size=2)
        sending.admit()
        sending.submit("a")
        assert sending.room() == 1
        sending.submit("b")
        assert sending.room() == 0
        with pytest.raises(Refused) as refusal:
            sending.admit()
        assert refusal.value.reason == "queue_full"
        sending.submit("c")  # let in before the door closed: kept, past queue_size
        sending.start()
        await sending.drain()
        await sending.stop()

    run(scenario)
    assert destination.delivered == ["a", "b", "c"] and destination.dropped == []


def test_when_full_drop_drops_and_counts_instead() -> None:
    destination = Destination()

    async def scenario() -> None:
        sending = queue(destination, queue_size=1, when_full="drop")
        sending.admit()
        sending.submit("a")
        sending.admit()  # never refuses
        sending.submit("b")
        sending.start()
        await sending.drain()
        await sending.stop()

    run(scenario)
    assert destination.delivered == ["a"] and destination.dropped == [("b", "queue_full")]


def test_a_bug_in_delivery_drops_that_item_alone_and_the_worker_goes_on() -> None:
    destination = Destination()

    async def scenario() -> None:
        sending = queue(destination, num_consumers=1)
        sending.start()
        for item in ("first", "bug!", "after"):
            sending.submit(item)
        await sending.drain()
        await sending.stop()

    with capture_logs() as logs:
        run(scenario)
    assert destination.delivered == ["first", "after"]
    assert destination.dropped == [("bug!", "internal_error")]
    assert {"event": "export_failed", "exporter": "test", "error": "RuntimeError",
            "log_level": "error"} in logs  # fmt: skip


def test_stopping_drops_and_counts_what_is_queued_or_being_sent() -> None:
    destination = Destination()

    async def scenario() -> None:
        sending = queue(destination, num_consumers=1)
        destination.gate.clear()
        sending.start()
        for item in ("sending", "queued"):
            sending.submit(item)
        await asyncio.sleep(0.01)
        await sending.stop()

    run(scenario)
    assert destination.delivered == []
    assert sorted(destination.dropped) == [("queued", "shutdown"), ("sending", "shutdown")]


# --- retry -----------------------------------------------------------------------------------


def test_the_backoff_doubles_up_to_its_ceiling_with_jitter_within_the_budget() -> None:
    settings = RetrySettings(
        initial_interval=Duration(1), max_interval=Duration(4), max_elapsed_time=Duration(20)
    )
    delays = list(settings.delays(random.Random(7)))
    bases = [1, 2, 4, 4, 4, 4, 4, 4]
    for delay, base in zip(delays, bases, strict=False):
        assert 0.5 * base <= delay <= 1.5 * base
    assert len(delays) >= 4 and sum(delays) <= 20
    assert list(RetrySettings(enabled=False).delays()) == []


class Attempts:
    def __init__(self, *outcomes: Exception | str) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sleeps the retry loop asks for, taken at once; the clock moves by them."""
    slept: list[float] = []
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(retry.asyncio, "sleep", sleep)
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    return slept


FAST = RetrySettings(
    initial_interval=Duration(1), max_interval=Duration(1), max_elapsed_time=Duration(10)
)


def test_retryable_errors_are_tried_again_and_a_success_ends_it(waits: list[float]) -> None:
    attempts = Attempts(Retryable("503"), Retryable("reset"), "delivered")
    assert asyncio.run(send_with_retry(attempts, FAST)) == "delivered"
    assert attempts.calls == 3
    assert waits[0] == 0 and all(0.5 <= w <= 1.5 for w in waits[1:])


def test_a_permanent_error_is_not_retried(waits: list[float]) -> None:
    attempts = Attempts(Permanent("400"), "never")
    with pytest.raises(Permanent):
        asyncio.run(send_with_retry(attempts, FAST))
    assert attempts.calls == 1


def test_a_server_s_wait_is_honoured_and_counts_against_the_budget(waits: list[float]) -> None:
    attempts = Attempts(Throttled(4.0), "delivered")
    assert asyncio.run(send_with_retry(attempts, FAST)) == "delivered"
    assert waits == [0.0, 4.0]
    attempts = Attempts(Throttled(60.0), "never")
    with pytest.raises(Throttled):
        asyncio.run(send_with_retry(attempts, FAST))  # past max_elapsed_time: given up
    assert attempts.calls == 1


def test_the_budget_ends_the_retries_with_the_last_error(waits: list[float]) -> None:
    attempts = Attempts(*[Retryable(f"try {n}") for n in range(100)])
    with pytest.raises(Retryable, match="try"):
        asyncio.run(send_with_retry(attempts, FAST))
    assert 6 <= attempts.calls <= 21 and sum(waits) <= 10


def test_giving_up_leaves_what_was_sent_out_of_cyclic_garbage(waits: list[float]) -> None:
    """The error raised when the budget ends must not sit in a reference cycle with the retry
    loop's frame, holding the sender's frames and what they sent until the garbage collector
    runs (the sidecar runs it rarely): a dead Sentry gives up on envelope after envelope."""
    envelope = b"an envelope " * 1000

    async def send() -> None:
        body = envelope  # what a sender's frame holds while it sends
        raise Retryable(f"down, {len(body)} bytes unsent")

    async def give_up() -> None:  # as the sending queue's worker does
        with pytest.raises(Retryable):
            await send_with_retry(send, FAST)

    frames = frames_in(cyclic_garbage(lambda: asyncio.run(give_up())))
    assert [f.f_code.co_name for f in frames if envelope in f.f_locals.values()] == []


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("1e999", 100.0), ("nan", None), ("soon", None),
     ("", None), (None, None)],
)  # fmt: skip
def test_retry_after_is_a_bounded_number_of_seconds(value: str | None, seconds: float) -> None:
    assert retry_after_s(value, most=100.0) == seconds


def test_a_running_queue_s_depth_and_capacity_are_on_metrics() -> None:
    """Read when /metrics is: the items waiting and queue_size, per exporter, for running
    queues only (a stopped one, say a reload's old one, is gone from the page)."""
    from prometheus_client import generate_latest

    from collector.telemetry import REGISTRY

    destination = Destination()
    name = f"depth-{random.randrange(10**9)}"

    def gauges() -> tuple[float | None, float | None]:
        read = REGISTRY.get_sample_value
        labels = {"exporter": name}
        return (read("otelsidecar_exporter_queue_size", labels),
                read("otelsidecar_exporter_queue_capacity", labels))  # fmt: skip

    async def scenario() -> None:
        settings = QueueSettings(queue_size=7, num_consumers=1)
        sending = sending_queue(name, settings, destination.deliver, len, destination.drop,
                                None)  # type: ignore[arg-type]  # fmt: skip
        assert gauges() == (None, None)  # not started
        destination.gate.clear()
        sending.start()
        for item in ("a", "b", "c", "d"):
            sending.submit(item)
        await asyncio.sleep(0)  # one taken by the sender, held at the gate
        assert gauges() == (3.0, 7.0)
        text = generate_latest(REGISTRY).decode()
        assert "# HELP otelsidecar_exporter_queue_size Batches waiting in an exporter's" in text
        assert "# HELP otelsidecar_exporter_queue_capacity An exporter's queue_size." in text
        destination.gate.set()
        await sending.drain()
        assert gauges() == (0.0, 7.0)
        await sending.stop()
        assert gauges() == (None, None)

    run(scenario)


def test_stop_returns_once_its_senders_ended_and_may_be_called_twice() -> None:
    """What was being sent when stop was called is dropped as ``shutdown`` by the time stop
    returns; a second stop is harmless."""
    destination = Destination()

    async def scenario() -> None:
        sending = queue(destination, num_consumers=1)
        destination.gate.clear()
        sending.start()
        sending.submit("mid-send")
        await asyncio.sleep(0)
        await sending.stop()
        assert destination.dropped == [("mid-send", "shutdown")]
        assert not sending.running
        await sending.stop()

    run(scenario)
