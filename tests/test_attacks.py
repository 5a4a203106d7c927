"""Attacks and faults against the real process (``bench/attacks.py`` runs them and
prints the figures; the logic lives there once). ``memory_limiter: {limit_mib: 64}`` first in
the traces pipeline, the reference trace processors, the ``sentry`` exporter to a sink in its
own process. Each attack runs once (a module-scoped fixture per attack) and is judged on:

- peak RSS ≤ 64 MiB x 1.2 + the idle RSS measured after start;
- the answers clients get: 413 for what could never fit, 503 / UNAVAILABLE for overload;
- nothing accepted is lost: every accepted trace (span, for orphans) reaches the sink as a
  transaction, and no drop is counted on ``/metrics``;
- a normal request is accepted again within 10 s, and SIGTERM exits 0.

Smaller than the bench's runs so that the module takes about a minute and a half: the
big-request flood is 8 clients x 2 requests of 3.7 MiB (half over gRPC) and 16 x 1 over gRPC
alone, orphan spans leave after 8 s, and Sentry stalls for 8 s at 2,000 spans/s.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import attacks
from attacks import ACCEPTED, REFUSED, TOO_LARGE, Outcome, SentrySink

pytestmark = pytest.mark.slow

RECOVER_WITHIN_S = 10
QUICK = {"recover_within_s": RECOVER_WITHIN_S, "give_up_s": RECOVER_WITHIN_S}

RUNS: dict[str, Callable[[Path, SentrySink], Outcome]] = {
    "gzip": lambda tmp, sink: attacks.gzip_amplification(tmp, sink, **QUICK),
    "big": lambda tmp, sink: attacks.big_request_flood(
        tmp, sink, "mixed", clients=8, requests=2, **QUICK
    ),
    "big-grpc": lambda tmp, sink: attacks.big_request_flood(
        tmp, sink, "grpc", clients=16, requests=1, **QUICK
    ),
    "orphans": lambda tmp, sink: attacks.orphan_flood(
        tmp, sink, requests=130, max_trace_wait_s=8, **QUICK
    ),
    "stalled-sentry": lambda tmp, sink: attacks.stalled_sentry(
        tmp, sink, stall_s=8, spans_per_s=2000, **QUICK
    ),
}
# (answers allowed, answers of which at least one is expected)
ANSWERS = {
    "gzip": (set(TOO_LARGE), set(TOO_LARGE)),
    "big": (set(ACCEPTED + REFUSED), set(REFUSED)),
    "big-grpc": (set(ACCEPTED + REFUSED), set(REFUSED)),
    "orphans": (set(ACCEPTED + REFUSED), set(REFUSED)),
    "stalled-sentry": (set(ACCEPTED + REFUSED), set(REFUSED)),
}


@pytest.fixture(scope="module")
def sink() -> Iterator[SentrySink]:
    with SentrySink() as running:
        yield running


@pytest.fixture(scope="module", params=list(RUNS))
def outcome(
    request: pytest.FixtureRequest, sink: SentrySink, tmp_path_factory: pytest.TempPathFactory
) -> Outcome:
    result = RUNS[request.param](tmp_path_factory.mktemp(request.param), sink)
    print("\n" + attacks.render([result]))
    return result


def _row(outcome: Outcome) -> str:
    return "\n" + attacks.render([outcome])


def test_peak_rss_stays_within_the_bound(outcome: Outcome) -> None:
    assert outcome.within_bound, (
        f"peak RSS {outcome.peak_mib:.0f} MiB > {outcome.bound_mib:.0f} MiB "
        f"(64 x 1.2 + idle {outcome.idle_mib:.0f}){_row(outcome)}"
    )


def test_clients_are_refused_not_served_blindly(
    request: pytest.FixtureRequest, outcome: Outcome
) -> None:
    allowed, expected = ANSWERS[request.node.callspec.params["outcome"]]
    assert set(outcome.answers) <= allowed, _row(outcome)
    assert any(outcome.answers[label] for label in expected), _row(outcome)


def test_nothing_accepted_is_lost(outcome: Outcome) -> None:
    assert outcome.drops == {}, f"drops counted: {outcome.drops}{_row(outcome)}"
    assert outcome.lost == 0, (
        f"{outcome.lost} of {outcome.accepted} accepted {outcome.unit} never reached Sentry"
        f"{_row(outcome)}"
    )


def test_the_sidecar_recovers_and_exits_cleanly(outcome: Outcome) -> None:
    assert not outcome.crashed, _row(outcome)
    assert outcome.recovered, (
        f"no normal request accepted within {RECOVER_WITHIN_S} s after the attack{_row(outcome)}"
    )
    assert outcome.exit_code == 0, _row(outcome)
