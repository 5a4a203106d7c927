"""Realistic traffic for the HelloAgents backend: what `make demo`, the tests and the overhead
benchmark send.

A weighted mix of the service's requests from the learners the database starts with, some
slow (> 1 s), some failing deep inside the code sandbox, some timing out; every request carries an
``Authorization`` bearer token and a session cookie whose values must never reach an output.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

SECRET_TOKEN = "demo-bearer-7d1f0c9a2b"
SESSION_COOKIE = "demo-session-5e2b81f4"


@dataclass(frozen=True)
class Call:
    kind: str  # what the request exercises, for tallies and tests
    method: str
    path: str
    body: dict[str, Any] | None = None


CALLS: list[tuple[float, Call]] = [
    (3, Call("list", "GET", "/api/lessons")),
    (3, Call("lesson", "GET", "/api/lessons/2")),
    (2, Call("me", "GET", "/api/users/me")),
    (3, Call("execute", "POST", "/api/execute", {"lesson_id": 1, "code": "x = 6\nprint(x * 7)"})),
    (
        0.5,
        Call(
            "error",
            "POST",
            "/api/execute",
            {"lesson_id": 3, "code": "total = 10\nprint(total / 0)"},
        ),
    ),
    (0.3, Call("slow", "POST", "/api/execute", {"lesson_id": 2, "code": "sleep(1.2)\nprint(1)"})),
    (0.2, Call("timeout", "POST", "/api/execute", {"lesson_id": 2, "code": "sleep(9)"})),
    (1.5, Call("agent", "POST", "/api/agents/tutor/runs", {"prompt": "explain tools"})),
    (0.3, Call("slow_agent", "POST", "/api/agents/tutor/runs", {"prompt": "think hard: memory"})),
    (0.5, Call("health", "GET", "/health")),
]


@dataclass
class Tally:
    """What was sent and how it was answered; thread-safe."""

    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    slow: int = 0
    failed: int = 0  # no answer at all
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return sum(self.kinds.values())

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def add(self, call: Call, status: int | None, seconds: float) -> None:
        with self._lock:
            self.kinds[call.kind] += 1
            if status is None:
                self.failed += 1
            else:
                self.statuses[status] += 1
            self.slow += seconds > 1.0


def send(client: httpx.Client, call: Call, user_id: int) -> int:
    """One request as the learner ``user_id``; the HTTP status."""
    headers = {
        "X-User-Id": str(user_id),
        "Authorization": f"Bearer {SECRET_TOKEN}",
        "Cookie": f"session={SESSION_COOKIE}",
        "X-Request-Id": f"req-{random.getrandbits(48):012x}",
        "User-Agent": "helloagents-traffic/1.0",
    }
    try:
        response = client.request(call.method, call.path, json=call.body, headers=headers)
    except (httpx.ReadError, httpx.RemoteProtocolError):
        # uvicorn closes a keep-alive connection after a request that failed with an exception;
        # a request sent on it meanwhile never started: send it again on a new connection.
        response = client.request(call.method, call.path, json=call.body, headers=headers)
    return response.status_code


def play(
    base_url: str,
    seconds: float,
    *,
    workers: int = 4,
    seed: int = 7,
    calls: list[tuple[float, Call]] = CALLS,
    on_answer: Callable[[Tally], None] | None = None,
) -> Tally:
    """Send the mix from ``workers`` threads for ``seconds``; the tally of answers."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    weights = [weight for weight, _ in calls]

    def worker(index: int) -> None:
        rng = random.Random(seed + index)
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while time.monotonic() < deadline:
                call = rng.choices(calls, weights)[0][1]
                started = time.monotonic()
                try:
                    status: int | None = send(client, call, rng.randint(1, 20))
                except httpx.HTTPError:
                    status = None
                tally.add(call, status, time.monotonic() - started)
                if on_answer is not None:
                    on_answer(tally)
                time.sleep(rng.uniform(0.01, 0.05))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally
