"""Delivery to Sentry: a bounded queue, a few senders, and the envelope protocol's answers.

``POST {scheme}://{host}/api/{project}/envelope/`` with ``X-Sentry-Auth`` and a gzip body.
Every response's ``X-Sentry-Rate-Limits`` is honoured per category (error, transaction,
log_item); a 429 without it blocks everything for ``Retry-After`` seconds, else 60. While a
category is limited its items are dropped before sending. 413 and other 4xx: dropped, not
retried. 5xx and network errors: retried with backoff and jitter (``retry_on_failure``).
Every drop is counted with its reason and reported to Sentry in a ``client_report`` item, as
sentry-python does (``queue_overflow``, ``ratelimit_backoff``, ``send_error``,
``network_error``). No log line or error here ever contains the DSN or its key.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from sentry_sdk.envelope import Item
from sentry_sdk.utils import Dsn

from collector import __version__
from collector.telemetry import DROPPED, EXPORTED, log
from exporters.compression import gzip_compress
from exporters.http1 import Http1Client, HttpError
from exporters.queue import sending_queue
from exporters.retry import (
    Permanent,
    QueueSettings,
    Retryable,
    RetrySettings,
    retry_after_s,
    send_with_retry,
)
from exporters.sentry.envelope import OUTGOING, Outgoing, category, client_report, quantity

DEFAULT_RATE_LIMIT_S = 60.0
MAX_RATE_LIMIT_S = 86_400.0  # a server asking for longer gets a day, not forever
CLIENT_REPORT_INTERVAL_S = 30.0
_ALL = "*"  # a limit on every category
# The sidecar's drop reasons (on /metrics) -> the client-report reasons sentry-python sends;
# others (``shutdown``: still queued when the grace period ended) are reported by their own
# name, which the client-report protocol allows (a reason is any string).
_REPORT_REASONS = {
    "queue_full": "queue_overflow",
    "rate_limited": "ratelimit_backoff",
    "internal_error": "internal_sdk_error",
}


def parse_rate_limits(header: str, now: float) -> dict[str, float]:
    """``X-Sentry-Rate-Limits`` → {category or "*": monotonic time the limit ends}.

    Format: ``retry_after:categories:scope[:reason[:namespaces]]``, comma-separated; an empty
    category list means all categories.
    """
    limits: dict[str, float] = {}
    for entry in header.split(","):
        retry_after, _, rest = entry.strip().partition(":")
        seconds = retry_after_s(retry_after, MAX_RATE_LIMIT_S)
        if seconds is None:
            continue
        until = now + seconds
        categories = rest.split(":", 1)[0]
        for name in categories.split(";") if categories else [_ALL]:
            limits[name or _ALL] = max(until, limits.get(name or _ALL, 0.0))
    return limits


def retry_after_seconds(value: str | None) -> float:
    """A 429's ``Retry-After``, or :data:`DEFAULT_RATE_LIMIT_S` without a usable one."""
    seconds = retry_after_s(value, MAX_RATE_LIMIT_S)
    return DEFAULT_RATE_LIMIT_S if seconds is None else seconds


