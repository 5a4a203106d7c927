"""The exception chain the zero-code side attaches: what sentry-sdk collects for each frame,
bounded, and never at the cost of the exception itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from otel_sidecar.instrumentation import exceptions
from otel_sidecar.instrumentation.exceptions import CHAIN, Detail, chain_json
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
        assert len(variables["text"]) == exceptions.MAX_REPR and variables["text"].endswith("...")
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
