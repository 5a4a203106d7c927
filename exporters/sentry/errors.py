"""Sentry error events from exception span events and exception log records, with the
breadcrumbs of their trace, and how an oversized one is made lighter."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from collector.attributes import EXCEPTION_CHAIN
from exporters.sentry import chain, traceback
from exporters.sentry.filtering import sentry_safe
from exporters.sentry.logs import is_exception_log, log_attributes, log_body, log_level
from exporters.sentry.mapping import (
    NS,
    STATUS_ERROR,
    Defaults,
    first,
    http_status,
    otel_context,
    segment_scope,
    span_op,
    trace_context,
    transaction_name,
)
from exporters.sentry.records import Event, LogRecord, SpanRecord

_BREADCRUMB_LEVEL = {"warn": "warning", "trace": "debug"}
# Where a log record was written, not what it says: not a breadcrumb's data.
_NOT_DATA = ("code.", "thread.", "process.", "exception.", "otel_sidecar.")
MAX_BREADCRUMBS = 100


def error_from_span_event(
    span: SpanRecord,
    event: Event,
    segment: SpanRecord | None,
    breadcrumbs: list[dict[str, Any]],
    defaults: Defaults,
) -> dict[str, Any]:
    values = exception_values(event.attributes, "", handled=_handled(span, event.attributes))
    return _error(values, event.time_ns or span.end_ns, span, segment, breadcrumbs, defaults)


def exception_values(
    attrs: dict[str, Any], message: str, *, handled: bool | None
) -> list[dict[str, Any]]:
    """From the zero-code side's structured chain when it is there and sound, else from
    OpenTelemetry's ``exception.*`` attributes and the traceback text."""
    return chain.exception_values(attrs.get(EXCEPTION_CHAIN), handled=handled) or (
        traceback.exception_values(
            str(attrs.get("exception.type") or "Exception"),
            str(attrs.get("exception.message") or message),
            attrs.get("exception.stacktrace"),
            handled=handled,
        )
    )


def _handled(span: SpanRecord, attrs: dict[str, Any]) -> bool | None:
    """Unhandled when it escaped: said so, or it failed its span (the instrumentations record
    an exception and set the span's ERROR status only when it leaves the span). The
    OpenTelemetry SDK writes ``exception.escaped`` as the text "True"/"False"."""
    escaped = attrs.get("exception.escaped")
    if isinstance(escaped, str):
        escaped = {"true": True, "false": False}.get(escaped.lower())
    if escaped is True or span.status_code == STATUS_ERROR:
        return False
    return None if escaped is None else not escaped


def error_from_log(
    record: LogRecord,
    span: SpanRecord | None,
    segment: SpanRecord | None,
    breadcrumbs: list[dict[str, Any]],
    defaults: Defaults,
) -> dict[str, Any]:
    # Logged: caught, unless the record says it escaped (the zero-code side's excepthooks).
    escaped = str(record.attributes.get("exception.escaped")).lower() == "true"
    values = exception_values(record.attributes, log_body(record), handled=not escaped)
    event = _error(values, record.time_ns, span, segment, breadcrumbs, defaults, record.resource)
    event["logger"] = record.scope or "otel"
    event["level"] = "fatal" if record.severity_number >= 21 else "error"
    event["logentry"] = {"formatted": log_body(record)}
    if span is None and record.trace_id:
        # Sentry's trace context needs a span id; a log outside any span gets a fresh one.
        span_id = record.span_id or uuid.uuid4().hex[:16]
        event["contexts"]["trace"] = {"trace_id": record.trace_id, "span_id": span_id}
    return event


