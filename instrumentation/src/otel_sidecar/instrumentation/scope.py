"""``set_user``, ``set_tag``, ``set_context`` and ``capture_exception`` with sentry_sdk's
signatures, so code written for sentry_sdk ports by changing one import.

They write the attributes the sidecar's Sentry mapping reads, on the current span and on its
local root (the request's server span, which becomes the Sentry transaction and lends its user,
tags and contexts to the request's errors): ``enduser.id`` and ``sentry.user.<key>``,
``sentry.tag.<key>``, ``sentry.context.<name>.<key>``. Outside any recording span they do
nothing, as sentry_sdk's do without ``init``, except ``capture_exception``, which then sends the
exception as an error log record.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Optional

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_sidecar.instrumentation import logs

_USER_KEYS = ("email", "username", "ip_address", "name")

# sys.exc_info()'s triple, which sentry_sdk.capture_exception takes too (3.9: no ``X | None``
# in a module-level alias).
ExcInfo = tuple[Optional[type[BaseException]], Optional[BaseException], Optional[TracebackType]]


class LocalRoots(SpanProcessor):
    """Remembers, for every live span, the first span of its trace in this process."""

    def __init__(self) -> None:
        self._roots: dict[int, Span] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        parent = trace.get_current_span(parent_context).get_span_context()
        root = None
        if parent.is_valid and not parent.is_remote:
            root = self._roots.get(parent.span_id)
        self._roots[span.get_span_context().span_id] = root or span

    def on_end(self, span: ReadableSpan) -> None:
        context = span.get_span_context()
        if context is not None:
            self._roots.pop(context.span_id, None)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Nothing to flush; but SDKs before 1.45 stop flushing the processors after one that
        # does not say True (the base class returns None).
        return True

    def root_of(self, span: trace.Span) -> trace.Span:
        return self._roots.get(span.get_span_context().span_id, span)


LOCAL_ROOTS = LocalRoots()


def _targets() -> list[trace.Span]:
    span = trace.get_current_span()
    if not span.is_recording():
        return []
    root = LOCAL_ROOTS.root_of(span)
    return [span] if root is span else [span, root]


def _set(attributes: Mapping[str, Any]) -> None:
    for span in _targets():
        span.set_attributes(attributes)


def _scalar(value: Any) -> Any:
    """Span attributes take scalars: anything else as text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def set_user(value: Mapping[str, Any] | None) -> None:
    """``sentry_sdk.set_user({"id": ..., "email": ...})``: the request's user."""
    if not value:
        return
    attributes = {f"sentry.user.{key}": _scalar(value[key]) for key in _USER_KEYS if key in value}
    if value.get("id") is not None:
        attributes["enduser.id"] = str(value["id"])
    _set(attributes)


def set_tag(key: str, value: Any) -> None:
    """``sentry_sdk.set_tag``: a searchable tag on the request's transaction and errors."""
    _set({f"sentry.tag.{key}": str(value)})


def set_context(key: str, value: Mapping[str, Any]) -> None:
    """``sentry_sdk.set_context``: a named block of extra data."""
    _set({f"sentry.context.{key}.{field}": _scalar(item) for field, item in value.items()})


def capture_exception(
    error: BaseException | ExcInfo | None = None, scope: Any = None, **scope_kwargs: Any
) -> str | None:
    """``sentry_sdk.capture_exception``: report a caught exception (the one being handled when
    none is given; an exception, or ``sys.exc_info()``'s triple) as handled, with its frames.
    Returns None: the event id is Sentry's to give. ``scope`` and its keywords are accepted
    for sentry_sdk's signature; the request's span is the scope here."""
    if error is None:
        error = sys.exc_info()
    if isinstance(error, tuple):
        error = error[1]
    if error is None:
        return None
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(error, escaped=False)
    else:
        message = f"{type(error).__name__}: {error}"
        logs.emit("otel_sidecar", logging.ERROR, "ERROR", message, {}, error, time.time_ns())
    return None
