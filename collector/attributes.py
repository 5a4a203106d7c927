"""Reading OTLP attributes (a list of KeyValue, not a map) without building dicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# On an ``exception`` span event or an exception log record, from the zero-code side
# (otel-sidecar-instrumentation): JSON, the exception chain oldest first, each
# ``{"type", "module", "value", "source", "frames": [...]}`` with Sentry's frame fields
# (filename, abs_path, module, function, lineno, in_app, pre/post_context, context_line, vars).
EXCEPTION_CHAIN = "otel_sidecar.exception.chain"


def plain(value: AnyValue) -> Any:
    """The Python value of an AnyValue (lists and dicts for array and kvlist)."""
    # Most attributes are strings: reading the field costs a third of asking which one is set.
    text = value.string_value
    if text:
        return text
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def first(attributes: Iterable[KeyValue], *keys: str) -> Any:
    """The value of the first of ``keys`` present (in the order given), else None.

    Semantic conventions renamed many attributes (``http.method`` → ``http.request.method``);
    callers list the stable name first and the old one after.
    """
    found: dict[str, AnyValue] = {}
    wanted = set(keys)
    for kv in attributes:
        if kv.key in wanted:
            found[kv.key] = kv.value
    for key in keys:
        if key in found:
            return plain(found[key])
    return None


def has(attributes: Iterable[KeyValue], key: str) -> bool:
    return any(kv.key == key for kv in attributes)
