"""A full sending queue refuses at the pipeline's door, keeps what it let in, and gives up on a
destination full for a minute (its share dropped and counted, the other exporters fed)."""

from __future__ import annotations

import pytest

from exporters import retry
from exporters.retry import REFUSE_FOR_S, WhenFull


def test_refuses_then_takes_a_destination_full_for_a_minute_for_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    policy = WhenFull(refuse=True)
    assert not policy.door_closed(room=3) and policy.keeps()
    assert policy.door_closed(room=0) and policy.keeps()
    clock[0] += REFUSE_FOR_S - 1
    assert policy.door_closed(room=0) and policy.keeps()
    clock[0] += 1
    assert not policy.door_closed(room=0) and not policy.keeps()  # down: drop, counted
    assert not policy.door_closed(room=1)  # room again
    assert policy.door_closed(room=0) and policy.keeps()  # full again: refuses afresh


def test_drop_never_refuses() -> None:
    policy = WhenFull(refuse=False)
    assert not policy.door_closed(room=0) and not policy.keeps()
