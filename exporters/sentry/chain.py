"""Sentry ``exception.values`` from the exception chain the zero-code side attaches.

``otel_sidecar.exception.chain`` (:data:`collector.attributes.EXCEPTION_CHAIN`) carries what a
traceback's text cannot: each frame's module, its file name relative to its ``sys.path`` root,
``in_app``, source lines around it and local variables, the way sentry-sdk collects them. It is
the app's input like any other: every field is checked for its type, and bounded as the text
parser bounds (:mod:`exporters.sentry.traceback`); anything unexpected makes the whole chain
unusable, and the event falls back to parsing ``exception.stacktrace``.
"""

from __future__ import annotations

import json
from typing import Any

from exporters.sentry.traceback import (
    FRAMES_HEAD,
    FRAMES_TAIL,
    MAX_FRAMES,
    MAX_STACKTRACE_CHARS,
    MAX_VALUES,
    add_mechanisms,
)

_SOURCES = ("__cause__", "__context__")
_TEXT_FIELDS = ("filename", "abs_path", "function", "module", "context_line")
_LINES_FIELDS = ("pre_context", "post_context")
MAX_CONTEXT_LINES = 10
MAX_VARS_DEPTH = 10  # the frame's dict, then containers: the zero-code side writes 4 at most


class _Unusable(ValueError):
    """The chain is not what the zero-code side writes."""


def exception_values(chain: Any, *, handled: bool | None) -> list[dict[str, Any]] | None:
    """Sentry ``exception.values`` (oldest first), or None when ``chain`` is unusable."""
    if not isinstance(chain, str) or len(chain) > MAX_STACKTRACE_CHARS:
        return None
    try:
        items = json.loads(chain, parse_constant=_no_constant)
        if not isinstance(items, list) or not items:
            raise _Unusable
        items = items[-MAX_VALUES:]
        values = [_value(item) for item in items]
    except (ValueError, RecursionError):
        return None
    add_mechanisms(values, [_source(item) for item in items[:-1]], handled)
    return values


def _value(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _Unusable
    value = {"type": _text(item.get("type")), "value": _text(item.get("value", ""))}
    if not value["type"]:
        raise _Unusable
    module = item.get("module")
    if module is not None:
        value["module"] = _text(module)
    raw_frames = item.get("frames", [])
    if not isinstance(raw_frames, list):
        raise _Unusable
    frames = [_frame(raw) for raw in raw_frames]
    if len(frames) > MAX_FRAMES:
        frames = frames[:FRAMES_HEAD] + frames[-FRAMES_TAIL:]
    if frames:
        value["stacktrace"] = {"frames": frames}
    return value


def _frame(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Unusable
    frame: dict[str, Any] = {
        field: _text(raw[field]) for field in _TEXT_FIELDS if raw.get(field) is not None
    }
    for field in _LINES_FIELDS:
        lines = raw.get(field)
        if lines is not None:
            if not isinstance(lines, list):
                raise _Unusable
            frame[field] = [_text(line) for line in lines[-MAX_CONTEXT_LINES:]]
    lineno = raw.get("lineno")
    if lineno is not None:
        if not isinstance(lineno, int) or isinstance(lineno, bool) or not 0 < lineno < 10**9:
            raise _Unusable
        frame["lineno"] = lineno
    in_app = raw.get("in_app")
    if in_app is not None:
        if not isinstance(in_app, bool):
            raise _Unusable
        frame["in_app"] = in_app
    variables = raw.get("vars")
    if variables is not None:
        if not isinstance(variables, dict):
            raise _Unusable
        _check_vars(variables)
        frame["vars"] = variables
    return frame


def _check_vars(value: Any, depth: int = 0) -> None:
    """Variables are reprs in containers a few levels deep, as the zero-code side trims them;
    anything deeper could not be serialised again without recursing as deep."""
    if depth > MAX_VARS_DEPTH:
        raise _Unusable
    if isinstance(value, dict):
        for item in value.values():
            _check_vars(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_vars(item, depth + 1)
    elif not isinstance(value, str | int | float | bool) and value is not None:
        raise _Unusable


def _no_constant(name: str) -> Any:
    raise _Unusable(name)  # NaN and the infinities: not JSON, and not what the app writes


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unusable
    return value


def _source(item: dict[str, Any]) -> str:
    source = item.get("source")
    return source if source in _SOURCES else "__context__"
