"""OpenTelemetry → Sentry: transactions, error events and log items from span and log records.

``op``, ``description`` and ``status`` follow sentry-python's OpenTelemetry rules (HTTP server
and client, DB, RPC, messaging, FaaS), reading both the stable semantic conventions and the
old ones (``http.request.method``/``http.method``, ``db.query.text``/``db.statement``...).
A transaction is named as sentry-sdk's FastAPI integration names it, after the segment's
``http.route`` (source ``route``; ``METHOD route`` with ``transaction_style: method_route``), else
after the span (source ``custom``). ``request`` and ``contexts.response`` come from the segment's
HTTP attributes, ``user.id`` from ``enduser.id``, tags from ``sentry.tag.<name>``, contexts from
``sentry.context.<name>.<key>``; ``contexts.runtime``, ``contexts.os`` and ``server_name`` from
the resource. Every value here has already been through the scrubber.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from collector.attributes import EXCEPTION_CHAIN
from exporters.sentry import chain, traceback
from exporters.sentry.records import CLIENT, SERVER, Event, LogRecord, SpanRecord

_NS = 1e9
_STATUS_OK, _STATUS_ERROR = 1, 2
_GRPC_STATUS = [  # Sentry's span status for gRPC code 0 .. 16
    "ok", "cancelled", "unknown_error", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
    "aborted", "out_of_range", "unimplemented", "internal_error", "unavailable", "data_loss",
    "unauthenticated",
]  # fmt: skip
_SEVERITY = ["trace", "debug", "info", "warn", "error", "fatal"]  # by (number - 1) // 4
_BREADCRUMB_LEVEL = {"warn": "warning", "trace": "debug"}
# Where a log record was written, not what it says: not a breadcrumb's data.
_NOT_DATA = ("code.", "thread.", "process.", "exception.", "otel_sidecar.")
MAX_BREADCRUMBS = 100
FILTERED = "[Filtered]"
# Sentry filters whole string values that look like credentials (its "@password" rule), in
# every field but a few typed ones. Doing the same here means Sentry finds nothing left to
# scrub, and what Sentry shows is what the sidecar sent.
_SENTRY_SENSITIVE = re.compile(
    r"passw(?:or)?d|secret|api[-_]?key|auth|credentials|mysql_pwd|private[-_]?key"
    r"|token[^\s:=]{0,64}[:=]",  # bounded: a long run of "token" stays linear
    re.IGNORECASE,
)
_SENTRY_SAFE_KEYS = frozenset({"http.route", "route"})
_RUNTIME_NAMES = {"cpython": "CPython", "pypy": "PyPy", "ironpython": "IronPython"}
TRANSACTION_STYLES = ("route", "method_route")


@dataclass(frozen=True)
class Defaults:
    """What every event carries that does not come from the data."""

    environment: str
    release: str
    sdk_version: str
    transaction_style: str = "route"

    def environment_release(self, resource: dict[str, Any]) -> tuple[Any, Any]:
        """From config, else from the app's resource (either semantic convention)."""
        environment = self.environment or resource.get(
            "deployment.environment.name", resource.get("deployment.environment")
        )
        return environment, self.release or resource.get("service.version")

    def apply(self, event: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
        environment, release = self.environment_release(resource)
        event.update(
            event_id=uuid.uuid4().hex,
            platform="python",
            sdk={"name": "otel-sidecar", "version": self.sdk_version},
        )
        contexts = event.setdefault("contexts", {})
        for name, context in _resource_contexts(resource).items():
            contexts.setdefault(name, context)
        if resource.get("host.name"):
            event["server_name"] = str(resource["host.name"])
        if environment:
            event["environment"] = str(environment)
        if release:
            event["release"] = str(release)
        return event


def sentry_safe(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of free-form data with credential-looking strings filtered, as Sentry would."""
    return {
        key: value if key in _SENTRY_SAFE_KEYS else _safe_value(value)
        for key, value in data.items()
    }


_verdicts: dict[str, bool] = {}  # string -> sensitive; values repeat a lot across spans


def _safe_value(value: Any) -> Any:
    if isinstance(value, str):
        if not _sensitive(value):
            return value
        return _safe_url(value) or FILTERED
    if isinstance(value, list):
        return [_safe_value(item) for item in value]
    if isinstance(value, dict):
        return sentry_safe(value)
    return value


def _sensitive(text: str) -> bool:
    sensitive = _verdicts.get(text)
    if sensitive is None:
        sensitive = _SENTRY_SENSITIVE.search(text) is not None
        if len(text) <= 256:  # bounded memory: long strings are checked, not remembered
            if len(_verdicts) >= 10_000:
                _verdicts.clear()
            _verdicts[text] = sensitive
    return sensitive


def _safe_url(text: str) -> dict[str, Any] | None:
    """A URL (or a bare query string) whose query names a credential, with that one value
    filtered: ``{"url": ..., "query": {name: value}}``. Sentry filters any string that so much as
    names one, so the query leaves as an object, where it judges each value by its name.
    None when the text is not such a URL, or is sensitive elsewhere."""
    base, separator, query = text.partition("?")
    if not separator:
        base, query = "", text
    if " " in query or "=" not in query or (base and "://" not in base) or _sensitive(base):
        return None
    pairs = parse_qsl(query.partition("#")[0], keep_blank_values=True)
    if not pairs:
        return None
    filtered = {
        name: FILTERED if _sensitive(name) or _sensitive(value) else value for name, value in pairs
    }
    return {"url": base, "query": filtered} if base else {"query": filtered}


def first(attributes: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


# --- op, description, status ---------------------------------------------------------------


def span_op(span: SpanRecord) -> tuple[str, str]:
    """(op, description) by sentry-python's rules, in both semantic conventions."""
    attrs = span.attributes
    method = first(attrs, "http.request.method", "http.method")
    if method:
        kind = {SERVER: ".server", CLIENT: ".client"}.get(span.kind, "")
        return f"http{kind}", _http_description(span, str(method))
    if first(attrs, "db.system.name", "db.system"):
        return "db", str(first(attrs, "db.query.text", "db.statement") or span.name)
    if attrs.get("rpc.service"):
        return "rpc", span.name
    if attrs.get("messaging.system"):
        return "message", span.name
    if attrs.get("faas.trigger"):
        return str(attrs["faas.trigger"]), span.name
    return span.name, span.name


def _http_description(span: SpanRecord, method: str) -> str:
    attrs = span.attributes
    route = attrs.get("http.route")
    target = first(attrs, "url.path", "http.target") if span.kind == SERVER else None
    if route or target:
        return f"{method} {route or target}"
    url = first(attrs, "url.full", "http.url")
    if url:
        return f"{method} {_split_url(url)[0]}"
    peer = first(attrs, "server.address", "net.peer.name")
    return f"{method} {peer}" if peer else method


def http_status(attributes: dict[str, Any]) -> int | None:
    code = first(attributes, "http.response.status_code", "http.status_code")
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _split_url(url: Any) -> tuple[str, str]:
    """(URL without query, query); a URL that does not parse (``[Filtered]`` in the host, a
    broken IPv6 literal) is kept whole rather than failing the event."""
    text = str(url)
    try:
        parts = urlsplit(text)
        return f"{parts.scheme}://{parts.netloc}{parts.path}", parts.query
    except ValueError:
        return text.partition("?")[0], text.partition("?")[2]


def span_status(span: SpanRecord) -> str | None:
    """Sentry's span status: from the HTTP or gRPC code when there is one, else from OTel's."""
    inferred = _status_from_attributes(span.attributes)
    if span.status_code == _STATUS_OK:
        return "ok"
    if span.status_code == _STATUS_ERROR:
        if inferred:
            return inferred
        return span.status_message if span.status_message in _GRPC_STATUS else "unknown_error"
    return inferred


def _status_from_attributes(attributes: dict[str, Any]) -> str | None:
    code = http_status(attributes)
    if code is not None:
        return _status_from_http(code)
    grpc_code = attributes.get("rpc.grpc.status_code")
    if isinstance(grpc_code, int) and not isinstance(grpc_code, bool):
        return _GRPC_STATUS[grpc_code] if 0 <= grpc_code < len(_GRPC_STATUS) else "unknown_error"
    return None


def _status_from_http(code: int) -> str:
    if code < 400:
        return "ok"
    named = {
        401: "unauthenticated", 403: "permission_denied", 404: "not_found",
        409: "already_exists", 413: "failed_precondition", 429: "resource_exhausted",
        501: "unimplemented", 503: "unavailable", 504: "deadline_exceeded",
    }  # fmt: skip
    if code in named:
        return named[code]
    return "invalid_argument" if code < 500 else "internal_error"


# --- transactions -----------------------------------------------------------------------------


def transaction_name(segment: SpanRecord, style: str = "route") -> tuple[str, str]:
    """(name, source): the route (``METHOD route`` in the ``method_route`` style), else the
    span's own name."""
    route = segment.attributes.get("http.route")
    if not route:
        return segment.name, "custom"
    method = first(segment.attributes, "http.request.method", "http.method")
    if style == "method_route" and method:
        return f"{method} {route}", "route"
    return str(route), "route"


def trace_context(span: SpanRecord) -> dict[str, Any]:
    op, _ = span_op(span)
    context: dict[str, Any] = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "op": op,
        "origin": "auto.otel",
        "data": sentry_safe(span.attributes),
    }
    if span.parent_span_id:
        context["parent_span_id"] = span.parent_span_id
    status = span_status(span)
    if status:
        context["status"] = status
    return context


def sentry_span(span: SpanRecord) -> dict[str, Any]:
    op, description = span_op(span)
    out: dict[str, Any] = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "op": op,
        "description": description,
        "origin": "auto.otel",
        "start_timestamp": span.start_ns / _NS,
        "timestamp": span.end_ns / _NS,
        "data": sentry_safe(span.attributes),
    }
    status = span_status(span)
    if status:
        out["status"] = status
    return out


