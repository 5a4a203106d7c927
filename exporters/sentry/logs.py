"""Sentry log items (the ``log`` envelope item) from OpenTelemetry log records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from collector.attributes import EXCEPTION_CHAIN
from exporters.sentry.mapping import NS, Defaults, resource_contexts
from exporters.sentry.records import LogRecord

_SEVERITY = ["trace", "debug", "info", "warn", "error", "fatal"]  # by (number - 1) // 4


def is_exception_log(record: LogRecord) -> bool:
    return "exception.type" in record.attributes or "exception.message" in record.attributes


def log_level(record: LogRecord) -> str:
    if 1 <= record.severity_number <= 24:
        return _SEVERITY[(record.severity_number - 1) // 4]
    text = record.severity_text.lower()
    return {"warning": "warn", "critical": "fatal"}.get(text, text if text in _SEVERITY else "info")


def log_body(record: LogRecord) -> str:
    """The message: a string body as is; a structured body's ``event``/``message`` key."""
    body = record.body
    if isinstance(body, dict):
        message = body.get("event", body.get("message"))
        return str(message) if message is not None else json.dumps(body, default=str)
    return "" if body is None else str(body)


def log_attributes(record: LogRecord) -> dict[str, Any]:
    """The record's attributes and a structured body's keys; never the frames, which belong to
    the error event, not the log line."""
    attributes: dict[str, Any] = {}
    if isinstance(record.body, dict):  # structlog keys of a structured body
        attributes.update((k, v) for k, v in record.body.items() if k not in ("event", "message"))
    attributes.update(record.attributes)
    attributes.pop(EXCEPTION_CHAIN, None)
    return attributes


def log_items(records: Iterable[LogRecord], defaults: Defaults) -> list[dict[str, Any]]:
    """Entries of a Sentry ``log`` envelope item, with the attributes sentry-sdk gives its own
    (lower-case severity, runtime, ``server.address``). What comes from the resource and scope
    is typed once for all their records."""
    shared: dict[tuple[int, str], _Source] = {}
    items = []
    for record in records:
        key = (id(record.resource), record.scope)  # the records keep their resources alive
        common = shared.get(key)
        if common is None:
            common = shared[key] = _source_attributes(record, defaults)
        items.append(_log_item(record, common))
    return items


# The attribute names a record's resource and scope decide (a record's own of those names
# gives way), and the typed values of those that are set.
_Source = tuple[frozenset[str], dict[str, Any]]


def _source_attributes(record: LogRecord, defaults: Defaults) -> _Source:
    """What a record's resource and scope decide, typed once for all their records."""
    environment, release = defaults.environment_release(record.resource)
    runtime = resource_contexts(record.resource).get("runtime", {})
    source = {
        "sentry.environment": environment,
        "sentry.release": release,
        "sentry.origin": "auto.log.otel",
        "sentry.sdk.name": "otel-sidecar",
        "sentry.sdk.version": defaults.sdk_version,
        "service.name": record.resource.get("service.name"),
        "server.address": record.resource.get("host.name"),
        "process.runtime.name": runtime.get("name"),
        "process.runtime.version": runtime.get("version"),
        "logger.name": record.scope or None,
    }
    return frozenset(source), {k: _typed(v) for k, v in source.items() if v is not None}


def _log_item(record: LogRecord, common: _Source) -> dict[str, Any]:
    decided, typed_source = common
    level = log_level(record)
    attributes = log_attributes(record)
    attributes["sentry.severity_number"] = record.severity_number or None
    attributes["sentry.severity_text"] = level
    typed = {k: _typed(v) for k, v in attributes.items() if v is not None and k not in decided}
    typed.update(typed_source)
    item: dict[str, Any] = {
        "timestamp": record.time_ns / NS,
        "level": level,
        "body": log_body(record),
        "attributes": typed,
    }
    if record.trace_id:
        item["trace_id"] = record.trace_id
    if record.span_id:
        item["span_id"] = record.span_id
    return item


def _typed(value: Any) -> dict[str, Any]:
    if type(value) is str:  # most are: one test instead of four
        return {"value": value, "type": "string"}
    if isinstance(value, bool):
        return {"value": value, "type": "boolean"}
    if isinstance(value, int):
        return {"value": value, "type": "integer"}
    if isinstance(value, float):
        return {"value": value, "type": "double"}
    if isinstance(value, str):
        return {"value": value, "type": "string"}
    return {"value": json.dumps(value, default=str), "type": "string"}
