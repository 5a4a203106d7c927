"""Exceptions as Sentry users know them: frames with module, relative file name, ``in_app``,
source context and local variables, which a traceback's text cannot carry.

Every exception the app records, as an ``exception`` span event (``Span.record_exception``, which
the web framework instrumentations call) or as a log record with ``exc_info``, gets one more
attribute beside OpenTelemetry's ``exception.type`` / ``exception.message`` /
``exception.stacktrace``:

``otel_sidecar.exception.chain``
    JSON: the exception and its causes, oldest first (the raised one last, as Sentry orders
    them), each ``{"type", "module", "value", "source", "frames"}``. ``source`` says how an
    exception led to the next one (``__cause__`` or ``__context__``). ``frames`` run from the
    outermost call to where it was raised; each has ``filename`` (relative to its
    ``sys.path`` root), ``abs_path``, ``module``, ``function``, ``lineno``, ``in_app`` (false
    for the standard library and installed packages), ``pre_context`` / ``context_line`` /
    ``post_context`` (5 lines each side) and ``vars``.

``vars`` are trimmed as sentry-sdk trims them: the first 10 locals of a frame, containers to 10
items and 3 levels, every value as its ``repr``, at most 1024 characters (the ``repr`` of a
builtin container, string or buffer is built from its start only, so a huge local costs no more
than a small one). At most 10 exceptions of a chain and 100 frames each (the innermost); past
:data:`MAX_CHAIN_CHARS` the variables go, then the source lines.

Messages (``exception.message`` and the chain's ``value``) are cut at :data:`MAX_MESSAGE_CHARS`
and ``exception.stacktrace`` at :data:`MAX_STACKTRACE_CHARS` (its middle goes, keeping the
oldest frames and the raised exception's end), each cut marked with ``...``: one exception must
not make an export batch too large to send. Lone surrogates (``surrogateescape``-decoded bytes,
say) become U+FFFD, as an exporter must send valid UTF-8. The sidecar scrubs secrets from all of
it before anything leaves the pod.
"""

from __future__ import annotations

import itertools
import json
import linecache
import os
import re
import sys
import sysconfig
import traceback
from array import array
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from otel_sidecar.instrumentation.patches import patch, unpatch

CHAIN = "otel_sidecar.exception.chain"
MAX_EXCEPTIONS = 10
MAX_FRAMES = 100
MAX_VARIABLES = 10  # per frame, and items per container
MAX_DEPTH = 3
MAX_REPR = 1024
CONTEXT_LINES = 5
MAX_CHAIN_CHARS = 256 * 1024
# Messages are read, not scrolled: a SQL error with its statement fits, a dumped payload does not.
MAX_MESSAGE_CHARS = 8 * 1024
MAX_STACKTRACE_CHARS = MAX_CHAIN_CHARS  # the text form of the same frames gets the same room
CUT = "..."

_STDLIB = tuple(
    os.path.join(os.path.abspath(path), "")
    for path in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
)
_INSTALLED = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_SURROGATES = re.compile("[\ud800-\udfff]")

# What identifies an exception: its id, its class's name and the id of its innermost traceback
# entry (where it was raised, which stays as it propagates; the outermost one changes).
ExceptionKey = tuple[int, str, int]
# The exception last recorded on a span, as sentry-sdk's dedupe remembers the last one seen:
# a server that logs the same exception after the request failed ("Exception in ASGI
# application") must not make a second error of it. Only its key: a reference would keep its
# traceback, and so every local of its frames, alive until the next one (builtin exceptions
# take no weak references). An id is reused once the exception is freed, so a later one of the
# same class, raised where the memory of the old traceback entry now lies, would pass for it:
# its log record would go without ``exception.*``, never the record itself.
_last_recorded: ExceptionKey | None = None


@dataclass(frozen=True)
class Detail:
    """What frames carry beyond file, function and line."""

    variables: bool = True
    source: bool = True


def exception_attributes(exception: BaseException, detail: Detail) -> dict[str, str]:
    """The ``exception.*`` attributes of a log record, as the SDK writes them on spans, plus
    the chain."""
    kind = type(exception)
    module = kind.__module__
    attributes = {  # exception.type named as the SDK's record_exception names it
        "exception.type": f"{module}.{kind.__qualname__}"
        if module and module != "builtins"
        else kind.__qualname__,
        **_message_attributes(exception),
    }
    chain = chain_json(exception, detail)
    if chain is not None:
        attributes[CHAIN] = chain
    return attributes


