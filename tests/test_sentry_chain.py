"""Sentry ``exception.values`` from the zero-code side's exception chain: taken field by field
when sound, refused whole (so the traceback text is parsed instead) when not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporters.sentry import chain, errors, mapping
from exporters.sentry.records import SERVER, Event, LogRecord
from tests.test_sentry_mapping import span

FRAME = {
    "filename": "helloagents/sandbox.py",
    "abs_path": "/srv/app/helloagents/sandbox.py",
    "module": "helloagents.sandbox",
    "function": "_binary",
    "lineno": 70,
    "in_app": True,
    "pre_context": ["", "def _binary(op, left, right):"],
    "context_line": "    return _OPERATORS[type(op)](left, right)",
    "post_context": ["", ""],
    "vars": {"left": "10", "right": "0", "op": "<ast.Div object at 0x7f>"},
}
CHAIN = [
    {"type": "KeyError", "value": "'user'", "source": "__cause__", "frames": [FRAME]},
    {"type": "LookupFailed", "module": "helloagents.errors", "value": "no user", "frames": [FRAME]},
]


def test_a_sound_chain_becomes_sentrys_values() -> None:
    values = chain.exception_values(json.dumps(CHAIN), handled=False)
    assert values is not None
    cause, raised = values
    assert raised["type"] == "LookupFailed" and raised["module"] == "helloagents.errors"
    assert raised["stacktrace"]["frames"] == [FRAME]  # every field as the app collected it
    assert raised["mechanism"] == {"type": "otel", "handled": False, "exception_id": 0}
    assert cause["mechanism"] == {
        "type": "chained", "handled": False, "exception_id": 1, "parent_id": 0,
        "source": "__cause__",
    }  # fmt: skip
    assert "module" not in cause


@pytest.mark.parametrize(
    "broken",
    [
        "not json",
        "{}",
        "[]",
        json.dumps([{"value": "no type"}]),
        json.dumps([{"type": "E", "frames": "not a list"}]),
        json.dumps([{"type": "E", "frames": [{**FRAME, "lineno": "70"}]}]),
        json.dumps([{"type": "E", "frames": [{**FRAME, "lineno": True}]}]),
        json.dumps([{"type": "E", "frames": [{**FRAME, "in_app": "yes"}]}]),
        json.dumps([{"type": "E", "frames": [{**FRAME, "vars": ["x"]}]}]),
        json.dumps([{"type": "E", "frames": [{**FRAME, "pre_context": "x"}]}]),
        json.dumps([{"type": "E", "frames": [{**FRAME, "function": 7}]}]),
        json.dumps([{"type": 1}]),
        '[{"type": "E", "frames": [{"vars": {"x": NaN}}]}]',  # not JSON; not written by the app
        json.dumps([{"type": "E", "frames": [{"vars": {"x": "[" * 20}}]}]).replace(
            '"' + "[" * 20 + '"', "[" * 20 + "]" * 20
        ),  # deeper than the app side trims
        "[" * 100_000 + "]" * 100_000,
        "x" * 2_000_000,
        None,
        42,
    ],
)
def test_an_unsound_chain_is_refused_whole(broken: Any) -> None:
    assert chain.exception_values(broken, handled=None) is None


def test_a_chain_is_bounded_like_the_text() -> None:
    long = [{"type": f"E{n}", "frames": [{"function": "f"}] * 300} for n in range(15)]
    values = chain.exception_values(json.dumps(long), handled=None)
    assert values is not None
    assert [v["type"] for v in values] == [f"E{n}" for n in range(5, 15)]
    assert len(values[-1]["stacktrace"]["frames"]) == 250


def exception_event(**attributes: Any) -> Event:
    return Event("exception", 5, {"exception.type": "builtins.KeyError", "exception.message":
                                  "'k'", **attributes})  # fmt: skip


def test_the_error_uses_the_chain_else_the_text() -> None:
    server = span(SERVER, http__request__method="GET")
    chained = exception_event(**{"otel_sidecar.exception.chain": json.dumps(CHAIN)})
    event = errors.error_from_span_event(server, chained, None, [], mapping.Defaults("", "", "1"))
    assert event["exception"]["values"][-1]["type"] == "LookupFailed"
    text = "Traceback (most recent call last):\n  File \"/a/b.py\", line 3, in f\nKeyError: 'k'\n"
    plain = exception_event(**{"exception.stacktrace": text, "otel_sidecar.exception.chain": "["})
    event = errors.error_from_span_event(server, plain, None, [], mapping.Defaults("", "", "1"))
    (value,) = event["exception"]["values"]
    assert value["stacktrace"]["frames"][0]["filename"] == "/a/b.py"


def test_variables_are_filtered_as_sentry_would() -> None:
    frame = {**FRAME, "vars": {"config": "{'auth': 'basic'}", "n": "1"}}
    attributes = {"otel_sidecar.exception.chain": json.dumps([{"type": "E", "frames": [frame]}])}
    event = errors.error_from_span_event(
        span(SERVER), exception_event(**attributes), None, [], mapping.Defaults("", "", "1")
    )
    assert event["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"] == {
        "config": "[Filtered]", "n": "1",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("escaped", "status", "handled"),
    [
        ("False", 0, True),  # recorded and caught (capture_exception); the SDK's text
        (False, 0, True),  # a bool, as other SDKs write it
        ("false", 0, True),
        ("True", 0, False),
        (True, 0, False),
        ("False", 2, False),  # it failed its span: it escaped, whatever the SDK wrote
        (None, 2, False),
        (None, 0, None),
    ],
)
def test_handled_unless_it_escaped(escaped: Any, status: int, handled: bool | None) -> None:
    attributes = {} if escaped is None else {"exception.escaped": escaped}
    event = errors.error_from_span_event(
        span(SERVER, status=status), exception_event(**attributes), None, [],
        mapping.Defaults("", "", "1"),
    )  # fmt: skip
    assert event["exception"]["values"][-1]["mechanism"].get("handled") is handled


@pytest.mark.parametrize(("escaped", "handled"), [(None, True), ("True", False), (True, False)])
def test_an_exception_log_is_handled_unless_it_escaped(escaped: Any, handled: bool) -> None:
    """A logged exception was caught; one the app's excepthook reports escaped."""
    attributes = {"exception.type": "E", "exception.message": "m"}
    if escaped is not None:
        attributes["exception.escaped"] = escaped
    record = LogRecord(None, None, 1, 17, "ERROR", "boom", attributes, {}, "threading")
    event = errors.error_from_log(record, None, None, [], mapping.Defaults("", "", "0.1"))
    assert event["exception"]["values"][-1]["mechanism"]["handled"] is handled
