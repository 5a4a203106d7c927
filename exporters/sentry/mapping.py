"""OpenTelemetry → Sentry: transactions from span records, and what error events share with them.

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

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from collector.scrubbing import FILTERED
from exporters.sentry.filtering import sensitive, sentry_safe
from exporters.sentry.records import CLIENT, SERVER, SpanRecord

NS = 1e9
_STATUS_OK, STATUS_ERROR = 1, 2  # OpenTelemetry's status codes
_GRPC_STATUS = [  # Sentry's span status for gRPC code 0 .. 16
    "ok", "cancelled", "unknown_error", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition",
    "aborted", "out_of_range", "unimplemented", "internal_error", "unavailable", "data_loss",
    "unauthenticated",
]  # fmt: skip
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
        for name, context in resource_contexts(resource).items():
            contexts.setdefault(name, context)
        if resource.get("host.name"):
            event["server_name"] = str(resource["host.name"])
        if environment:
            event["environment"] = str(environment)
        if release:
            event["release"] = str(release)
        return event


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
    if span.status_code == STATUS_ERROR:
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
        "start_timestamp": span.start_ns / NS,
        "timestamp": span.end_ns / NS,
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
        "start_timestamp": segment.start_ns / NS,
        "timestamp": segment.end_ns / NS,
        "spans": [sentry_span(child) for child in children],
        **segment_scope(segment),
    }
    event["contexts"]["trace"] = trace_context(segment)
    code = http_status(segment.attributes)
    if code is not None:
        event["contexts"]["response"] = {"status_code": code}
    return defaults.apply(event, segment.resource)


def segment_scope(segment: SpanRecord) -> dict[str, Any]:
    """What a segment lends every event of its trace: request, user, tags and contexts."""
    attrs = segment.attributes
    scope: dict[str, Any] = {
        "tags": sentry_safe(_tags(segment)),
        "contexts": {
            **sentry_safe(_custom_contexts(attrs)),
            "otel": otel_context(segment),
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


def otel_context(span: SpanRecord) -> dict[str, Any]:
    """The resource; the span's attributes are already the trace context's ``data``."""
    return {"resource": sentry_safe(span.resource)}


def resource_contexts(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
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
            [name, FILTERED if sensitive(name) or sensitive(value) else value]
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
