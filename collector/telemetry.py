"""The sidecar's own telemetry: JSON log lines on stdout and Prometheus counters.

Log events carry only the fields named in them; attribute values from user data and secrets
(DSN, header values) never appear here.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter as Tally
from collections import deque
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

RECEIVED = Counter(
    "otelsidecar_receiver_accepted_items",
    "Spans, log records or metric data points accepted by a receiver.",
    ["receiver", "signal"],
    registry=REGISTRY,
)
REFUSED = Counter(
    "otelsidecar_receiver_refused_requests",
    "Requests refused by a receiver, by reason (invalid, too_large, unsupported, timeout, "
    "memory_limit, queue_full, queued, overloaded, loop_lag).",
    ["receiver", "signal", "reason"],
    registry=REGISTRY,
)
EXPORTED = Counter(
    "otelsidecar_exporter_sent_items",
    "Spans, log records or metric data points an exporter delivered.",
    ["exporter", "signal"],
    registry=REGISTRY,
)
SAMPLED = Counter(
    "otelsidecar_sampler_kept_spans",
    "Spans the sampler kept (dropped ones count in otelsidecar_dropped_items, sampled_out).",
    ["processor"],
    registry=REGISTRY,
)
SLOW = Counter(
    "otelsidecar_slow_spans",
    "Slow spans marked and logged, by event (slow_request, slow_query).",
    ["processor", "event"],
    registry=REGISTRY,
)
DROPPED = Counter(
    "otelsidecar_dropped_items",
    "Items (spans, log records, data points) dropped after they were accepted, by component "
    "and reason.",
    ["component", "signal", "reason"],
    registry=REGISTRY,
)
SCRUBBED = Counter(
    "otelsidecar_scrubbed_values",
    "Values the scrubber replaced or removed, by rule (one per value and rule).",
    ["rule"],
    registry=REGISTRY,
)


def configure_logging(level: str = "info") -> None:
    """One JSON object per line on stdout, ISO timestamps, the level as a field."""
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (aiohttp, grpc) go to stderr, warnings up.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


log = structlog.get_logger("otel-sidecar")

# For the status page: the last slow-span lines (already scrubbed), and errors by exception
# type and route (bounded: past MAX_ERROR_KINDS new kinds are not remembered).
RECENT_SLOW: deque[dict[str, Any]] = deque(maxlen=20)
ERRORS: Tally[tuple[str, str]] = Tally()
MAX_ERROR_KINDS = 1000


def count_error(kind: str, route: str) -> None:
    if (kind, route) in ERRORS or len(ERRORS) < MAX_ERROR_KINDS:
        ERRORS[(kind, route)] += 1


class LineBudget:
    """At most ``rate`` lines a second, a burst of ten seconds' worth (a token bucket), for a
    component that could otherwise flood the sidecar's log. A line refused is counted; the
    count is told on one ``skipped_event`` line before the next line allowed, or once lines
    have been skipped for :data:`SUMMARY_INTERVAL_S`, at most once per interval (under a
    lasting flood, one summary for each allowed line would double the lines), and at
    ``flush``.
    """

    SUMMARY_INTERVAL_S = 10.0

    def __init__(self, rate: float, skipped_event: str, **context: str) -> None:
        self._rate, self._burst = rate, rate * 10
        self._tokens, self._at = self._burst, time.monotonic()
        self._skipped_event, self._context = skipped_event, context
        self._skipped = 0
        self._skipping_since = self._told_at = -math.inf

    def allow(self) -> bool:
        """Whether a line may be written now (if not, it is counted as skipped)."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            if not self._skipped:
                self._skipping_since = now
            self._skipped += 1
            if now - self._skipping_since >= self.SUMMARY_INTERVAL_S:
                self._tell_if_due(now)  # a flood that never lets a line through is told too
            return False
        self._tokens -= 1
        self._tell_if_due(now)
        return True

    def skip(self, lines: int) -> bool:
        """When no line may be written now: count ``lines`` as skipped and say True (the
        caller need not build them)."""
        now = time.monotonic()
        if self._tokens + (now - self._at) * self._rate >= 1:
            return False
        self._skipped += lines
        return True

    def _tell_if_due(self, now: float) -> None:
        if now - self._told_at >= self.SUMMARY_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Tell how many lines were skipped since the last time, if any were."""
        if self._skipped:
            log.warning(self._skipped_event, count=self._skipped, **self._context)
            self._skipped = 0
            self._told_at = time.monotonic()
