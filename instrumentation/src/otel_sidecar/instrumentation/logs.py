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
``event`` as the body. When structlog hands the event on to a stdlib logger, that logger's
record is recognised as the same event and not captured again.

Both carry the active trace and span ids, the thread, the process id, and for an exception the
``exception.*`` attributes with the frames (:mod:`otel_sidecar.instrumentation.exceptions`).
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
from typing import Any

from opentelemetry._logs import SeverityNumber, get_logger
from opentelemetry.context import get_current

from otel_sidecar.instrumentation.exceptions import Detail, already_recorded, exception_attributes
from otel_sidecar.instrumentation.patches import patch, unpatch

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
_MAX_ITEMS = 100  # per list or dict attribute value
_INT64 = (-(2**63), 2**63 - 1)


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
# (logger name, level) of the stdlib record structlog is about to hand on: already emitted.
_handed_on: ContextVar[tuple[str, int] | None] = ContextVar("otel_sidecar_handed_on", default=None)


def install(capture: Capture) -> None:
    """Capture stdlib records from now on, and structlog events once structlog is imported."""
    global _capture
    _capture = capture
    patch(logging.Logger, "callHandlers", _call_handlers)
    from wrapt import register_post_import_hook

    register_post_import_hook(_patch_structlog, "structlog")


def uninstall() -> None:
    _logger.cache_clear()
    unpatch(logging.Logger, "callHandlers")
    structlog = sys.modules.get("structlog")
    if structlog is not None:
        unpatch(structlog.BoundLoggerBase, "__init__")


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
    if _emitting.get():
        return  # the SDK logging about a record of ours: not a record of the app's
    token = _emitting.set(True)
    try:
        attributes["thread.id"] = threading.get_ident()
        attributes["thread.name"] = threading.current_thread().name
        attributes["process.pid"] = os.getpid()
        if exception is not None and not already_recorded(exception):
            attributes.update(exception_attributes(exception, _capture.detail))
        _logger(scope).emit(
            timestamp=time_ns,
            observed_timestamp=time.time_ns(),
            context=get_current(),
            severity_number=_severity(levelno),
            severity_text=level_name,
            body=body,
            attributes=attributes,
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


def attribute(value: Any, depth: int = 3) -> Any:
    """A value OTLP can carry: scalars as they are, containers (bounded), anything else as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if value is None or isinstance(value, (bool, float, str, bytes)):
        return value
    if depth and isinstance(value, Mapping):
        items = list(value.items())[:_MAX_ITEMS]
        return {str(key): attribute(item, depth - 1) for key, item in items if item is not None}
    if depth and isinstance(value, (list, tuple, set, frozenset)):
        return [attribute(item, depth - 1) for item in list(value)[:_MAX_ITEMS]]
    try:
        return str(value)
    except Exception:
        return "<unprintable>"


# --- stdlib logging --------------------------------------------------------------------------


def _call_handlers(original: Any) -> Any:
    def callHandlers(self: logging.Logger, record: logging.LogRecord) -> None:
        original(self, record)
        capture_record(record)

    return callHandlers


def capture_record(record: logging.LogRecord) -> None:
    if record.levelno < _capture.threshold(record.name) or record.name.startswith(_OWN_LOGGERS):
        return
    if _handed_on.get() == (record.name, record.levelno):
        _handed_on.set(None)
        return  # structlog's event, emitted with its keys before it reached this logger
    attributes = {
        key: attribute(value)
        for key, value in vars(record).items()
        if key not in _RECORD_FIELDS and not key.startswith("_") and value is not None
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

    patch(structlog.BoundLoggerBase, "__init__", bound_logger_init)


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
    if isinstance(logger, logging.Logger):
        if logger.disabled or not logger.isEnabledFor(levelno):
            return  # the app's stdlib levels say no
        if levelno >= _capture.threshold(logger.name):
            _handed_on.set((logger.name, levelno))
    scope = str(event_dict.get("logger") or getattr(logger, "name", "") or "structlog")
    if levelno < _capture.threshold(scope):
        return
    exception = _structlog_exception(event_dict)
    attributes = {
        str(key): attribute(value)
        for key, value in event_dict.items()
        if key not in _STRUCTLOG_FIELDS and not str(key).startswith("_") and value is not None
    }
    if exception is not None:
        attributes.pop("exception", None)  # its text, already rendered: exception.* replace it
    body = str(event_dict.get("event", ""))
    emit(scope, levelno, level_name, body, attributes, exception, time.time_ns())


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
