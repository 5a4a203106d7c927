"""What a log record may carry: attribute values OTLP can carry (bounded containers, 64-bit
integers, texts of at most :data:`MAX_VALUE_BYTES`, anything else as text), strings as valid
UTF-8, and bodies of at most :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_MAX_ITEMS = 100  # per list or dict attribute value
_INT64 = (-(2**63), 2**63 - 1)
# The OTLP gRPC exporter sends up to 128 records (the batch size) in one message, which the
# collector refuses past 4 MiB: 16 KiB bodies leave half of it to attributes (an exception's
# chain has its own limit). Sentry keeps only the first 8192 characters of a message anyway.
MAX_BODY_BYTES = 16 * 1024
# A text or bytes attribute value: a few of them (the app's megabyte payload logged as a key)
# must not take a batch past 4 MiB, which would lose every record in it.
MAX_VALUE_BYTES = 4 * 1024
_CUT = "… [truncated: {size} characters in all]"
_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(text: str) -> str:
    """The text with lone surrogates as U+FFFD: protobuf refuses invalid UTF-8 and fails the
    whole export batch, every other record in it too."""
    if text.isascii():  # most text, and no copy made to find out
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def valid_utf8(value: Any) -> Any:
    """An attribute value (what :func:`attribute` makes) with every string in it valid UTF-8."""
    if isinstance(value, str):
        return utf8(value)
    if isinstance(value, Mapping):
        return {utf8(str(key)): valid_utf8(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [valid_utf8(item) for item in value]
    return value


def bounded_text(text: str, limit: int = MAX_BODY_BYTES) -> str:
    """Valid UTF-8, at most ``limit`` bytes of it, saying where it was cut and how long it was.
    A huge text is sliced before anything copies it whole."""
    if len(text) <= limit // 4:  # no character takes more than 4 bytes
        return utf8(text)
    head = utf8(text[:limit])  # a character takes at least 1 byte
    encoded = head.encode("utf-8")
    if len(text) <= limit and len(encoded) <= limit:
        return head
    mark = _CUT.format(size=len(text))
    keep = limit - len(mark.encode("utf-8"))
    # A character the cut splits is dropped whole ("ignore" on its leftover bytes).
    return encoded[:keep].decode("utf-8", "ignore") + mark


def attribute(value: Any, depth: int = 3) -> Any:
    """A value OTLP can carry: scalars as they are, containers (bounded), anything else as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, str):
        return bounded_text(value, MAX_VALUE_BYTES)
    if isinstance(value, bytes):
        return value[:MAX_VALUE_BYTES]
    if depth and isinstance(value, Mapping):
        items = list(value.items())[:_MAX_ITEMS]
        return {str(key): attribute(item, depth - 1) for key, item in items if item is not None}
    if depth and isinstance(value, (list, tuple, set, frozenset)):
        return [attribute(item, depth - 1) for item in list(value)[:_MAX_ITEMS]]
    try:
        return bounded_text(str(value), MAX_VALUE_BYTES)
    except Exception:
        return "<unprintable>"