def _message_attributes(exception: BaseException) -> dict[str, str]:
    """``exception.message`` and ``exception.stacktrace``, cut and valid UTF-8."""
    try:
        lines = traceback.format_exception(type(exception), exception, exception.__traceback__)
    except Exception:  # a broken __str__ fails the last line; the frames are still worth it
        lines = traceback.format_tb(exception.__traceback__)
    return {
        "exception.message": _message(exception),
        "exception.stacktrace": _valid(_cut_middle("".join(lines), MAX_STACKTRACE_CHARS)),
    }


def _message(exception: BaseException) -> str:
    return _valid(_cut(_safe_str(exception), MAX_MESSAGE_CHARS))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(CUT)] + CUT


def _cut_middle(text: str, limit: int) -> str:
    """The start (the oldest frames, the message's beginning) and the end (the raised
    exception's innermost frames and last line, which the sidecar's parser reads)."""
    if len(text) <= limit:
        return text
    half = (limit - len(CUT) - 2) // 2
    return f"{text[:half]}\n{CUT}\n{text[len(text) - half :]}"


def _valid(text: str) -> str:
    """``text`` as valid UTF-8: protobuf refuses lone surrogates (from ``surrogateescape``,
    say), and with them the whole attribute or record."""
    return _SURROGATES.sub("\ufffd", text)


def chain_json(exception: BaseException, detail: Detail) -> str | None:
    """The chain attribute's value, or None when even the barest form is too large."""
    try:
        barer = Detail(variables=False, source=detail.source)
        for attempt in (detail, barer, Detail(variables=False, source=False)):
            text = json.dumps(_chain(exception, attempt), ensure_ascii=False)
            if len(text) <= MAX_CHAIN_CHARS:
                return _valid(text)  # file names, dict keys, any repr may hold surrogates
    except Exception:  # never let a broken repr or a strange frame cost the exception itself
        return None
    return None


def _chain(exception: BaseException, detail: Detail) -> list[dict[str, Any]]:
    roots = _path_roots()
    values = []
    for error, source in _causes(exception):
        value: dict[str, Any] = {"type": type(error).__name__, "value": _message(error)}
        module = type(error).__module__
        if module not in ("builtins", None):
            value["module"] = module
        if source:
            value["source"] = source
        innermost = list(_frames(error.__traceback__))[-MAX_FRAMES:]  # before any repr is made
        value["frames"] = [_frame(frame, lineno, roots, detail) for frame, lineno in innermost]
        values.append(value)
    return values[::-1]


def _causes(exception: BaseException) -> Iterator[tuple[BaseException, str | None]]:
    """The raised exception, then each one that led to it (its ``__cause__``, else an
    unsuppressed ``__context__``, as ``traceback`` prints them), each with how it led to the
    one yielded before it."""
    seen: set[int] = set()
    current: BaseException | None = exception
    source: str | None = None
    while current is not None and id(current) not in seen and len(seen) < MAX_EXCEPTIONS:
        seen.add(id(current))
        if current.__cause__ is not None:
            following, relation = current.__cause__, "__cause__"
        elif current.__context__ is not None and not current.__suppress_context__:
            following, relation = current.__context__, "__context__"
        else:
            following, relation = None, None
        yield current, source
        current, source = following, relation


def _frames(tb: TracebackType | None) -> Iterator[tuple[FrameType, int | None]]:
    for frame, lineno in traceback.walk_tb(tb):
        if not _hidden(frame):
            yield frame, lineno


def _hidden(frame: FrameType) -> bool:
    return bool(frame.f_locals.get("__tracebackhide__") or frame.f_globals.get("__tracebackhide__"))


