"""The ``slow_spans`` processor (traces): marks slow requests and queries, and logs each one.

It runs before the sampler, so it sees every span. A SERVER span longer than
``threshold_ms`` and a DB client span (one with ``db.system``/``db.system.name``) longer than
``db_threshold_ms`` get the attribute ``slow=true`` (a ``slow:true`` tag in Sentry), and the
sidecar logs the slow-request JSON line for each, values scrubbed:

    {"event": "slow_request", "path", "method", "duration_ms", "threshold_ms", "user_id",
     "trace_id"}
    {"event": "slow_query", "statement", "db_system", "duration_ms", "threshold_ms",
     "user_id", "trace_id"}

Per span only the duration is computed; attributes are read for slow spans alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector.attributes import first, has
from collector.component import TRACES, Consumer, Kind, Processor
from collector.processors.scrubber import Scrubber
from collector.scrubbing import DEFAULT_RULES, Rules
from collector.settings import setting
from collector.signals import Signal
from collector.telemetry import RECENT_SLOW, SLOW, LineBudget, log

_SERVER, _CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
_MS = 1_000_000  # nanoseconds


MAX_FIELD_CHARS = 1024  # a route or statement longer than this is cut in the log line


@dataclass(frozen=True)
class SlowSpansSettings:
    threshold_ms: float = setting(1000.0, minimum=0)
    db_threshold_ms: float = setting(100.0, minimum=0)
    # Log lines written per second at most (a burst of ten seconds' worth); every slow span is
    # still marked and counted. What is skipped is told by one slow_lines_skipped line.
    log_lines_per_second: float = setting(20.0, minimum=0.1, maximum=100_000)


class SlowSpans(Processor):
    def __init__(self, name: str, settings: SlowSpansSettings, signal: Signal, next: Consumer):
        super().__init__(name, signal, next)
        self._server_ns = settings.threshold_ms * _MS
        self._db_ns = settings.db_threshold_ms * _MS
        self._settings = settings
        self.rules: Rules = DEFAULT_RULES  # its pipeline's scrubber's, once joined
        self._requests = SLOW.labels(name, "slow_request")
        self._queries = SLOW.labels(name, "slow_query")
        self._lines = LineBudget(settings.log_lines_per_second, "slow_lines_skipped",
                                 processor=name)  # fmt: skip

    def joined(self, chain: Sequence[object], exporters: Sequence[object]) -> None:
        """Its log lines are written before the scrubber sees the batch: they obey the rules
        of its pipeline's scrubber, the configured ones too."""
        scrubbers = [p for p in chain if isinstance(p, Scrubber)]
        if scrubbers:
            self.rules = scrubbers[0].rules

    async def consume(self, batch: ExportTraceServiceRequest) -> None:
        self.mark(batch)
        await self._next.consume(batch)

    def mark(self, batch: ExportTraceServiceRequest) -> int:
        """Mark and log the slow spans of a batch; returns how many there were."""
        shortest = min(self._server_ns, self._db_ns)
        found = 0
        for resource_spans in batch.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.end_time_unix_nano - span.start_time_unix_nano > shortest:
                        found += self._check(span)
        return found

    def _check(self, span: Span) -> int:
        duration_ns = span.end_time_unix_nano - span.start_time_unix_nano
        attributes = span.attributes
        if span.kind == _SERVER and duration_ns > self._server_ns:
            describe = self._request_event
            self._requests.inc()
        elif (
            span.kind == _CLIENT
            and duration_ns > self._db_ns
            and (has(attributes, "db.system.name") or has(attributes, "db.system"))
        ):
            describe = self._query_event
            self._queries.inc()
        else:
            return 0
        if not has(attributes, "slow"):
            attributes.add(key="slow").value.bool_value = True
        self._log(lambda: describe(span, duration_ns), lambda: self._page_entry(span, duration_ns))
        return 1

    async def shutdown(self) -> None:
        self._lines.flush()  # how many lines were left out since the last one

    def _log(
        self, describe: Callable[[], dict[str, Any]], entry: Callable[[], dict[str, Any]]
    ) -> None:
        """One line, unless the rate is spent (then counted, and told on the next line)."""
        if self._lines.allow():
            log.warning(**describe())
            RECENT_SLOW.append(entry())  # the status page's list: of the lines logged

    def _page_entry(self, span: Span, duration_ns: int) -> dict[str, Any]:
        """For the status page: a route template or a database system, never a raw path,
        statement or user."""
        where = first(span.attributes, "http.route", "db.system.name", "db.system")
        return {
            "event": "slow_request" if span.kind == _SERVER else "slow_query",
            "where": self._scrubbed(where) if isinstance(where, str) else "",
            "duration_ms": round(duration_ns / _MS, 2),
            "trace_id": span.trace_id.hex(),
        }

    def _request_event(self, span: Span, duration_ns: int) -> dict[str, Any]:
        path = first(span.attributes, "http.route", "url.path", "http.target")
        if isinstance(path, str):
            path = path.partition("?")[0]
        return {
            "event": "slow_request",
            "path": self._scrubbed(path),
            "method": self._scrubbed(first(span.attributes, "http.request.method", "http.method")),
            **self._common(span, duration_ns, self._settings.threshold_ms),
        }

    def _query_event(self, span: Span, duration_ns: int) -> dict[str, Any]:
        statement = first(span.attributes, "db.query.text", "db.statement")
        return {
            "event": "slow_query",
            "statement": self._scrubbed(statement, key="db.statement"),
            "db_system": self._scrubbed(first(span.attributes, "db.system.name", "db.system")),
            **self._common(span, duration_ns, self._settings.db_threshold_ms),
        }

    def _common(self, span: Span, duration_ns: int, threshold_ms: float) -> dict[str, Any]:
        return {
            "duration_ms": round(duration_ns / _MS, 2),
            "threshold_ms": float(threshold_ms),
            "user_id": self._scrubbed(first(span.attributes, "enduser.id"), key="enduser.id"),
            "trace_id": span.trace_id.hex(),
        }

    def _scrubbed(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, list | dict):  # an array or a map: scrubbed as the JSON it logs as
            value = json.dumps(value, ensure_ascii=False, default=str)
        if not isinstance(value, str):
            return value
        text = self.rules.scrub_text(value, key=key)  # whole first: a cut must not split a secret
        return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "…"


KIND = Kind(SlowSpansSettings, SlowSpans, TRACES)  # registered as an entry point (pyproject.toml)