def _error(
    values: list[dict[str, Any]],
    time_ns: int,
    span: SpanRecord | None,
    segment: SpanRecord | None,
    breadcrumbs: list[dict[str, Any]],
    defaults: Defaults,
    resource: dict[str, Any] | None = None,
) -> dict[str, Any]:
    for value in values:
        for frame in value.get("stacktrace", {}).get("frames", []):
            if "vars" in frame:
                frame["vars"] = sentry_safe(frame["vars"])
    event: dict[str, Any] = {
        "level": "error",
        "timestamp": time_ns / NS,
        "exception": {"values": values},
        "contexts": {},
    }
    if segment is not None:
        event.update(segment_scope(segment))
        event["transaction"] = transaction_name(segment, defaults.transaction_style)[0]
    if span is not None:
        event["contexts"]["trace"] = trace_context(span)
        if span is not segment:
            event["contexts"]["otel"] = otel_context(span)
    if breadcrumbs:
        event["breadcrumbs"] = {"values": breadcrumbs[-MAX_BREADCRUMBS:]}
    return defaults.apply(event, resource if resource is not None else _resource(span, segment))


def lighten(event: dict[str, Any]) -> bool:
    """Take the next thing an oversized event can best spare; False when nothing is left.
    In order: frames' variables, breadcrumbs, frames' source lines, spans' and contexts' data."""
    for step in (_without_vars, _without_breadcrumbs, _without_source, _without_data):
        if step(event):
            return True
    return False


def _frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    values = event.get("exception", {}).get("values", [])
    return [f for v in values for f in v.get("stacktrace", {}).get("frames", [])]


def _without_vars(event: dict[str, Any]) -> bool:
    return any([frame.pop("vars", None) is not None for frame in _frames(event)])


def _without_breadcrumbs(event: dict[str, Any]) -> bool:
    return event.pop("breadcrumbs", None) is not None


def _without_source(event: dict[str, Any]) -> bool:
    removed = [
        frame.pop(field, None) is not None
        for frame in _frames(event)
        for field in ("pre_context", "post_context")
    ]
    return any(removed)


def _without_data(event: dict[str, Any]) -> bool:
    removed = [span.pop("data", None) is not None for span in event.get("spans", [])]
    contexts = event.get("contexts", {})
    removed += [contexts.get("trace", {}).pop("data", None) is not None,
                contexts.pop("otel", None) is not None]  # fmt: skip
    return any(removed)


def _resource(span: SpanRecord | None, segment: SpanRecord | None) -> dict[str, Any]:
    source = span or segment
    return source.resource if source is not None else {}


def breadcrumbs(
    spans: Iterable[SpanRecord], logs: Iterable[LogRecord], before_ns: int
) -> list[dict[str, Any]]:
    """The trace's HTTP and DB spans and logs that happened before ``before_ns``, in order."""
    crumbs: list[tuple[int, dict[str, Any]]] = []
    for span in spans:
        if span.start_ns < before_ns:
            crumb = _span_breadcrumb(span)
            if crumb:
                crumbs.append((span.start_ns, crumb))
    for record in logs:
        if record.time_ns <= before_ns and not is_exception_log(record):
            crumbs.append((record.time_ns, _log_breadcrumb(record)))
    crumbs.sort(key=lambda pair: pair[0])
    return [sentry_safe(crumb) for _, crumb in crumbs[-MAX_BREADCRUMBS:]]


def _span_breadcrumb(span: SpanRecord) -> dict[str, Any] | None:
    op, description = span_op(span)
    timestamp = span.start_ns / NS
    if op == "http.client":
        data: dict[str, Any] = {"method": description.split(" ", 1)[0]}
        url = first(span.attributes, "url.full", "http.url")
        if url:
            data["url"] = str(url)
        code = http_status(span.attributes)
        if code is not None:
            data["status_code"] = code
        return {"type": "http", "category": "httplib", "data": data, "timestamp": timestamp}
    if op == "db":
        return {"type": "query", "category": "query", "message": description,
                "timestamp": timestamp}  # fmt: skip
    return None


def _log_breadcrumb(record: LogRecord) -> dict[str, Any]:
    level = log_level(record)
    crumb = {
        "type": "default",
        "category": record.scope or "log",
        "level": _BREADCRUMB_LEVEL.get(level, level),
        "message": log_body(record),
        "timestamp": record.time_ns / NS,
    }
    data = {k: v for k, v in log_attributes(record).items() if not k.startswith(_NOT_DATA)}
    if data:
        crumb["data"] = data  # the app's own keys (structlog's, logging's extra=)
    return crumb
