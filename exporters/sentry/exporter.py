"""The ``sentry`` exporter: transactions, error events and logs to a Sentry project.

Traces: spans go to a per-trace buffer (:mod:`segments`) and leave as one transaction per
segment plus an error event per ``exception`` span event; the error spans of traces the
sampler dropped (marked errors-only) give error events but no transaction. Logs: every record
becomes a Sentry log item; one carrying ``exception.*`` also becomes an error event, after its
trace's segment when it has one (for its request, user and breadcrumbs). An exception recorded
both as a span event and as a log (FastAPI does both) gives one error event.

``consume`` never waits for the network: envelopes go to the transport's bounded queue.
Every SERVER span is also counted for release health (:mod:`sessions`), sent as ``sessions``
aggregates every ``sessions_interval``.

With an empty ``dsn`` the exporter is ``disabled``: it takes batches and sends nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sentry_sdk.utils import BadDsn, Dsn

from collector import __version__
from collector.memory import MIB
from collector.settings import ConfigError, Duration, setting
from collector.signals import Batch, signal_of
from collector.telemetry import DROPPED, log
from exporters.retry import QueueSettings, RetrySettings
from exporters.sentry import envelope, errors, logs, mapping
from exporters.sentry.records import (
    Event,
    LogRecord,
    SpanRecord,
    logs_of,
    spans_of,
    unsampled_sessions_of,
)  # fmt: skip
from exporters.sentry.segments import Group, TraceBuffer
from exporters.sentry.sessions import Sessions
from exporters.sentry.transport import SentryTransport

_TICK_S = 0.25
MAX_SPANS_PER_TRANSACTION = 1000
MAX_EVENT_BYTES = 1_000_000  # Sentry's limit is 1 MiB, uncompressed


@dataclass(frozen=True)
class SentrySettings:
    dsn: str = setting("", secret=True)
    environment: str = ""
    release: str = ""
    # "route": /items/{item_id}, as sentry-sdk's FastAPI integration names transactions;
    # "method_route": GET /items/{item_id}.
    transaction_style: str = setting("route", choices=mapping.TRANSACTION_STYLES)
    # A segment leaves this long after its segment span arrived (late children join it).
    transaction_wait: Duration = setting(Duration(2), minimum=0, maximum=300)
    # Release health: how often the requests counted so far leave as ``sessions`` aggregates.
    sessions_interval: Duration = setting(Duration(60), minimum=0.1, maximum=3600)
    # Spans whose segment never arrives leave this long after their trace's last span.
    max_trace_wait: Duration = setting(Duration(30), minimum=0.1, maximum=3600)
    max_traces: int = setting(10_000, minimum=1, maximum=1_000_000)
    # ~2.4 KB of memory per ordinary buffered span: 20 000 spans are ~50 MB.
    max_buffered_spans: int = setting(20_000, minimum=1, maximum=1_000_000)
    # Spans with large attributes reach this first; logs kept for breadcrumbs count too.
    max_buffered_mib: int = setting(32, minimum=1, maximum=1 << 20)
    timeout: Duration = setting(Duration(30), minimum=0.1, maximum=300)
    sending_queue: QueueSettings = setting(factory=QueueSettings)
    retry_on_failure: RetrySettings = setting(factory=RetrySettings)

    def check(self, path: str) -> None:
        if not self.dsn:
            return
        try:
            parsed = Dsn(self.dsn)
        except BadDsn:
            parsed = None
        if parsed is None or not parsed.public_key or not parsed.project_id:
            # Never the value: a DSN is a credential.
            raise ConfigError(
                f"{path}.dsn: not a valid Sentry DSN "
                "(expected https://<public key>@<host>/<project id>)"
            )


class SentryExporter:
    # Gets the error spans of unsampled traces (collector.sampling), for error events.
    accepts_unsampled_errors = True
    # Spans wait in the trace buffer for their transaction before they reach the (maybe
    # persistent) queue: a kill loses that buffer whatever the queue's storage.
    durable = False

    def __init__(self, name: str, settings: SentrySettings) -> None:
        self.name = name
        self.settings = settings
        self.enabled = bool(settings.dsn)
        self._defaults = mapping.Defaults(
            settings.environment, settings.release, __version__, settings.transaction_style
        )
        self._buffer = TraceBuffer(
            settings.transaction_wait, settings.max_trace_wait,
            settings.max_traces, settings.max_buffered_spans, settings.max_buffered_mib * MIB,
        )  # fmt: skip
        self._sessions = Sessions()
        self._sessions_due = 0.0
        self._transport: SentryTransport | None = None
        self._public_key = ""
        self._tick: asyncio.Task[None] | None = None
        if self.enabled:
            self._public_key = Dsn(settings.dsn).public_key
            self._transport = SentryTransport(
                name, settings.dsn, settings.sending_queue, settings.retry_on_failure,
                settings.timeout,
            )  # fmt: skip

    def status(self) -> tuple[str, str]:
        if self._transport is None:
            return "disabled", "no DSN configured (set SENTRY_DSN)"
        if self._transport.last_error:
            return (
                "degraded",
                f"{self._transport.where}: last send failed ({self._transport.last_error})",
            )
        return "healthy", f"sending to {self._transport.where}"

    async def start(self) -> None:
        if self._transport is not None:
            await self._transport.start()
            self._tick = asyncio.create_task(self._tick_loop(), name=f"{self.name}-tick")

    async def shutdown(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            await asyncio.gather(self._tick, return_exceptions=True)
            self._tick = None
        if self._transport is not None:
            self._emit(self._buffer.flush_all())
            self._send_sessions()
            await self._transport.shutdown()
            self._transport = None

    def admit(self) -> None:
        """The pipeline's door: Refused("queue_full") while the sending queue is full and
        refusing, before any part of the pipeline takes a batch. What was let in is queued
        whatever the queue holds when it leaves the trace buffer, seconds later: a slow Sentry
        shows as refusals, not as drops of acknowledged data (one down for a minute, as drops,
        counted, so that the pipeline's other exporters keep getting data)."""
        if self._transport is not None:
            self._transport.admit()

    async def consume(self, batch: Batch) -> None:
        if self._transport is None:
            return
        now = time.monotonic()
        if signal_of(batch).value == "traces":
            spans = list(spans_of(batch))  # type: ignore[arg-type]
            self._count_sessions(spans, batch)  # type: ignore[arg-type]
            self._emit(self._buffer.add_spans(spans, now))
        else:
            self._take_logs(list(logs_of(batch)), now)  # type: ignore[arg-type]

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            try:
                now = time.monotonic()
                self._emit(self._buffer.due(now))
                if now >= self._sessions_due:
                    self._sessions_due = now + self.settings.sessions_interval
                    self._send_sessions()
                assert self._transport is not None
                self._transport.report_if_due()
            except Exception as error:  # a bug must not stop every later transaction
                log.error("sentry_tick_failed", exporter=self.name, error=type(error).__name__)

    # --- release health ----------------------------------------------------------------------

    def _count_sessions(self, spans: list[SpanRecord], batch: ExportTraceServiceRequest) -> None:
        self._sessions.requests(spans, self._release_environment)
        for resource, minutes in unsampled_sessions_of(batch):
            release, environment = self._release_environment(resource)
            if release:
                for minute, count in minutes.items():
                    self._sessions.add((minute, release, environment), "exited", count)

    def _release_environment(self, resource: dict[str, Any]) -> tuple[str, str]:
        environment, release = self._defaults.environment_release(resource)
        return str(release or ""), str(environment or "")

    def _send_sessions(self) -> None:
        items = self._sessions.take()
        if items:
            self._submit(envelope.Outgoing({"dsn": self.settings.dsn}, items))

    # --- logs --------------------------------------------------------------------------------

    def _take_logs(self, records: list[LogRecord], now: float) -> None:
        items = logs.log_items(records, self._defaults)
        for outgoing in envelope.log_envelopes(items, self.settings.dsn):
            self._submit(outgoing)
        traced = [r for r in records if r.trace_id and not logs.is_exception_log(r)]
        self._emit(self._buffer.add_logs(traced, now))  # evicted traces leave, not vanish
        failed = [r for r in records if logs.is_exception_log(r)]
        self._emit(self._buffer.add_logs([r for r in failed if r.trace_id], now, exception=True))
        for record in failed:
            if not record.trace_id:
                self._emit([Group(None, [], [], [record])])

    # --- traces ------------------------------------------------------------------------------

    def _emit(self, groups: list[Group]) -> None:
        for group in groups:
            segment = _segment(group)
            rate = segment.sample_rate if segment is not None else 1.0
            try:
                for event in self._events(group):
                    self._submit_event(event, rate)
            except Exception as error:  # one malformed trace must not stop the others
                DROPPED.labels(self.name, "error", "internal_error").inc()
                log.error("sentry_event_failed", exporter=self.name, error=type(error).__name__)
            if group.late:
                DROPPED.labels(self.name, "transaction", "late_span").inc(len(group.spans))

    def _events(self, group: Group) -> list[dict[str, Any]]:
        """The transaction (if sampled) and the error events of one group."""
        spans = group.spans
        segment = _segment(group)
        events: list[dict[str, Any]] = []
        if segment is not None and segment.sampled and not group.late:
            events.append(self._transaction(segment, spans[1:]))
        seen: set[tuple[str | None, str, str]] = set()
        for span, event in _outermost_records(spans):
            seen.add(_exception_key(span.span_id, event.attributes))
            crumbs = errors.breadcrumbs(spans, group.logs, event.time_ns)
            events.append(
                errors.error_from_span_event(span, event, segment, crumbs, self._defaults)
            )
        by_id = {span.span_id: span for span in spans}
        for record in group.exception_logs:
            if _exception_key(record.span_id, record.attributes) in seen:
                continue  # the same exception, already sent from the span event
            crumbs = errors.breadcrumbs(spans, group.logs, record.time_ns)
            span = by_id.get(record.span_id or "")
            events.append(errors.error_from_log(record, span, segment, crumbs, self._defaults))
        return events

    def _transaction(self, segment: SpanRecord, children: list[SpanRecord]) -> dict[str, Any]:
        """Sentry refuses events over 1 MiB: like sentry-python, keep the first 1000 spans."""
        if len(children) > MAX_SPANS_PER_TRANSACTION:
            dropped = len(children) - MAX_SPANS_PER_TRANSACTION
            DROPPED.labels(self.name, "span", "too_many_spans").inc(dropped)
            children = children[:MAX_SPANS_PER_TRANSACTION]
        return mapping.transaction(segment, children, self._defaults)

    def _trace_header(self, event: dict[str, Any], sample_rate: float) -> dict[str, str] | None:
        trace = event.get("contexts", {}).get("trace", {})
        if not trace.get("trace_id"):
            return None
        routed = event.get("transaction_info", {}).get("source") == "route" or (
            "transaction" in event and event.get("type") != "transaction"
        )
        return envelope.trace_header(
            trace["trace_id"], self._public_key, sample_rate,
            event.get("environment"), event.get("release"),
            event.get("transaction") if routed else None,
        )  # fmt: skip

    def _submit_event(self, event: dict[str, Any], sample_rate: float) -> None:
        """Sentry refuses events over 1 MiB: an oversized one sheds what it can spare (as
        sentry-sdk trims), and leaves whole or is dropped, counted. ``sample_rate``: what the
        trace's segment was kept at, for the trace header."""
        trace = self._trace_header(event, sample_rate)
        outgoing = envelope.event_envelope(event, self.settings.dsn, trace)
        while outgoing.size > MAX_EVENT_BYTES:
            if not errors.lighten(event):
                kind = "transaction" if event.get("type") == "transaction" else "error"
                DROPPED.labels(self.name, kind, "too_large").inc()
                log.warning("sentry_event_too_large", exporter=self.name, bytes=outgoing.size)
                return
            outgoing = envelope.event_envelope(event, self.settings.dsn, trace)
        self._submit(outgoing)

    def _submit(self, outgoing: envelope.Outgoing) -> None:
        assert self._transport is not None
        self._transport.submit(outgoing)


def _segment(group: Group) -> SpanRecord | None:
    return group.segment or (group.spans[0] if group.spans else None)


def _outermost_records(spans: list[SpanRecord]) -> list[tuple[SpanRecord, Event]]:
    """The ``exception`` events, less those an ancestor span recorded again: an exception that
    escapes nested spans (an HTTP client's, then the request's) is recorded on each, and is one
    error, best told by the outermost record, whose traceback is the longest."""
    records = [(s, e) for s in spans for e in s.events if e.name == "exception"]
    if len(records) < 2:
        return records
    parents = {span.span_id: span.parent_span_id for span in spans}
    recorded = {_exception_key(span.span_id, event.attributes) for span, event in records}

    def again_above(span: SpanRecord, event: Event) -> bool:
        ancestor, hops = span.parent_span_id, 0
        while ancestor is not None and hops < len(parents):  # hops: a forged cycle ends
            if _exception_key(ancestor, event.attributes) in recorded:
                return True
            ancestor, hops = parents.get(ancestor), hops + 1
        return False

    return [(span, event) for span, event in records if not again_above(span, event)]


def _exception_key(span_id: str | None, attributes: dict[str, Any]) -> tuple[str | None, str, str]:
    return span_id, str(attributes.get("exception.type")), str(attributes.get("exception.message"))
