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

import json
import linecache
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from otel_sidecar.instrumentation.patches import patch, unpatch
from otel_sidecar.instrumentation.variables import CUT, MAX_REPR, cut, local_variables

CHAIN = "otel_sidecar.exception.chain"
MAX_EXCEPTIONS = 10
MAX_FRAMES = 100
CONTEXT_LINES = 5
MAX_CHAIN_CHARS = 256 * 1024
# Messages are read, not scrolled: a SQL error with its statement fits, a dumped payload does not.
MAX_MESSAGE_CHARS = 8 * 1024
MAX_STACKTRACE_CHARS = MAX_CHAIN_CHARS  # the text form of the same frames gets the same room

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
    return _valid(cut(_safe_str(exception), MAX_MESSAGE_CHARS))


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
        out["vars"] = local_variables(frame.f_locals)
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