def _frame(
    frame: FrameType, lineno: int | None, roots: list[str], detail: Detail
) -> dict[str, Any]:
    code = frame.f_code
    path = code.co_filename
    pseudo = path.startswith("<") and path.endswith(">")
    abs_path = path if pseudo else os.path.abspath(path)
    out: dict[str, Any] = {
        "filename": abs_path if pseudo else _relative(abs_path, roots),
        "abs_path": abs_path,
        "function": code.co_name,
        "module": frame.f_globals.get("__name__"),
        "lineno": lineno,
        "in_app": not pseudo and not _external(abs_path),
    }
    if detail.source and lineno:
        out.update(_source_context(path, lineno, frame.f_globals))
    if detail.variables:
        out["vars"] = _variables(frame.f_locals)
    return out


def _path_roots() -> list[str]:
    """``sys.path`` entries as directory prefixes, longest first (the innermost root wins)."""
    roots = {os.path.join(os.path.abspath(entry or os.getcwd()), "") for entry in sys.path}
    return sorted(roots, key=len, reverse=True)


def _relative(abs_path: str, roots: list[str]) -> str:
    for root in roots:
        if abs_path.startswith(root):
            return abs_path[len(root) :]
    return os.path.basename(abs_path)


def _external(abs_path: str) -> bool:
    return abs_path.startswith(_STDLIB) or any(marker in abs_path for marker in _INSTALLED)


def _source_context(path: str, lineno: int, module_globals: Mapping[str, Any]) -> dict[str, Any]:
    lines = linecache.getlines(path, dict(module_globals))
    if not 0 < lineno <= len(lines):
        return {}
    index = lineno - 1
    return {
        "pre_context": [_line(text) for text in lines[max(0, index - CONTEXT_LINES) : index]],
        "context_line": _line(lines[index]),
        "post_context": [_line(text) for text in lines[index + 1 : index + 1 + CONTEXT_LINES]],
    }


def _line(text: str) -> str:
    return text.rstrip("\r\n")[:MAX_REPR]


# Containers are only ever iterated with islice: copying a 5-million-entry dict to keep ten of
# its items would stall the request that failed.


def _variables(local_variables: Mapping[str, Any]) -> dict[str, Any]:
    items = itertools.islice(local_variables.items(), MAX_VARIABLES)
    return {str(name): _value(value, MAX_DEPTH) for name, value in items}


def _value(value: Any, depth: int) -> Any:
    if depth > 1 and isinstance(value, Mapping):
        items = itertools.islice(value.items(), MAX_VARIABLES)
        return {str(key): _value(item, depth - 1) for key, item in items}
    if depth > 1 and isinstance(value, (list, tuple, set, frozenset)):
        return [_value(item, depth - 1) for item in itertools.islice(value, MAX_VARIABLES)]
    return _repr(value)


def _repr(value: Any) -> str:
    try:
        text = _bounded_repr(value, MAX_REPR, set())
    except Exception:
        return "<broken repr>"
    return _cut(text, MAX_REPR)


# The builtin reprs _bounded_repr writes itself (a subclass that keeps one reads the same).
_SLICED = (str, bytes, bytearray, array)  # cut before repr: each item is a character or more
_SLICED_REPRS = {kind.__repr__ for kind in _SLICED}
_BRACKETS = {list.__repr__: ("[", "]"), tuple.__repr__: ("(", ")"), dict.__repr__: ("{", "}")}
_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_CONTAINER_REPRS = {
    *_BRACKETS,
    set.__repr__,
    frozenset.__repr__,
    deque.__repr__,
    defaultdict.__repr__,
    OrderedDict.__repr__,
    *(view.__repr__ for view in _VIEWS),
}


def _bounded_repr(value: Any, limit: int, active: set[int]) -> str:
    """``repr(value)`` when it has at most ``limit`` characters; else more than ``limit`` of
    its first ones (so the caller's cut marks it), made from that many items at most, for the
    builtin containers, strings and buffers, however large. Other objects get their own
    ``repr``: how long that takes is theirs to say. ``active`` holds the containers being
    written, for one that holds itself (written ``[...]`` as ``repr`` writes it)."""
    limit = max(limit, 0)  # what is left once a long key is written; a negative slice is huge
    method = type(value).__repr__
    if method in _SLICED_REPRS and isinstance(value, _SLICED):
        return repr(value[: limit + 1] if len(value) > limit else value)
    if method not in _CONTAINER_REPRS:
        return repr(value)
    if id(value) in active:  # what repr writes for a container inside itself
        return "[...]" if method is list.__repr__ else "{...}" if isinstance(value, dict) else "..."
    active.add(id(value))
    try:
        return _container_repr(value, limit, active)
    finally:
        active.discard(id(value))