def transaction(
    segment: SpanRecord, children: Iterable[SpanRecord], defaults: Defaults
) -> dict[str, Any]:
    name, source = transaction_name(segment, defaults.transaction_style)
    event: dict[str, Any] = {
        "type": "transaction",
        "transaction": name,
        "transaction_info": {"source": source},
        "start_timestamp": segment.start_ns / _NS,
        "timestamp": segment.end_ns / _NS,
        "spans": [sentry_span(child) for child in children],
        **_segment_scope(segment),
    }
    event["contexts"]["trace"] = trace_context(segment)
    code = http_status(segment.attributes)
    if code is not None:
        event["contexts"]["response"] = {"status_code": code}
    return defaults.apply(event, segment.resource)


def _segment_scope(segment: SpanRecord) -> dict[str, Any]:
    """What a segment lends every event of its trace: request, user, tags and contexts."""
    attrs = segment.attributes
    scope: dict[str, Any] = {
        "tags": sentry_safe(_tags(segment)),
        "contexts": {
            **sentry_safe(_custom_contexts(attrs)),
            "otel": _otel_context(segment),
        },
    }
    request = _request(attrs)
    if request:
        scope["request"] = request
    user = {
        key[len("sentry.user.") :]: str(value)
        for key, value in attrs.items()
        if key.startswith("sentry.user.")
    }
    if attrs.get("enduser.id") is not None:
        user["id"] = str(attrs["enduser.id"])
    if user:
        scope["user"] = sentry_safe(user)
    return scope