class SentryTransport:
    def __init__(
        self,
        name: str,
        dsn: str,
        queue: QueueSettings,
        retry: RetrySettings,
        timeout_s: float,
    ) -> None:
        self.name = name
        parsed = Dsn(dsn)
        auth = parsed.to_auth(client=f"otel-sidecar/{__version__}")
        self.where = f"project {parsed.project_id} at {parsed.host}"  # no key: safe to show
        self._queue = sending_queue(name, queue, self._deliver, _size, self._drop, OUTGOING)
        self._retry = retry
        headers = {
            "X-Sentry-Auth": auth.to_header(),
            "Content-Type": "application/x-sentry-envelope",
            "Content-Encoding": "gzip",
        }
        # auth.get_api_url(), with an IPv6 literal in brackets (which it leaves out).
        host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
        url = (
            f"{parsed.scheme}://{host}:{parsed.port}{parsed.path}api/{parsed.project_id}/envelope/"
        )
        self._client = Http1Client(url, headers, timeout_s, max_idle=queue.num_consumers)
        self._limits: dict[str, float] = {}
        self._discarded: Counter[tuple[str, str]] = Counter()
        self._last_report = time.monotonic()
        self.last_error: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue.start()

    async def shutdown(self) -> None:
        """Send what is queued (the pipeline bounds how long), then the last client report."""
        try:
            await self._queue.drain()
            if self._discarded:
                await self._deliver(Outgoing({}, []))
        finally:
            await self._queue.stop()
            await self._client.close()

    # --- the queue ---------------------------------------------------------------------------

    def admit(self) -> None:
        """The pipeline's door: Refused("queue_full") while the queue is full and refusing."""
        self._queue.admit()

    def submit(self, outgoing: Outgoing) -> None:
        """Queue an envelope without waiting. What is rate-limited is dropped; what finds the
        queue full is queued or dropped as :class:`~exporters.retry.WhenFull` says."""
        self._remove_limited(outgoing)
        if outgoing.items:
            self._queue.submit(outgoing)

    def report_if_due(self) -> None:
        """Send pending client reports on their own when no envelope has carried them."""
        due = time.monotonic() - self._last_report >= CLIENT_REPORT_INTERVAL_S
        if self._discarded and due and self._queue.empty() and not self.is_limited("internal"):
            self._queue.submit(Outgoing({}, []))

    def is_limited(self, name: str) -> bool:
        now = time.monotonic()
        return self._limits.get(name, 0.0) > now or self._limits.get(_ALL, 0.0) > now

    # --- one envelope ------------------------------------------------------------------------

    async def _deliver(self, outgoing: Outgoing) -> None:
        self._remove_limited(outgoing)  # limits may have arrived while it waited
        reports, reported = self._take_client_report()
        if not outgoing.items and not reports:
            return
        body = gzip_compress(outgoing.serialize(reports))
        try:
            status = await send_with_retry(lambda: self._send(body), self._retry)
        except Permanent as answer:
            self._drop(outgoing, "send_error")
            log.warning("sentry_rejected", exporter=self.name, status=str(answer))
            return
        except Retryable:
            self._drop(outgoing, "network_error")
            self._discarded.update(reported)  # the reports it carried go with the next envelope
            return
        if status == 429:
            self._count(outgoing, "rate_limited")  # Sentry counted these itself
        else:
            self._count_sent(outgoing)

    async def _send(self, body: bytes) -> int:
        """One POST: the status of an answer that ends it (2xx, or 429: its limits are set
        and Sentry counted the items); Retryable on a network error or 5xx, Permanent on
        another 4xx."""
        status = await self._post(body)
        if status is None or status >= 500:
            raise Retryable(self.last_error or "no answer")
        if 200 <= status < 300 or status == 429:
            return status
        raise Permanent(f"HTTP {status}")

    async def _post(self, body: bytes) -> int | None:
        try:
            answer = await self._client.post(body)  # never redirected: a POST would be lost
        except (HttpError, OSError, TimeoutError) as error:
            # The type only: a message could name the host, the URL holds the project's key.
            self.last_error = type(error).__name__
            return None
        self._update_limits(answer.status, answer.headers)
        self.last_error = None if answer.status < 400 else f"HTTP {answer.status}"
        return answer.status

    def _update_limits(self, status: int, headers: Mapping[str, str]) -> None:
        """``headers`` with lowercased names."""
        now = time.monotonic()
        header = headers.get("x-sentry-rate-limits")
        if header:
            new = parse_rate_limits(header, now)
        elif status == 429:
            new = {_ALL: now + retry_after_seconds(headers.get("retry-after"))}
        else:
            return
        for name, until in new.items():
            self._limits[name] = max(until, self._limits.get(name, 0.0))
        log.warning("sentry_rate_limited", exporter=self.name,
                    categories=sorted(new), seconds=round(max(new.values()) - now))  # fmt: skip

    # --- counting ----------------------------------------------------------------------------

    def _remove_limited(self, outgoing: Outgoing) -> None:
        kept = []
        for item in outgoing.items:
            name = category(item)
            if self.is_limited(name):
                self._record(name, "rate_limited", quantity(item))
            else:
                kept.append(item)
        outgoing.items = kept

    def _drop(self, outgoing: Outgoing, reason: str) -> None:
        for item in outgoing.items:
            self._record(category(item), reason, quantity(item))

    def _record(self, name: str, reason: str, count: int) -> None:
        """Count a drop on /metrics, and for the next client report under Sentry's name."""
        self._discarded[_REPORT_REASONS.get(reason, reason), name] += count
        DROPPED.labels(self.name, name, reason).inc(count)

    def _count(self, outgoing: Outgoing, reason: str) -> None:
        for name, count in outgoing.categories().items():
            DROPPED.labels(self.name, name, reason).inc(count)

    def _count_sent(self, outgoing: Outgoing) -> None:
        for name, count in outgoing.categories().items():
            EXPORTED.labels(self.name, name).inc(count)

    def _take_client_report(self) -> tuple[list[Item], Counter[tuple[str, str]]]:
        """The pending client report as an item, and its counts (to put back on failure)."""
        # Reports are data category "internal": a limit on everything holds them back too.
        if not self._discarded or self.is_limited("internal"):
            return [], Counter()
        reported, self._discarded = self._discarded, Counter()
        self._last_report = time.monotonic()
        return [client_report(reported)], reported


def _size(outgoing: Outgoing) -> int:
    return outgoing.size