def _container_repr(value: Any, limit: int, active: set[int]) -> str:
    method = type(value).__repr__
    name = type(value).__name__
    if method in _BRACKETS:
        left, right = _BRACKETS[method]
        if isinstance(value, dict):
            return left + _items(value.items(), limit - 1, active, mapping=True) + right
        inner = _items(value, limit - 1, active)
        single = isinstance(value, tuple) and len(value) == 1
        return left + inner + ("," if single else "") + right
    if method is defaultdict.__repr__:
        head = f"{name}({_bounded_repr(value.default_factory, limit, active)}, {{"
        return head + _items(value.items(), limit - len(head), active, mapping=True) + "})"
    if method is OrderedDict.__repr__:
        if not value:
            return f"{name}()"
        if sys.version_info >= (3, 12):  # OrderedDict({...}) since 3.12, a list of pairs before
            inner = _items(value.items(), limit - len(name) - 2, active, mapping=True)
            return f"{name}({{{inner}}})"
        return f"{name}([" + _items(value.items(), limit - len(name) - 2, active) + "])"
    if isinstance(value, _VIEWS):
        return f"{name}([" + _items(value, limit - len(name) - 2, active) + "])"
    if isinstance(value, (set, frozenset)):
        if not value:
            return f"{name}()"
        inner = _items(value, limit - len(name) - 2, active)
        return "{" + inner + "}" if type(value) is set else f"{name}({{{inner}}})"
    # a deque
    maxlen = "" if value.maxlen is None else f", maxlen={value.maxlen}"
    return f"{name}([" + _items(value, limit - len(name) - 2, active) + "]" + maxlen + ")"


def _items(items: Iterable[Any], limit: int, active: set[int], mapping: bool = False) -> str:
    """The comma-separated reprs of ``items`` (a mapping's ``(key, value)`` pairs written
    ``key: value`` with ``mapping``) until past ``limit`` characters, then ``...``."""
    limit = max(limit, 0)
    written: list[str] = []
    length = 0
    for item in itertools.islice(items, limit + 1):  # each item takes a character
        if length > limit:
            written.append(CUT)
            break
        room = limit - length
        if mapping:
            key = _bounded_repr(item[0], room, active)
            text = f"{key}: {_bounded_repr(item[1], room - len(key) - 2, active)}"
        else:
            text = _bounded_repr(item, room, active)
        written.append(text)
        length += len(text) + 2
    return ", ".join(written)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


def already_recorded(exception: BaseException) -> bool:
    return _last_recorded == exception_key(exception)


def exception_key(exception: BaseException) -> ExceptionKey:
    """What tells one exception from another without keeping it (or its frames) alive."""
    innermost = exception.__traceback__
    while innermost is not None and innermost.tb_next is not None:
        innermost = innermost.tb_next
    return id(exception), type(exception).__qualname__, id(innermost)


def install(detail: Detail) -> None:
    """Make the SDK's ``Span.record_exception`` add the chain attribute."""
    from opentelemetry.sdk.trace import Span

    def wrap(original: Any) -> Any:
        def record_exception(
            self: Span,
            exception: BaseException,
            attributes: Any = None,
            timestamp: int | None = None,
            escaped: bool = False,
        ) -> None:
            global _last_recorded
            if self.is_recording():
                _last_recorded = exception_key(exception)
                if attributes is None or isinstance(attributes, Mapping):
                    # the SDK's own message and stacktrace, cut and made valid UTF-8 (the
                    # caller's attributes win over them, as over the SDK's)
                    try:
                        ours = _message_attributes(exception)
                    except Exception:  # the SDK's own are better than no event
                        ours = {}
                    chain = chain_json(exception, detail)  # never raises
                    if chain is not None:
                        ours[CHAIN] = chain
                    attributes = {**ours, **(attributes or {})}
            original(self, exception, attributes, timestamp, escaped)

        return record_exception

    patch(Span, "record_exception", wrap)


def uninstall() -> None:
    from opentelemetry.sdk.trace import Span

    unpatch(Span, "record_exception")
