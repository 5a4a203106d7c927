"""OTLP protobuf encoding of the SDK's spans and log records, written straight to wire bytes.

The OTLP exporters' own encoder builds a protobuf object for every span, attribute and value:
56-95 µs of the app's CPU per span of a FastAPI request (measured), under the interpreter lock
the request handlers need. Here each field is written as bytes, and the encoded form of an
attribute (key and value) is kept, since most repeat from request to request (method, route,
host, statement, status): 15-20 µs per span. :func:`install` makes the SDK's OTLP exporters
(gRPC and HTTP) use it; they still send the same message, parsed back from these bytes (1 µs
per span), so their retries, compression and headers are untouched.

The bytes decode to a message equal to what the SDK's encoder builds (the tests hold one
against the other).
"""

from __future__ import annotations

import importlib
import logging
import struct
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from opentelemetry.sdk.trace import ReadableSpan

from otel_sidecar.instrumentation.patches import patch, unpatch

_log = logging.getLogger(__name__)

# Encoded attributes kept: enough for the repeating ones of a service's spans and logs; the
# cache starts over when full, so one-off values (ports, ids) cannot grow it.
_CACHE_SIZE = 4096
_LONGEST_CACHED = 512  # characters: exception texts and stack traces are not kept
_SMALL = [bytes([n]) for n in range(128)]
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_U64 = 1 << 64
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# Field tags (field number << 3 | wire type) of opentelemetry-proto's messages, as bytes.
_LEN = {field: bytes([field << 3 | 2]) for field in range(1, 16)}
_SPAN_FLAGS_TAG = b"\x85\x01"  # Span.flags: field 16, fixed32
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += _U64  # int64 as protobuf writes it: two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message."""
    return _LEN[number] + _varint(len(body)) + body


def _string(number: int, text: str | None) -> bytes:
    return _field(number, text.encode("utf-8")) if text else b""


def _uint(number: int, value: int | None) -> bytes:
    return bytes([number << 3]) + _varint(value) if value else b""


def _fixed64(number: int, value: int | None) -> bytes:
    return bytes([number << 3 | 1]) + _FIXED64(value) if value else b""


# --- values (AnyValue) and attributes (KeyValue) ----------------------------------------------