def _otel_context(span: SpanRecord) -> dict[str, Any]:
    """The resource; the span's attributes are already the trace context's ``data``."""
    return {"resource": sentry_safe(span.resource)}


def _resource_contexts(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``runtime`` and ``os`` as sentry-sdk describes them, from the resource's attributes."""
    contexts: dict[str, dict[str, Any]] = {}
    runtime = resource.get("process.runtime.name")
    if runtime:
        contexts["runtime"] = {
            "name": _RUNTIME_NAMES.get(str(runtime).lower(), str(runtime)),
            "version": resource.get("process.runtime.version"),
            "build": resource.get("process.runtime.description"),
        }
    os_type = resource.get("os.type")
    if os_type:
        contexts["os"] = {
            "name": str(os_type).capitalize() if str(os_type).islower() else str(os_type),
            "version": resource.get("os.version"),
            "raw_description": resource.get("os.description"),
        }
    return {
        name: {key: str(value) for key, value in context.items() if value is not None}
        for name, context in contexts.items()
    }


def _tags(segment: SpanRecord) -> dict[str, str]:
    tags = {
        key[len("sentry.tag.") :]: str(value)
        for key, value in segment.attributes.items()
        if key.startswith("sentry.tag.")
    }
    if segment.attributes.get("slow") is True:
        tags["slow"] = "true"
    code = http_status(segment.attributes)
    if code is not None:
        tags["http.status_code"] = str(code)
    service = segment.resource.get("service.name")
    if service:
        tags["service"] = str(service)
    return tags


def _custom_contexts(attributes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    contexts: dict[str, dict[str, Any]] = {}
    for key, value in attributes.items():
        if key.startswith("sentry.context."):
            name, _, field = key[len("sentry.context.") :].partition(".")
            if name and field and name not in ("trace", "otel"):
                contexts.setdefault(name, {})[field] = value
    return contexts


def _request(attributes: dict[str, Any]) -> dict[str, Any] | None:
    method = first(attributes, "http.request.method", "http.method")
    if not method:
        return None
    request: dict[str, Any] = {"method": str(method)}
    full = first(attributes, "url.full", "http.url")
    if full:
        url, query = _split_url(full)
    else:
        target = str(first(attributes, "http.target") or "")
        path = first(attributes, "url.path") or target.partition("?")[0]
        query = first(attributes, "url.query") or target.partition("?")[2]
        host = first(attributes, "server.address", "http.host", "net.host.name")
        scheme = first(attributes, "url.scheme", "http.scheme") or "http"
        url = f"{scheme}://{host}{path}" if host else path
    if url:
        request["url"] = str(url)
    if query:
        # As pairs, each value judged by its name: a string naming a credential would be
        # filtered whole by Sentry.
        request["query_string"] = [
            [name, FILTERED if _sensitive(name) or _sensitive(value) else value]
            for name, value in parse_qsl(str(query), keep_blank_values=True)
        ]
    headers = {
        _header_name(key[len("http.request.header.") :]): ", ".join(map(str, value))
        if isinstance(value, list)
        else str(value)
        for key, value in attributes.items()
        if key.startswith("http.request.header.")
    }
    if headers:
        request["headers"] = sentry_safe(headers)
    return request


def _header_name(key: str) -> str:
    """``user_agent`` (the instrumentations write header names that way) -> ``User-Agent``."""
    return "-".join(part.capitalize() for part in key.replace("_", "-").split("-"))


# --- errors ------------------------------------------------------------------------------------


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
    if escaped is True or span.status_code == _STATUS_ERROR:
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
        "timestamp": time_ns / _NS,
        "exception": {"values": values},
        "contexts": {},
    }
    if segment is not None:
        event.update(_segment_scope(segment))
        event["transaction"] = transaction_name(segment, defaults.transaction_style)[0]
    if span is not None:
        event["contexts"]["trace"] = trace_context(span)
        if span is not segment:
            event["contexts"]["otel"] = _otel_context(span)
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


def is_exception_log(record: LogRecord) -> bool:
    return "exception.type" in record.attributes or "exception.message" in record.attributes


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
    timestamp = span.start_ns / _NS
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
        "timestamp": record.time_ns / _NS,
    }
    data = {k: v for k, v in _log_attributes(record).items() if not k.startswith(_NOT_DATA)}
    if data:
        crumb["data"] = data  # the app's own keys (structlog's, logging's extra=)
    return crumb


