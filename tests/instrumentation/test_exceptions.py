"""The exception chain the zero-code side attaches: what sentry-sdk collects for each frame,
bounded, and never at the cost of the exception itself."""

from __future__ import annotations

import gc
import json
import logging
import sys
import traceback
import tracemalloc
import weakref
from array import array
from collections import OrderedDict, defaultdict, deque
from pathlib import Path
from typing import Any

import pytest

from otel_sidecar.instrumentation import exceptions
from otel_sidecar.instrumentation.exceptions import CHAIN, Detail, chain_json
from otel_sidecar.instrumentation.variables import MAX_REPR, bounded_repr
from tests.instrumentation.conftest import Captured


def chain_of(error: BaseException, detail: Detail | None = None) -> list[dict[str, Any]]:
    text = chain_json(error, detail or Detail())
    assert text is not None
    return json.loads(text)


def raised(function: Any, *args: Any) -> BaseException:
    try:
        function(*args)
    except BaseException as error:
        return error
    raise AssertionError("did not raise")


def divide(numerator: int, denominator: int) -> float:
    note = "about to divide"  # noqa: F841 (a local the frame shows)
    return numerator / denominator


def wrap_lookup(key: str) -> None:
    try:
        {}[key]
    except KeyError as error:
        raise RuntimeError("lookup failed") from error


class TestFrames:
    def test_each_frame_has_what_sentry_shows(self) -> None:
        (value,) = chain_of(raised(divide, 1, 0))
        assert (value["type"], value["value"]) == ("ZeroDivisionError", "division by zero")
        assert "module" not in value  # builtins
        frame = value["frames"][-1]
        assert frame["function"] == "divide" and frame["module"] == __name__
        assert frame["abs_path"] == __file__
        assert frame["filename"] == "tests/instrumentation/test_exceptions.py"  # from its root
        assert frame["in_app"] is True
        assert frame["lineno"] == divide.__code__.co_firstlineno + 2
        assert frame["context_line"] == "    return numerator / denominator"
        assert frame["pre_context"][-2:] == [
            "def divide(numerator: int, denominator: int) -> float:",
            '    note = "about to divide"  # noqa: F841 (a local the frame shows)',
        ]
        assert frame["post_context"][:2] == ["", ""]
        assert frame["vars"] == {"numerator": "1", "denominator": "0", "note": "'about to divide'"}

    def test_standard_library_and_installed_packages_are_not_in_app(self) -> None:
        (value,) = chain_of(raised(json.loads, "{"))
        assert value["module"] == "json.decoder"
        library = value["frames"][-1]
        assert library["module"] == "json.decoder" and library["in_app"] is False
        assert library["filename"] == "json/decoder.py"
        from sqlalchemy import create_engine

        installed = chain_of(raised(create_engine, "no-such-database://"))[-1]["frames"][-1]
        assert "site-packages" in installed["abs_path"] and installed["in_app"] is False

    def test_a_chain_runs_oldest_first_with_how_each_led_on(self) -> None:
        cause, effect = chain_of(raised(wrap_lookup, "user"))
        assert (cause["type"], cause["value"], cause["source"]) == (
            "KeyError",
            "'user'",
            "__cause__",
        )
        assert (effect["type"], "source" in effect) == ("RuntimeError", False)

    def test_a_suppressed_context_is_left_out(self) -> None:
        def suppressed() -> None:
            try:
                divide(1, 0)
            except ZeroDivisionError:
                raise ValueError("clean") from None

        (value,) = chain_of(raised(suppressed))
        assert value["type"] == "ValueError"

    def test_a_context_is_kept(self) -> None:
        def during() -> None:
            try:
                divide(1, 0)
            except ZeroDivisionError:
                raise ValueError("while handling")  # noqa: B904

        context, raised_value = chain_of(raised(during))
        assert context["source"] == "__context__" and raised_value["type"] == "ValueError"

    def test_a_cycle_ends(self) -> None:
        first, second = ValueError("a"), ValueError("b")
        first.__context__, second.__context__ = second, first
        assert len(chain_of(first)) == 2


