"""Release health: Sentry ``sessions`` aggregates, one request one session, as sentry-sdk counts
them in its server mode, but from every request rather than the sampled ones.

A SERVER span is a request session: ``crashed`` when it failed (status ERROR or an ``exception``
event that escaped), ``errored`` when it recorded a handled exception, else ``exited``. The
Sentry exporter counts the server spans it receives: every sampled one, and those of unsampled
traces that failed (the sampler hands them on for their error events). The sampler counts the
rest, the unsampled healthy ones, and hands on the count (:data:`UNSAMPLED_SESSIONS`). So the
crash-free rate Sentry shows is exact at any sample rate.

Sentry only keeps sessions that name a release; without one, nothing is counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from sentry_sdk.envelope import Item

from exporters.sentry.envelope import json_payload
from exporters.sentry.records import SERVER, SpanRecord

STATUSES = ("exited", "errored", "crashed")
_ERROR = 2
MAX_BUCKETS = 10_000  # (minute, release, environment): far more than a flush interval holds

Key = tuple[int, str, str]  # (minute as Unix seconds, release, environment)


def status(span: SpanRecord) -> str:
    if span.status_code == _ERROR:
        return "crashed"
    exceptions = [event for event in span.events if event.name == "exception"]
    if any(str(e.attributes.get("exception.escaped")).lower() == "true" for e in exceptions):
        return "crashed"
    return "errored" if exceptions else "exited"


def minute(time_ns: int) -> int:
    seconds = time_ns // 1_000_000_000
    return seconds - seconds % 60


class Sessions:
    """Counts per (minute, release, environment), taken whole at every flush: Sentry adds up
    the aggregates it receives for one minute, as it does sentry-sdk's."""

    def __init__(self) -> None:
        self._counts: dict[Key, dict[str, int]] = {}
        self.overflow = 0  # sessions not counted: too many buckets (a flood of releases)

    def add(self, key: Key, state: str, count: int = 1) -> None:
        bucket = self._counts.get(key)
        if bucket is None:
            if len(self._counts) >= MAX_BUCKETS:
                self.overflow += count
                return
            bucket = self._counts[key] = dict.fromkeys(STATUSES, 0)
        bucket[state] += count

    def requests(self, spans: Iterable[SpanRecord], release_environment: Any) -> None:
        """Count the server spans among ``spans``; ``release_environment(resource)`` names
        where each belongs."""
        for span in spans:
            if span.kind == SERVER:
                release, environment = release_environment(span.resource)
                if release:
                    self.add((minute(span.start_ns), release, environment), status(span))

    def take(self) -> list[Item]:
        """The ``sessions`` items for everything counted since the last take."""
        by_release: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for (started, release, environment), counts in sorted(self._counts.items()):
            aggregate = {"started": _iso(started), **{k: v for k, v in counts.items() if v}}
            by_release.setdefault((release, environment), []).append(aggregate)
        self._counts.clear()
        return list(_items(by_release))


def _items(by_release: dict[tuple[str, str], list[dict[str, Any]]]) -> Iterator[Item]:
    for (release, environment), aggregates in by_release.items():
        attrs = {"release": release}
        if environment:
            attrs["environment"] = environment
        yield Item(payload=json_payload({"attrs": attrs, "aggregates": aggregates}),
                   type="sessions")  # fmt: skip


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
