"""The app's logs as OpenTelemetry log records: stdlib ``logging`` and structlog, each event once.

**stdlib logging.** Every record a logger handles (it passed the logger's level, filters and
``disabled``) is captured in ``Logger.callHandlers``, as sentry-sdk captures them, rather than by
a handler on the root logger: no handler list the app configures is touched, so
``logging.basicConfig`` keeps working, and loggers that do not propagate to the root (uvicorn's)
are seen too. Records of ``uvicorn.*`` loggers are taken from
``OTEL_SIDECAR_APP_UVICORN_LOG_LEVEL``, all others from ``OTEL_SIDECAR_APP_LOG_LEVEL``. The
OpenTelemetry SDK's own loggers are left out, so an exporter that fails cannot feed on its own
complaints.

**structlog.** A processor placed just before the app's renderer (whatever chain the app
configures, in every bound logger) emits each event with its keys as typed attributes and its
``event`` as the body. When structlog hands the event on to a stdlib logger, the event is
sent when that logger's record reaches its handlers, in the record's place, so it is sent once.
When a filter of the app's on that logger drops the record, the event is not sent at all, as a
stdlib record the filter drops is not: the app said it does not want it.

**Unhandled exceptions.** An exception that ends a thread (``threading.excepthook``) or the
program (``sys.excepthook``) is sent as an ``ERROR`` record with ``exception.escaped`` true,
unless it was sent already (recorded on the span it escaped, or logged before it was raised
again). The hooks the app had run after, as before: its output does not change.

All of them carry the active trace and span ids, the thread, the process id, and for an
exception the ``exception.*`` attributes with the frames
(:mod:`otel_sidecar.instrumentation.exceptions`). Every string is valid UTF-8 (lone surrogates,
from ``surrogateescape``d bytes, become U+FFFD: protobuf refuses them, failing the whole export
batch), a body is cut at :data:`~otel_sidecar.instrumentation.values.MAX_BODY_BYTES` and a text
attribute at :data:`~otel_sidecar.instrumentation.values.MAX_VALUE_BYTES`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from opentelemetry._logs import SeverityNumber, get_logger
from opentelemetry.context import get_current

from otel_sidecar.instrumentation.exceptions import (
    Detail,
    ExceptionKey,
    already_recorded,
    exception_attributes,
    exception_key,
)
from otel_sidecar.instrumentation.patches import patch, unpatch
from otel_sidecar.instrumentation.values import attribute, bounded_text, utf8, valid_utf8

_OWN_LOGGERS = ("opentelemetry", "otel_sidecar")
# What a stdlib LogRecord always has (and what formatters and the logging instrumentation add):
# the rest are the app's ``extra=`` keys, sent as attributes.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "otelSpanID",
    "otelTraceID",
    "otelTraceSampled",
    "otelServiceName",
    "color_message",  # uvicorn's message again, with terminal colour codes
}
_STRUCTLOG_FIELDS = frozenset({"event", "level", "timestamp", "exc_info", "stack_info", "logger"})
_STRUCTLOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "err": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


@dataclass(frozen=True)
class Capture:
    """What is captured: the lowest levels sent, and the detail of exception frames."""

    level: int = logging.INFO
    uvicorn_level: int = logging.INFO
    detail: Detail = field(default_factory=Detail)

    def threshold(self, logger_name: str) -> int:
        uvicorn = logger_name == "uvicorn" or logger_name.startswith("uvicorn.")
        return self.uvicorn_level if uvicorn else self.level


_capture = Capture()
_emitting: ContextVar[bool] = ContextVar("otel_sidecar_emitting", default=False)
# The exception last sent with its attributes, as sentry-sdk's dedupe remembers the last one
# seen: one logged and raised again is not sent a second time as unhandled. Its key, never the
# exception: that would keep its frames' variables alive.
_last_sent: ExceptionKey | None = None


@dataclass
class _HandOff:
    """One structlog call on a stdlib logger, from its processors to that logger's handlers.

    The event waits here until the stdlib record of its logger name and level reaches the
    handlers, and is sent then, in the record's place. It lives exactly as long as the call:
    when a filter drops the record, the event goes with it, and nothing is left over to
    swallow a later record.
    """

    waiting_for: tuple[str, int] | None = None  # the record's logger name and level
    event: tuple[Any, ...] | None = None  # emit's arguments; None when below the capture level


_hand_off: ContextVar[_HandOff | None] = ContextVar("otel_sidecar_hand_off", default=None)


def install(capture: Capture) -> None:
    """Capture stdlib records from now on, and structlog events once structlog is imported."""
    global _capture
    _capture = capture
    patch(logging.Logger, "callHandlers", _call_handlers)
    install_excepthooks()
    from wrapt import register_post_import_hook

    register_post_import_hook(_patch_structlog, "structlog")


def uninstall() -> None:
    _logger.cache_clear()
    unpatch(logging.Logger, "callHandlers")
    uninstall_excepthooks()
    structlog = sys.modules.get("structlog")
    if structlog is not None:
        unpatch(structlog.BoundLoggerBase, "__init__")
        unpatch(structlog.BoundLoggerBase, "_proxy_to_logger")


# --- emitting --------------------------------------------------------------------------------


def emit(
    scope: str,
    levelno: int,
    level_name: str,
    body: str,
    attributes: dict[str, Any],
    exception: BaseException | None,
    time_ns: int,
) -> None:
    """One OpenTelemetry log record, in the current trace context. Never raises."""
    global _last_sent
    if _emitting.get():
        return  # the SDK logging about a record of ours: not a record of the app's
    token = _emitting.set(True)
    try:
        attributes["thread.id"] = threading.get_ident()
        attributes["thread.name"] = threading.current_thread().name
        attributes["process.pid"] = os.getpid()
        if exception is not None and not already_recorded(exception):
            attributes.update(exception_attributes(exception, _capture.detail))
            _last_sent = exception_key(exception)
        _logger(scope).emit(
            timestamp=time_ns,
            observed_timestamp=time.time_ns(),
            context=get_current(),
            severity_number=_severity(levelno),
            severity_text=level_name,
            body=bounded_text(body),
            # The last step, so that no string of any origin (keys, paths, exception messages,
            # nested values) escapes it.
            attributes={utf8(key): valid_utf8(value) for key, value in attributes.items()},
        )
    except Exception:  # logging must never break the app
        pass
    finally:
        _emitting.reset(token)


@functools.lru_cache(maxsize=256)
def _logger(scope: str) -> Any:
    """The SDK's logger for a scope (its lookup takes a lock; scopes are logger names, few)."""
    return get_logger(scope)