class TestBounds:
    def test_variables_are_trimmed_as_sentry_sdk_trims_them(self) -> None:
        def many(**values: Any) -> None:
            locals().update(values)
            raise RuntimeError("x")

        long_text = "x" * 5000
        nested = {"a": {"b": {"c": {"d": 1}}}}
        error = raised(lambda: many(text=long_text, nested=nested, items=list(range(50))))
        variables = chain_of(error)[0]["frames"][-1]["vars"]["values"]
        assert len(variables["text"]) == MAX_REPR and variables["text"].endswith("...")
        assert variables["items"] == [str(n) for n in range(10)]
        assert variables["nested"] == {
            "a": "{'b': {'c': {'d': 1}}}"
        }  # the local is the first level

    def test_at_most_ten_variables_a_frame(self) -> None:
        def crowded() -> None:
            a = b = c = d = e = f = g = h = i = j = k = l = 1  # noqa: E741, F841
            raise RuntimeError("x")

        assert len(chain_of(raised(crowded))[0]["frames"][-1]["vars"]) == 10

    def test_a_broken_repr_is_named_not_raised(self) -> None:
        class Broken:
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        def fail(value: Any) -> None:
            raise ValueError("x")

        frame = chain_of(raised(fail, Broken()))[0]["frames"][-1]
        assert frame["vars"]["value"] == "<broken repr>"

    def test_past_the_size_limit_variables_go_first(self, monkeypatch: pytest.MonkeyPatch) -> None:
        error = raised(divide, 1, 0)
        with_vars = len(chain_json(error, Detail()) or "")
        without = len(chain_json(error, Detail(variables=False)) or "")
        monkeypatch.setattr(exceptions, "MAX_CHAIN_CHARS", (with_vars + without) // 2)
        frame = chain_of(error)[0]["frames"][-1]
        assert "vars" not in frame and "context_line" in frame
        monkeypatch.setattr(exceptions, "MAX_CHAIN_CHARS", 10)
        assert chain_json(error, Detail()) is None

    def test_turned_off_details_are_left_out(self) -> None:
        frame = chain_of(raised(divide, 1, 0), Detail(variables=False, source=False))[0]["frames"][
            -1
        ]
        assert "vars" not in frame and "pre_context" not in frame and frame["lineno"] > 0

    def test_hidden_frames_are_left_out(self) -> None:
        def helper() -> None:
            __tracebackhide__ = True
            divide(1, 0)

        functions = [f["function"] for f in chain_of(raised(helper))[0]["frames"]]
        assert "helper" not in functions and functions[-1] == "divide"


def test_recorded_span_exceptions_carry_the_chain(captured: Captured) -> None:
    """The SDK's ``Span.record_exception`` (which the web instrumentations call) adds it, for
    builtin exceptions too (they take no weak references)."""
    with captured.tracer.start_as_current_span("request") as span:
        span.record_exception(ZeroDivisionError("division by zero"), {"extra": 1})
    (event,) = captured.spans.get_finished_spans()[0].events
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ZeroDivisionError"
    assert event.attributes["extra"] == 1
    assert json.loads(str(event.attributes[CHAIN]))[0]["type"] == "ZeroDivisionError"


def test_frames_under_a_path_root_are_relative_to_the_innermost_root(tmp_path: Path) -> None:
    package = tmp_path / "root" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("def boom():\n    raise KeyError('k')\n")
    sys.path[:0] = [str(tmp_path), str(tmp_path / "root")]
    try:
        from pkg import mod  # type: ignore[import-not-found]

        frame = chain_of(raised(mod.boom))[0]["frames"][-1]
    finally:
        del sys.path[:2]
        sys.modules.pop("pkg.mod", None)
        sys.modules.pop("pkg", None)
    assert (frame["filename"], frame["module"]) == ("pkg/mod.py", "pkg.mod")


def test_a_deep_recursion_keeps_the_innermost_frames() -> None:
    def down(n: int) -> None:
        down(n + 1)

    (value,) = chain_of(raised(down, 0))
    assert value["type"] == "RecursionError"
    frames = value["frames"]
    assert len(frames) == exceptions.MAX_FRAMES
    assert int(frames[-1]["vars"]["n"]) > int(frames[0]["vars"]["n"]) > 0


class TestMemory:
    def test_a_recorded_exception_is_not_kept_alive(self, captured: Captured) -> None:
        """Its frames' locals (a request's 200 MB body, say) are freed once the app drops it."""

        class Payload:
            pass

        def fail(payload: Payload) -> None:
            raise ValueError("x")

        payload = Payload()
        alive = weakref.ref(payload)
        with captured.tracer.start_as_current_span("request") as span:
            error = raised(fail, payload)
            span.record_exception(error)
        del payload, error
        gc.collect()
        assert alive() is None

    def test_dedupe_still_knows_the_exception_after_it_propagated(self, captured: Captured) -> None:
        """The span records it in the middleware; the server logs it frames further out."""

        def middleware() -> None:
            with captured.tracer.start_as_current_span("request"):
                divide(1, 0)  # recorded by the span as it leaves

        def server() -> None:
            try:
                middleware()
            except ZeroDivisionError as error:
                logging.getLogger("uvicorn.error").error(
                    "Exception in ASGI application", exc_info=error
                )

        server()
        (record,) = captured.records()
        assert "exception.type" not in dict(record.attributes or {})
        another = raised(divide, 1, 0)  # not recorded on a span: logged with its detail
        logging.getLogger("uvicorn.error").error("failed", exc_info=another)
        assert "exception.type" in dict(captured.records()[-1].attributes or {})


def huge_locals() -> None:
    """Ten locals of tens of MB between them, each a builtin whose repr grows with its size."""
    blob = bytearray(2_000_000)
    queue = deque(range(200_000))  # noqa: F841
    table = dict.fromkeys(range(200_000))
    seen = set(range(200_000))
    frozen = frozenset(seen)  # noqa: F841
    keys = table.keys()  # noqa: F841
    numbers = array("q", range(200_000))  # noqa: F841
    text = "y" * 2_000_000
    rows = {"ids": list(range(200_000)), "blob": bytes(blob), "long": {"k" * 2000: text}}
    nested = {"rows": rows}  # noqa: F841
    view = memoryview(blob)  # noqa: F841
    raise RuntimeError("x")


class TestLargeLocals:
    def test_the_cost_does_not_grow_with_a_local_s_size(self) -> None:
        error = raised(huge_locals)
        tracemalloc.start()
        try:
            text = chain_json(error, Detail())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert text is not None and peak < 1_000_000  # the locals take tens of MB
        variables = json.loads(text)[0]["frames"][-1]["vars"]
        assert variables["blob"].startswith("bytearray(b'\\x00\\x00")
        assert variables["queue"].startswith("deque([0, 1, 2, ")
        assert variables["keys"].startswith("dict_keys([0, 1, 2, ")
        assert variables["numbers"].startswith("array('q', [0, 1, 2, ")
        for name in ("blob", "queue", "keys", "numbers"):
            assert len(variables[name]) == MAX_REPR
            assert variables[name].endswith("...")
        assert variables["table"] == {str(n): "None" for n in range(10)}
        assert variables["nested"]["rows"]["ids"].startswith("[0, 1, 2, ")
        assert len(variables["nested"]["rows"]["ids"]) == MAX_REPR

    @pytest.mark.parametrize(
        "value",
        [
            [1, "a", (2,), None],
            (),
            (1,),
            {"k": [1, {2: b"x"}]},
            set(),
            {1},
            frozenset(),
            frozenset({"a"}),
            deque([1, 2]),
            deque([1], maxlen=3),
            {1: 2}.keys(),
            {1: 2}.values(),
            {1: 2}.items(),
            bytearray(b"ab"),
            array("i", [1, 2]),
            array("u", "ab"),
            array("d"),
            OrderedDict(a=1),
            OrderedDict(),
            defaultdict(list, {1: [2]}),
        ],
        ids=repr,
    )
    def test_small_values_read_as_their_repr(self, value: Any) -> None:
        assert bounded_repr(value) == repr(value)

    def test_a_container_holding_itself_reads_as_its_repr(self) -> None:
        looped: list[Any] = [1]
        looped.append(looped)
        table: dict[str, Any] = {}
        table["me"] = table
        assert bounded_repr(looped) == repr(looped)
        assert bounded_repr(table) == repr(table)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class TestMessages:
    def test_lone_surrogates_become_replacement_characters(self, captured: Captured) -> None:
        """Protobuf refuses them: the message, stacktrace and chain would all be lost."""
        message = b"bad byte \xff".decode("utf-8", "surrogateescape")

        def fail(name: str) -> None:
            raise ValueError(message)

        error = raised(fail, message)
        found = exceptions.exception_attributes(error, Detail())
        assert all(_is_utf8(text) for text in found.values())
        assert found["exception.message"] == "bad byte \ufffd"
        assert "bad byte \ufffd" in found["exception.stacktrace"]
        assert json.loads(found[CHAIN])[0]["value"] == "bad byte \ufffd"
        with captured.tracer.start_as_current_span("request") as span:
            span.record_exception(error)
        (event,) = captured.spans.get_finished_spans()[0].events
        recorded = dict(event.attributes or {})
        assert all(_is_utf8(text) for text in recorded.values() if isinstance(text, str))
        assert recorded["exception.message"] == "bad byte \ufffd"

    def test_a_huge_message_is_cut(self, captured: Captured) -> None:
        """A multi-MB message would make the export batch larger than gRPC takes."""
        error = raised(divide_by_text, "x" * 3_000_000)
        found = exceptions.exception_attributes(error, Detail())
        message, stacktrace = found["exception.message"], found["exception.stacktrace"]
        assert len(message) < 100_000 and len(stacktrace) < 1_000_000
        assert len(message) == exceptions.MAX_MESSAGE_CHARS and message.endswith("...")
        assert len(stacktrace) <= exceptions.MAX_STACKTRACE_CHARS and "...\n" in stacktrace
        assert stacktrace.startswith("Traceback (most recent call last):")
        assert "divide_by_text" in stacktrace  # the frames stay
        (value,) = json.loads(found[CHAIN])  # the chain stays, with its frames' variables
        assert value["value"] == message and "vars" in value["frames"][-1]
        with captured.tracer.start_as_current_span("request") as span:
            span.record_exception(error)
        (event,) = captured.spans.get_finished_spans()[0].events
        assert event.attributes is not None
        assert event.attributes["exception.message"] == message
        assert len(str(event.attributes["exception.stacktrace"])) <= len(stacktrace)

    def test_a_message_within_the_limits_is_whole(self) -> None:
        error = raised(divide_by_text, "y" * 1000)
        found = exceptions.exception_attributes(error, Detail())
        assert found["exception.message"] == "y" * 1000
        assert found["exception.stacktrace"] == "".join(
            traceback.format_exception(type(error), error, error.__traceback__)
        )


def divide_by_text(text: str) -> None:
    raise ValueError(text)
