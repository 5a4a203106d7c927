"""set_user, set_tag, set_context and capture_exception, with sentry_sdk's signatures, write
what the sidecar's Sentry mapping reads, on the current span and the request's span."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from otel_sidecar.instrumentation import capture_exception, set_context, set_tag, set_user
from otel_sidecar.instrumentation.exceptions import CHAIN
from tests.instrumentation.conftest import Captured


def finished(captured: Captured) -> dict[str, dict[str, Any]]:
    return {span.name: dict(span.attributes or {}) for span in captured.spans.get_finished_spans()}


def test_enrichment_reaches_the_local_root_and_the_current_span(captured: Captured) -> None:
    with captured.tracer.start_as_current_span("GET /lessons"):  # noqa: SIM117
        with captured.tracer.start_as_current_span("load lesson"):
            with captured.tracer.start_as_current_span("render"):
                set_user({"id": 42, "email": "a@example.org", "unknown": "x"})
                set_tag("lesson_id", 7)
                set_context("code_execution", {"language": "python", "timeout": 30, "ok": [1]})
    spans = finished(captured)
    expected = {
        "enduser.id": "42",
        "sentry.user.email": "a@example.org",
        "sentry.tag.lesson_id": "7",
        "sentry.context.code_execution.language": "python",
        "sentry.context.code_execution.timeout": 30,
        "sentry.context.code_execution.ok": "[1]",
    }
    assert spans["GET /lessons"] == expected
    assert spans["render"] == expected
    assert spans["load lesson"] == {}


def test_a_remote_parent_does_not_make_a_root(captured: Captured) -> None:
    """The local root is the first span in this process, even under a propagated parent."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(remote)):  # noqa: SIM117
        with captured.tracer.start_as_current_span("server"):
            with captured.tracer.start_as_current_span("inner"):
                set_tag("feature", "x")
    assert finished(captured)["server"] == {"sentry.tag.feature": "x"}


def test_outside_any_span_enrichment_does_nothing(captured: Captured) -> None:
    set_user({"id": 1})
    set_tag("a", "b")
    assert captured.spans.get_finished_spans() == ()


@pytest.mark.parametrize(
    "capture",
    [lambda: capture_exception(), lambda: capture_exception(sys.exc_info()[1]),
     lambda: capture_exception(sys.exc_info())],
    ids=["being-handled", "exception", "exc-info"],
)  # fmt: skip
def test_capture_exception_records_a_handled_exception_with_frames(
    captured: Captured, capture: Callable[[], str | None]
) -> None:
    """The exception being handled, the exception given, or ``sys.exc_info()``'s triple: each
    of sentry_sdk's ways to call it."""
    with captured.tracer.start_as_current_span("request"):
        try:
            int("forty-two")
        except ValueError:
            assert capture() is None  # the event id is Sentry's to give
    (event,) = captured.spans.get_finished_spans()[0].events
    attributes = dict(event.attributes or {})
    assert attributes["exception.escaped"] == "False"
    assert json.loads(attributes[CHAIN])[0]["frames"][-1]["function"] == (
        "test_capture_exception_records_a_handled_exception_with_frames"
    )


def test_capture_exception_outside_a_span_sends_an_error_log(captured: Captured) -> None:
    capture_exception(LookupError("no lesson 9"))
    (record,) = captured.records()
    assert record.severity_text == "ERROR" and record.body == "LookupError: no lesson 9"
    assert dict(record.attributes or {})["exception.type"] == "LookupError"
    assert capture_exception() is None  # nothing being handled: nothing sent
    assert capture_exception(sys.exc_info()) is None
    try:
        raise KeyError("lesson")
    except KeyError:
        capture_exception(sys.exc_info())
    assert [r.body for r in captured.records()] == [
        "LookupError: no lesson 9",
        "KeyError: 'lesson'",
    ]