# --- logs --------------------------------------------------------------------------------------


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


def _log_attributes(record: LogRecord) -> dict[str, Any]:
    """The record's attributes and a structured body's keys; never the frames, which belong to
    the error event, not the log line."""
    attributes: dict[str, Any] = {}
    if isinstance(record.body, dict):  # structlog keys of a structured body
        attributes.update((k, v) for k, v in record.body.items() if k not in ("event", "message"))
    attributes.update(record.attributes)
    attributes.pop(EXCEPTION_CHAIN, None)
    return attributes


def log_item(record: LogRecord, defaults: Defaults) -> dict[str, Any]:
    """One entry of a Sentry ``log`` envelope item, with the attributes sentry-sdk gives its
    own (lower-case severity, runtime, ``server.address``)."""
    attributes = _log_attributes(record)
    environment, release = defaults.environment_release(record.resource)
    runtime = _resource_contexts(record.resource).get("runtime", {})
    attributes.update(
        {
            "sentry.environment": environment,
            "sentry.release": release,
            "sentry.severity_number": record.severity_number or None,
            "sentry.severity_text": log_level(record),
            "sentry.origin": "auto.log.otel",
            "sentry.sdk.name": "otel-sidecar",
            "sentry.sdk.version": defaults.sdk_version,
            "service.name": record.resource.get("service.name"),
            "server.address": record.resource.get("host.name"),
            "process.runtime.name": runtime.get("name"),
            "process.runtime.version": runtime.get("version"),
            "logger.name": record.scope or None,
        }
    )
    item: dict[str, Any] = {
        "timestamp": record.time_ns / _NS,
        "level": log_level(record),
        "body": log_body(record),
        "attributes": {k: _typed(v) for k, v in attributes.items() if v is not None},
    }
    if record.trace_id:
        item["trace_id"] = record.trace_id
    if record.span_id:
        item["span_id"] = record.span_id
    return item


def _typed(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"value": value, "type": "boolean"}
    if isinstance(value, int):
        return {"value": value, "type": "integer"}
    if isinstance(value, float):
        return {"value": value, "type": "double"}
    if isinstance(value, str):
        return {"value": value, "type": "string"}
    return {"value": json.dumps(value, default=str), "type": "string"}
