"""Sentry parity, asserted: the HelloAgents example through sentry-sdk in its process and through
zero-code + the sidecar, the same requests, one capturing server refereed by Relay. Every row
``bench/sentry_parity.py`` says must be the same (or better) is; its table is printed (``-s``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import sentry_parity
from sentry_parity import Captured

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sides() -> Iterator[tuple[Captured, Captured]]:
    yield sentry_parity.capture_both()


@pytest.mark.parametrize("row", sentry_parity.ROWS, ids=lambda row: f"{row.item}: {row.field}")
def test_row(sides: tuple[Captured, Captured], row: sentry_parity.Row) -> None:
    ((_, sdk, sidecar, verdict),) = sentry_parity.table(*sides, rows=[row])
    if row.expect != "differs":
        assert verdict == row.expect, f"sentry-sdk: {sdk!r}\nsidecar: {sidecar!r}"


def test_relay_finds_nothing_to_fix_or_scrub_in_the_sidecars_events(
    sides: tuple[Captured, Captured],
) -> None:
    _, sidecar = sides
    assert sidecar.events and sidecar.transactions and sidecar.logs and sidecar.sessions
    assert sidecar.referee_errors == []


def test_the_table_prints(sides: tuple[Captured, Captured]) -> None:
    table = sentry_parity.render(sentry_parity.table(*sides))
    print("\n" + table)
    assert table.count("\n") == len(sentry_parity.ROWS) + 1
