"""Turn a formatted Python traceback into Sentry ``exception.values``.

The OpenTelemetry Python SDK records an exception as span-event (or log-record) attributes:
``exception.type`` (the class ``__name__``), ``exception.message`` (``str(exc)``) and
``exception.stacktrace``, which is ``"".join(traceback.format_exception(exc))``. That text
looks like this, one block per exception of the chain, the raised exception last::

    Traceback (most recent call last):
      File "/app/db.py", line 12, in connect
        engine.connect()
        ^^^^^^^^^^^^^^^^
      File "/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py", line 3, in connect
        raise OperationalError(...)
    sqlalchemy.exc.OperationalError: connection refused

    The above exception was the direct cause of the following exception:

    Traceback (most recent call last):
      File "/app/main.py", line 4, in <module>
        db.connect()
    RuntimeError: database unavailable

:func:`exception_values` parses it into the shape sentry-python sends (see
``sentry_sdk.utils.exceptions_from_error``): one value per exception, oldest first, each with
``type``, ``value``, optional ``module``, ``stacktrace.frames`` (oldest call first, like the
text) and ``mechanism``.

Choices:

* The raised exception (the last value) takes ``type``/``value`` from the OTel attributes, not
  from the text; its ``module`` comes from a dotted ``type_name`` or, when the text's final line
  is ``some.module.TypeName: ...``, from that line. Earlier values use their parsed
  ``Type: message`` line (message lines continue until the block ends; ``__notes__`` included,
  as sentry-python does). An earlier block without such a line is dropped.
* Chains carry sentry-python's ids: the raised exception is ``exception_id`` 0 with mechanism
  type ``otel``; its cause/context is 1 (``parent_id`` 0), and so on, each with mechanism type
  ``chained`` and ``source`` ``__cause__`` or ``__context__``. A single exception gets just
  ``{"type": "otel", "handled": ...}``. ``handled`` is omitted when unknown (None).
* Frames: ``filename`` is the path after ``site-packages/`` (or ``dist-packages/``) or after
  ``lib/pythonX.Y/`` for the stdlib, else the path as given; ``module`` is derived only for those
  and for ``<frozen module>``. ``in_app`` is False for them and for ``<string>``-like pseudo
  files. ``context_line`` is the stripped source line shown under the frame; 3.11 caret lines
  (``^^^``/``~~^~~``), ``[Previous line repeated N more times]`` (the repeats are not expanded),
  SyntaxError location blocks and ``capture_locals`` lines are skipped.
* ExceptionGroup boxes: only the group's own traceback and line are parsed; the sub-exception
  boxes are ignored, so the value is not flagged ``is_exception_group`` (it has no children).
* Bounds: at most :data:`MAX_VALUES` values (the newest ones are kept), at most
  :data:`MAX_FRAMES` frames per value (the oldest :data:`FRAMES_HEAD` and newest
  :data:`FRAMES_TAIL`, dropping the middle like Relay's trimming), and only the last
  :data:`MAX_STACKTRACE_CHARS` characters of the text are read.
* Never raises on bad text: garbage or truncated input yields one value with the frames found so
  far (or no ``stacktrace`` at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MECHANISM_TYPE = "otel"
MAX_VALUES = 10
FRAMES_HEAD = 50
FRAMES_TAIL = 200
MAX_FRAMES = FRAMES_HEAD + FRAMES_TAIL
MAX_STACKTRACE_CHARS = 1_000_000

_SEPARATORS = {
    "The above exception was the direct cause of the following exception:": "__cause__",
    "During handling of the above exception, another exception occurred:": "__context__",
}
# Line numbers are bounded so that int() stays cheap and never hits the str->int digit limit.
_FRAME_RE = re.compile(r'\s*File "(?P<path>.*)", line (?P<lineno>\d{1,9}|None), in (?P<func>.*)')
_LOCATION_RE = re.compile(r'\s*File "(?P<path>.*)", line \d+')  # SyntaxError detail, no "in"
_HEADER_RE = re.compile(r"\s*(?:Exception Group )?Traceback \(most recent call last\):\s*")
_REPEATED_RE = re.compile(r"\s*\[Previous line repeated \d+ more times?\]\s*")
_MARKER_RE = re.compile(r"\s*[\^~][\s\^~]*")  # 3.11+ position markers: ^^^^ or ~~~^^~~
_EXC_LINE_RE = re.compile(r"(?P<type>[^\s:]+)(?::\s?(?P<value>.*))?")
_EXTERNAL_RE = re.compile(r"[\\/](?:site|dist)-packages[\\/]")
_STDLIB_RE = re.compile(r"[\\/]lib(?:64)?[\\/]python\d+\.\d+t?[\\/]")
_FROZEN_RE = re.compile(r"<frozen (?P<module>[\w.]+)>")
_BOX_PREFIXES = ("  | ", "  + ")  # outermost ExceptionGroup box margin


@dataclass(slots=True)
class _Block:
    """One exception of the chain as parsed from the text."""

    frames: list[dict[str, Any]]
    type: str | None
    value: str
    source: str | None  # how this exception relates to the next one in the chain


def exception_values(
    type_name: str, message: str, stacktrace: str | None, *, handled: bool | None
) -> list[dict[str, Any]]:
    """Sentry ``exception.values`` (oldest first, the raised one LAST, as Sentry expects).

    ``type_name``/``message`` describe the raised exception (OTel ``exception.type`` and
    ``exception.message``); ``stacktrace`` is OTel ``exception.stacktrace``, the text of
    ``traceback.format_exception``. Always returns at least one value; never raises on bad text.
    """
    try:
        blocks = _parse(stacktrace) if stacktrace else []
    except Exception:  # a parser bug must not cost the error event: fall back to no frames
        blocks = []
    raised = blocks.pop() if blocks else None
    values = [_value(block.type, block.value, block.frames) for block in blocks if block.type]
    sources = [block.source for block in blocks if block.type]
    values.append(_raised_value(type_name, message, raised))
    add_mechanisms(values, sources, handled)
    return values


def _parse(stacktrace: str) -> list[_Block]:
    if len(stacktrace) > MAX_STACKTRACE_CHARS:
        stacktrace = stacktrace[-MAX_STACKTRACE_CHARS:].partition("\n")[2]
    lines = [line.removesuffix("\r") for line in stacktrace.split("\n")]
    return [_parse_block(chunk, source) for chunk, source in _split_chain(lines)[-MAX_VALUES:]]


def _split_chain(lines: list[str]) -> list[tuple[list[str], str | None]]:
    """Cut the text at the chain separators: (lines, source) per exception, oldest first."""
    chunks: list[tuple[list[str], str | None]] = []
    current: list[str] = []
    for line in lines:
        source = _SEPARATORS.get(line.strip())
        if source is None:
            current.append(line)
        else:
            chunks.append((current, source))
            current = []
    chunks.append((current, None))
    return chunks


def _parse_block(lines: list[str], source: str | None) -> _Block:
    lines = _unbox(lines)
    frames: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for index in range(_body_start(lines), len(lines)):
        line = lines[index]
        if not line.strip():
            continue
        match = _FRAME_RE.fullmatch(line)
        if match:
            current = _frame(match["path"], match["lineno"], match["func"])
            frames.append(current)
        elif not line[0].isspace():
            return _finish_block(frames, lines[index:], source)
        elif _LOCATION_RE.fullmatch(line):
            current = None  # SyntaxError's own location: its source lines are not a frame's
        elif current is not None and "context_line" not in current and _is_source(line):
            current["context_line"] = line.strip()
    return _Block(frames, None, "", source)


def _unbox(lines: list[str]) -> list[str]:
    """Keep only the outermost ExceptionGroup box (its traceback and line), without margins."""
    first = next((line for line in lines if line.strip()), "")
    if not first.startswith(_BOX_PREFIXES) and first.rstrip() != "  |":
        return lines
    inner = []
    for line in lines:
        if line.startswith("  +-"):  # the sub-exception boxes start here
            break
        if line.startswith(_BOX_PREFIXES):
            inner.append(line[4:])
        elif line.rstrip() == "  |":
            inner.append("")
    return inner


def _body_start(lines: list[str]) -> int:
    """Where frames (or the ``Type: message`` line) start: after the traceback header.

    Lines before the header are skipped, unless a frame or exception line comes first: an
    exception that was never raised has no header, and its message may embed another
    traceback (``multiprocessing``'s ``RemoteTraceback``).
    """
    for index, line in enumerate(lines):
        if _HEADER_RE.fullmatch(line):
            return index + 1
        if _FRAME_RE.fullmatch(line) or _EXC_LINE_RE.fullmatch(line):
            return index
    return 0


def _is_source(line: str) -> bool:
    return not _MARKER_RE.fullmatch(line) and not _REPEATED_RE.fullmatch(line)


def _finish_block(frames: list[dict[str, Any]], tail: list[str], source: str | None) -> _Block:
    """``tail`` starts at the ``Type: message`` line; later lines continue the message."""
    match = _EXC_LINE_RE.fullmatch(tail[0])
    if match is None:
        return _Block(frames, None, "\n".join(tail).rstrip(), source)
    value = "\n".join([match["value"] or "", *tail[1:]]).rstrip()
    return _Block(frames, match["type"], value, source)


def _frame(path: str, lineno: str, function: str) -> dict[str, Any]:
    frame: dict[str, Any] = {"filename": path, "abs_path": path, "function": function}
    external = _EXTERNAL_RE.search(path) or _STDLIB_RE.search(path)
    if external:
        frame["filename"] = path[external.end() :]
        module = _module_from_relative(frame["filename"])
    else:
        frozen = _FROZEN_RE.fullmatch(path)
        module = frozen["module"] if frozen else None
    if module:
        frame["module"] = module
    if lineno != "None":
        frame["lineno"] = int(lineno)
    frame["in_app"] = external is None and not (path.startswith("<") and path.endswith(">"))
    return frame


def _module_from_relative(relative: str) -> str | None:
    """``sqlalchemy/engine/base.py`` -> ``sqlalchemy.engine.base`` (None if not a module path)."""
    if not relative.endswith(".py"):
        return None
    parts = relative[:-3].replace("\\", "/").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    return ".".join(parts)


def _split_type(name: str) -> tuple[str | None, str]:
    """``sqlalchemy.exc.OperationalError`` -> (``sqlalchemy.exc``, ``OperationalError``)."""
    module, dot, short = name.rpartition(".")
    if dot and module and short:
        return module, short
    return None, name


def _value(type_name: str, message: str, frames: list[dict[str, Any]]) -> dict[str, Any]:
    module, short = _split_type(type_name)
    value: dict[str, Any] = {"type": short, "value": message}
    if module:
        value["module"] = module
    if frames:
        if len(frames) > MAX_FRAMES:
            frames = frames[:FRAMES_HEAD] + frames[-FRAMES_TAIL:]
        value["stacktrace"] = {"frames": frames}
    return value


def _raised_value(type_name: str, message: str, block: _Block | None) -> dict[str, Any]:
    value = _value(type_name, message, block.frames if block else [])
    parsed = block.type if block else None
    if "module" not in value and parsed and type_name and parsed.endswith("." + type_name):
        value["module"] = parsed[: -len(type_name) - 1]
    return value


def add_mechanisms(
    values: list[dict[str, Any]], sources: list[str | None], handled: bool | None
) -> None:
    """Linear chain of ids like sentry-python: raised = 0, its cause/context = 1, ..."""
    last = len(values) - 1
    for index, value in enumerate(values):
        mechanism: dict[str, Any] = {"type": MECHANISM_TYPE if index == last else "chained"}
        if handled is not None:
            mechanism["handled"] = handled
        if last:
            mechanism["exception_id"] = last - index
        if index != last:
            mechanism["parent_id"] = last - index - 1
            mechanism["source"] = sources[index] or "__context__"
        value["mechanism"] = mechanism