def any_value(value: Any) -> bytes:
    """The body of an ``AnyValue``; raises ``TypeError`` for a type OTLP cannot carry and
    ``ValueError`` for an int outside int64."""
    if value is None:
        return b""
    if value.__class__ is str:
        return _field(1, value.encode("utf-8"))
    if isinstance(value, bool):
        return b"\x10" + _SMALL[value]
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:  # protobuf refuses it; the SDK leaves it out
            raise ValueError(f"{value} does not fit in an int64")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, str):
        return _field(1, value.encode("utf-8"))
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join([_field(1, any_value(item)) for item in value]))
    if isinstance(value, Mapping):
        return _field(6, b"".join([_field(1, _key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode("utf-8")) + _field(2, any_value(value))


_encoded: dict[Any, bytes] = {}


def _cache_key(key: str, value: Any) -> tuple[Any, ...] | None:
    """What identifies an attribute's encoding, or None for one not worth keeping or not
    safely told apart by equality: floats (0.0 == -0.0), and tuples other than of strings
    ((1,) == (True,) == (1.0,))."""
    cls = value.__class__
    if cls is str:
        return (key, value) if len(value) <= _LONGEST_CACHED else None
    if cls is int or cls is bool:
        return (key, cls, value)
    if cls is tuple and all(item.__class__ is str for item in value):
        return (key, cls, value)
    return None


def _attribute(key: str, value: Any) -> bytes:
    """A ``KeyValue`` with its length in front, from the cache when it was seen before."""
    cache_key = _cache_key(key, value)
    if cache_key is not None:
        encoded = _encoded.get(cache_key)
        if encoded is not None:
            return encoded
    body = _key_value(key, value)
    encoded = _varint(len(body)) + body
    if cache_key is not None:
        if len(_encoded) >= _CACHE_SIZE:
            _encoded.clear()
        _encoded[cache_key] = encoded
    return encoded


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> list[bytes]:
    """Repeated ``KeyValue`` fields; a value OTLP cannot carry is left out, with an error
    logged, as the SDK's encoder does."""
    if not attributes:
        return []
    tag = _LEN[number]
    parts = []
    # The SDK's BoundedAttributes is a Mapping over a dict; iterating the dict itself saves a
    # lookup per key (a third of this function's time).
    for key, value in getattr(attributes, "_dict", attributes).items():
        try:
            parts += (tag, _attribute(key, value))
        except Exception as error:
            _log.error("could not encode attribute %s: %s", key, error)
    return parts


# --- resources and scopes -----------------------------------------------------------------


_scopes: dict[int, tuple[Any, bytes]] = {}


def _resource(resource: Any) -> bytes:
    return b"".join(_attributes(1, resource.attributes))


def _scope(scope: Any) -> bytes:
    """An ``InstrumentationScope``; a provider hands out the same few for the process's life.
    Kept by identity: scopes compare equal with attributes of different types (1 and True)."""
    if scope is None:
        return b""
    kept = _scopes.get(id(scope))
    if kept is not None and kept[0] is scope:
        return kept[1]
    body = (
        _string(1, scope.name)
        + _string(2, scope.version)
        + b"".join(_attributes(3, scope.attributes))
    )
    if len(_scopes) < _CACHE_SIZE:
        _scopes[id(scope)] = (scope, body)  # the scope held, so its id is not reused
    return body


def _grouped(items: Sequence[Any], encode: Callable[[Any], bytes]) -> bytes:
    """An export request: ``Resource{Spans,Logs}`` (field 1), each item under its resource
    and scope in the order first seen (as the SDK groups them): ``resource = 1``, scope
    messages field 2, each item field 2 of its scope message, ``schema_url = 3`` on both
    levels."""
    groups: dict[Any, dict[Any, list[bytes]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        groups[item.resource][item.instrumentation_scope or None].append(encode(item))
    out = []
    for resource, scopes in groups.items():
        scope_fields = [
            _field(
                2,
                _field(1, _scope(scope))
                + b"".join([_field(2, body) for body in bodies])
                + _string(3, scope.schema_url if scope else None),
            )
            for scope, bodies in scopes.items()
        ]
        body = _field(1, _resource(resource)) + b"".join(scope_fields)
        out.append(_field(1, body + _string(3, resource.schema_url)))
    return b"".join(out)


# --- spans ----------------------------------------------------------------------------------


def _span_flags(parent: Any) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return _SPAN_FLAGS_TAG + _FIXED32(flags)


def _event(event: Any) -> bytes:
    return (
        _fixed64(1, event.timestamp)
        + _string(2, event.name)
        + b"".join(_attributes(3, event.attributes))
        + _uint(4, event.dropped_attributes)
    )


def _link(link: Any) -> bytes:
    context = link.context
    return (
        _field(1, context.trace_id.to_bytes(16, "big"))
        + _field(2, context.span_id.to_bytes(8, "big"))
        + b"".join(_attributes(4, link.attributes))
        + _uint(5, link.dropped_attributes)
        + bytes([6 << 3 | 5])
        + _FIXED32(_HAS_IS_REMOTE | (_IS_REMOTE if context.is_remote else 0))
    )


def _private(item: Any, name: str) -> Any:
    """The SDK object's own ``_name`` behind its public ``name``: ``ReadableSpan`` hands out
    its attributes as a read-only proxy over a Mapping and its events and links as fresh
    tuples (2-3 µs a span here, more than writing the values). The public property where a
    subclass overrides it (a redacting span class, say) or a version of the SDK has no such
    field."""
    if getattr(type(item), name, None) is not getattr(ReadableSpan, name):
        return getattr(item, name)
    inner = getattr(item, "_" + name, None)
    if inner is None:
        return getattr(item, name)
    return getattr(inner, "_dict", inner)  # BoundedAttributes: the dict it wraps


def span(item: Any) -> bytes:
    """The body of a ``Span`` message for an SDK ``ReadableSpan``."""
    context = item.context
    parent = item.parent
    trace_state = context.trace_state
    status = item.status
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    if trace_state:
        parts.append(_string(3, ",".join(f"{k}={v}" for k, v in trace_state.items())))
    if parent is not None:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts += (
        _string(5, item.name),
        b"\x30" + _SMALL[item.kind.value + 1],  # SpanKind: the proto counts from UNSPECIFIED
        b"\x39" + _FIXED64(item.start_time or 0),
        b"\x41" + _FIXED64(item.end_time or 0),
    )
    parts += _attributes(9, _private(item, "attributes"))
    parts.append(_uint(10, item.dropped_attributes))
    events = _private(item, "events")
    if events:
        parts += [_field(11, _event(event)) for event in events]
    parts.append(_uint(12, item.dropped_events))
    links = _private(item, "links")
    if links:
        parts += [_field(13, _link(link)) for link in links]
    parts.append(_uint(14, item.dropped_links))
    if status is not None:
        parts.append(
            _field(15, _string(2, status.description) + _uint(3, status.status_code.value))
        )
    parts.append(_span_flags(parent))
    return b"".join(parts)


def spans_request(spans: Sequence[Any]) -> bytes:
    """An ``ExportTraceServiceRequest``, serialized."""
    return _grouped(spans, span)


# --- log records -----------------------------------------------------------------------------


def log_record(item: Any) -> bytes:
    """The body of a ``LogRecord`` message for an SDK ``ReadableLogRecord``."""
    record = item.log_record
    severity = getattr(record.severity_number, "value", None)
    parts = [_fixed64(1, record.timestamp), _uint(2, severity), _string(3, record.severity_text)]
    parts.append(_field(5, any_value(record.body)))  # null: an empty AnyValue, as the SDK's
    parts += _attributes(6, record.attributes)
    parts.append(_uint(7, item.dropped_attributes))
    flags = int(record.trace_flags or 0)
    if flags:
        parts.append(b"\x45" + _FIXED32(flags))
    if record.trace_id:
        parts += (b"\x4a\x10", record.trace_id.to_bytes(16, "big"))
    if record.span_id:
        parts += (b"\x52\x08", record.span_id.to_bytes(8, "big"))
    parts += (_fixed64(11, record.observed_timestamp), _string(12, record.event_name))
    return b"".join(parts)


def logs_request(records: Sequence[Any]) -> bytes:
    """An ``ExportLogsServiceRequest``, serialized."""
    return _grouped(records, log_record)


# --- the SDK's exporters ---------------------------------------------------------------------

_EXPORTER_MODULES = {
    "encode_spans": (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ),
    "encode_logs": (
        "opentelemetry.exporter.otlp.proto.grpc._log_exporter",
        "opentelemetry.exporter.otlp.proto.http._log_exporter",
    ),
}


def install() -> None:
    """Make the OTLP exporters (gRPC and HTTP, whichever is installed) encode with this module.
    A batch it cannot encode goes to the SDK's encoder instead, so nothing is lost to it."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    requests = {
        "encode_spans": (spans_request, ExportTraceServiceRequest.FromString),
        "encode_logs": (logs_request, ExportLogsServiceRequest.FromString),
    }
    for name, modules in _EXPORTER_MODULES.items():
        encode, parse = requests[name]
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            patch(module, name, lambda original, e=encode, p=parse: _encoder(e, p, original))


def uninstall() -> None:
    for name, modules in _EXPORTER_MODULES.items():
        for module_name in modules:
            module = sys.modules.get(module_name)
            if module is not None:
                unpatch(module, name)


def _encoder(
    encode: Callable[[Sequence[Any]], bytes],
    parse: Callable[[bytes], Any],
    original: Callable[[Sequence[Any]], Any],
) -> Callable[[Sequence[Any]], Any]:
    def encoded(batch: Sequence[Any]) -> Any:
        try:
            return parse(encode(batch))
        except Exception:
            _log.debug("encoding a batch with the SDK's encoder", exc_info=True)
            return original(batch)

    return encoded