@functools.lru_cache(maxsize=64)
def _severity(levelno: int) -> SeverityNumber:
    """stdlib levels to OpenTelemetry's: DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21."""
    if levelno <= logging.NOTSET:
        return SeverityNumber.UNSPECIFIED
    if levelno < logging.DEBUG:
        return SeverityNumber.TRACE
    return SeverityNumber(min(5 + 4 * ((levelno - logging.DEBUG) // 10), 21))


# --- stdlib logging --------------------------------------------------------------------------


def _call_handlers(original: Any) -> Any:
    def callHandlers(self: logging.Logger, record: logging.LogRecord) -> None:
        original(self, record)
        with contextlib.suppress(Exception):  # logging must never break the app
            capture_record(record)

    return callHandlers


def _captures(logger_name: str, levelno: int) -> bool:
    """Whether a record of this logger and level reaching its handlers is sent."""
    return levelno >= _capture.threshold(logger_name) and not logger_name.startswith(_OWN_LOGGERS)


def capture_record(record: logging.LogRecord) -> None:
    if not _captures(record.name, record.levelno):
        return
    hand_off = _hand_off.get()
    if hand_off is not None and hand_off.waiting_for == (record.name, record.levelno):
        hand_off.waiting_for = None  # only this record: a second one is the app's own
        if hand_off.event is not None:
            emit(*hand_off.event)  # structlog's event, with its keys, in this record's place
        return
    attributes = {
        str(key): attribute(value)  # extra= takes keys of any type
        for key, value in vars(record).items()
        if key not in _RECORD_FIELDS and not str(key).startswith("_") and value is not None
    }
    attributes["code.file.path"] = record.pathname
    attributes["code.function.name"] = record.funcName
    attributes["code.line.number"] = record.lineno
    exception = record.exc_info[1] if record.exc_info else None
    emit(
        record.name,
        record.levelno,
        record.levelname,
        _message(record),
        attributes,
        exception,
        int(record.created * 1e9),
    )


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a format string and arguments that do not match
        return str(record.msg)


# --- structlog -------------------------------------------------------------------------------


def _patch_structlog(structlog: Any) -> None:
    """Every bound logger gets the capturing processor, whatever chain it was given."""

    def bound_logger_init(original: Any) -> Any:
        def __init__(self: Any, logger: Any, processors: Any, context: Any) -> None:
            original(self, logger, with_capture(processors), context)

        return __init__

    def proxy_to_logger(original: Any) -> Any:
        # Every wrapper class hands its events on through here (stdlib's BoundLogger by
        # super()): the processors run, then the wrapped logger's method.
        def _proxy_to_logger(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _hand_off.set(_HandOff())
            try:
                return original(self, *args, **kwargs)
            finally:
                _hand_off.reset(token)  # whatever happened to the event: it ends here

        return _proxy_to_logger

    patch(structlog.BoundLoggerBase, "__init__", bound_logger_init)
    patch(structlog.BoundLoggerBase, "_proxy_to_logger", proxy_to_logger)


def with_capture(processors: Any) -> Any:
    """The chain with :func:`structlog_processor` just before its last step (the renderer)."""
    chain = list(processors)
    if not chain or structlog_processor in chain:
        return processors
    chain.insert(len(chain) - 1, structlog_processor)
    return chain


def structlog_processor(logger: Any, method_name: str, event_dict: Any) -> Any:
    with contextlib.suppress(Exception):  # logging must never break the app
        _capture_event(logger, method_name, event_dict)
    return event_dict


def _capture_event(logger: Any, method_name: str, event_dict: Mapping[str, Any]) -> None:
    level_name = str(event_dict.get("level") or method_name).lower()
    levelno = _STRUCTLOG_LEVELS.get(level_name, logging.INFO)
    stdlib = isinstance(logger, logging.Logger)
    if stdlib and (logger.disabled or not logger.isEnabledFor(levelno)):
        return  # the app's stdlib levels say no
    scope = str(event_dict.get("logger") or getattr(logger, "name", "") or "structlog")
    event = _structlog_event(scope, levelno, level_name, event_dict)
    # When the stdlib record it becomes will be captured, the event waits for that record (and
    # goes if it never comes). No hand-off under way: structlog is not patched (uninstalled),
    # and neither is capture.
    hand_off = _hand_off.get() if stdlib and _captures(logger.name, levelno) else None
    if hand_off is not None:
        hand_off.waiting_for, hand_off.event = (logger.name, levelno), event
    elif event is not None:
        emit(*event)


def _structlog_event(
    scope: str, levelno: int, level_name: str, event_dict: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """``emit``'s arguments for the event, or None when its level is below the capture level."""
    if levelno < _capture.threshold(scope):
        return None
    exception = _structlog_exception(event_dict)
    attributes = {
        str(key): attribute(value)
        for key, value in event_dict.items()
        if key not in _STRUCTLOG_FIELDS and not str(key).startswith("_") and value is not None
    }
    if exception is not None:
        attributes.pop("exception", None)  # its text, already rendered: exception.* replace it
    body = str(event_dict.get("event", ""))
    return (scope, levelno, level_name, body, attributes, exception, time.time_ns())


def _structlog_exception(event_dict: Mapping[str, Any]) -> BaseException | None:
    """The event's exception: ``exc_info`` as structlog takes it, or the one being handled
    when an earlier processor (``format_exc_info``, ``dict_tracebacks``) already rendered it."""
    exc_info = event_dict.get("exc_info")
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1]
    rendered = event_dict.get("exception")
    if exc_info or (isinstance(rendered, str) and rendered.startswith("Traceback")):
        return sys.exc_info()[1]
    if isinstance(rendered, list) and rendered and isinstance(rendered[0], dict):
        return sys.exc_info()[1]
    return None


# --- unhandled exceptions ---------------------------------------------------------------------


def install_excepthooks() -> None:
    """Send what ends a thread or the program, before the hooks the app had (which still run)."""
    patch(threading, "excepthook", _threading_excepthook)
    patch(sys, "excepthook", _sys_excepthook)


def uninstall_excepthooks() -> None:
    unpatch(threading, "excepthook")
    unpatch(sys, "excepthook")


def _threading_excepthook(original: Any) -> Any:
    def excepthook(args: Any) -> None:
        with contextlib.suppress(Exception):  # the app's hook runs whatever happens here
            thread = args.thread or threading.current_thread()
            body = f"Unhandled exception in thread {thread.name}"
            capture_unhandled(args.exc_value, "threading", body)
        original(args)

    return excepthook


def _sys_excepthook(original: Any) -> Any:
    def excepthook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):  # the app's hook runs whatever happens here
            capture_unhandled(value, "sys", "Unhandled exception")
        original(kind, value, traceback)

    return excepthook


def capture_unhandled(exception: BaseException | None, scope: str, body: str) -> None:
    """An ``ERROR`` record for an exception nothing caught, under the scope of the hook that
    saw it: ``exception.escaped`` true, as the SDK marks one that escaped a span."""
    # SystemExit and Ctrl-C end a program on purpose (threading's own hook ignores the first).
    if exception is None or isinstance(exception, (SystemExit, KeyboardInterrupt)):
        return
    if exception_key(exception) == _last_sent or already_recorded(exception):
        return  # sent already, logged or on its span: once per exception
    if _capture.threshold(scope) > logging.ERROR:
        return
    attributes: dict[str, Any] = {"exception.escaped": True}
    emit(scope, logging.ERROR, "ERROR", body, attributes, exception, time.time_ns())
