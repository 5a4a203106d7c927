"""exporters.sentry.traceback: real ``traceback.format_exception`` text -> Sentry values.

Every traceback here comes from raising a real exception; the expected frames come from the
traceback object itself (``traceback.extract_tb``) and from line numbers recorded at the raise.
"""

from __future__ import annotations

import importlib
import json
import linecache
import sys
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters.sentry.traceback import (
    FRAMES_HEAD,
    FRAMES_TAIL,
    MAX_FRAMES,
    MAX_VALUES,
    _parse,
    exception_values,
)

RAISE_LINES: dict[str, int] = {}


def _mark(key: str) -> None:
    """Record the line after the caller's current line: where it raises."""
    RAISE_LINES[key] = sys._getframe(1).f_lineno + 1


# --- functions that raise ----------------------------------------------------------------


def _fail_plain() -> None:
    _mark("plain")
    raise ValueError("boom")


def _fail_caret() -> None:
    _mark("caret")
    {}["k"]  # 3.11 prints "~~^^^^^" under this line


def _load_json() -> None:
    _mark("json")
    json.loads("{")


def _load_yaml() -> None:
    yaml.safe_load("a: [")


def _wrap_cause() -> None:
    try:
        _fail_plain()
    except ValueError as exc:
        _mark("wrap_cause")
        raise RuntimeError("wrapped") from exc


def _wrap_context() -> None:
    try:
        _fail_caret()
    except KeyError:
        _mark("wrap_context")
        1 / 0  # noqa: B018


def _three_level() -> None:
    try:
        try:
            _fail_plain()
        except ValueError as exc:
            raise KeyError("missing") from exc
    except KeyError:
        raise RuntimeError("while handling")  # noqa: B904 - the implicit chain is the point


def _suppressed() -> None:
    try:
        _fail_plain()
    except ValueError:
        raise RuntimeError("clean") from None


def _wrap(cause: BaseException, exc: BaseException) -> None:
    raise exc from cause


def _deep(depth: int) -> None:
    """``depth`` frames; the call line alternates so that traceback does not collapse them."""
    if depth == 1:
        _mark("deep")
        raise RecursionError("bottom")
    if depth % 2:
        _deep(depth - 1)
    else:
        _deep(depth - 1)


def _recurse(depth: int) -> None:
    if depth == 0:
        raise LookupError("deep")
    _recurse(depth - 1)


def _chain_of(levels: int) -> None:
    if levels == 0:
        raise LookupError("root cause")
    try:
        _chain_of(levels - 1)
    except Exception as exc:
        raise RuntimeError(f"level {levels}") from exc


def _raise_group() -> None:
    children = [_capture(_fail_plain), _capture(_fail_caret)]
    _mark("group")
    raise ExceptionGroup("many", children)


def _group_then_wrap() -> None:
    try:
        _raise_group()
    except ExceptionGroup as group:
        raise KeyError("after group") from group


def _group_while_handling() -> None:
    try:
        _fail_plain()
    except ValueError as exc:
        raise ExceptionGroup("handling", [exc])  # noqa: B904


def _compile_bad() -> None:
    compile("foo(", "<sentry-test>", "exec")


def _exec_sourceless() -> None:
    exec(compile("def f():\n    1 / 0\nf()\n", "<generated>", "exec"))


def _exec_syntax_error_below_sourceless_frame() -> None:
    exec(compile("compile('foo(', '<inner>', 'exec')", "<outer>", "exec"))


def _exec_sourceless_recursion() -> None:
    code = "def r(n):\n    return r(n - 1) if n else 1 / 0\nr(30)\n"
    exec(compile(code, "<recursive>", "exec"), {})


def _exec_missing_file() -> None:
    exec(compile("raise ValueError('from a module')", "/nonexistent/app/job.py", "exec"))


def _import_missing() -> None:
    importlib.import_module("sentry_traceback_test_missing_module")


# --- helpers -----------------------------------------------------------------------------


def _capture(fn: Callable[..., Any], *args: Any) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fn.__name__} did not raise")


def _text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _values(exc: BaseException, handled: bool | None = True) -> list[dict[str, Any]]:
    return exception_values(type(exc).__name__, str(exc), _text(exc), handled=handled)


def _collapsed(summary: traceback.StackSummary) -> list[traceback.FrameSummary]:
    """The frames ``traceback`` prints: runs of identical frames are cut after 3."""
    shown: list[traceback.FrameSummary] = []
    run = 0
    for frame in summary:
        last = shown[-1] if shown else None
        same = last is not None and (last.filename, last.lineno, last.name) == (
            frame.filename,
            frame.lineno,
            frame.name,
        )
        run = run + 1 if same else 1
        if run <= 3:
            shown.append(frame)
    return shown


def _expected(exc: BaseException) -> list[traceback.FrameSummary]:
    return _collapsed(traceback.extract_tb(exc.__traceback__))


def _assert_frame(frame: dict[str, Any], real: traceback.FrameSummary) -> None:
    assert frame["abs_path"] == real.filename
    assert frame["function"] == real.name
    assert frame["lineno"] == real.lineno
    if real.line:
        assert frame["context_line"] == real.line
        assert frame["context_line"] == linecache.getline(real.filename, real.lineno).strip()
    else:
        assert "context_line" not in frame


def _assert_frames(value: dict[str, Any], exc: BaseException) -> list[dict[str, Any]]:
    frames = value["stacktrace"]["frames"]
    expected = _expected(exc)
    assert len(frames) == len(expected)
    for frame, real in zip(frames, expected, strict=True):
        _assert_frame(frame, real)
        if real.filename == __file__:
            assert frame["in_app"] is True
            assert frame["filename"] == __file__
    return frames


def _functions(value: dict[str, Any]) -> list[str]:
    return [frame["function"] for frame in value["stacktrace"]["frames"]]


# --- single exceptions -------------------------------------------------------------------


def test_single_exception() -> None:
    exc = _capture(_fail_plain)
    [value] = _values(exc)
    assert value["type"] == "ValueError"
    assert value["value"] == "boom"
    assert "module" not in value
    assert value["mechanism"] == {"type": "otel", "handled": True}
    frames = _assert_frames(value, exc)
    assert _functions(value) == ["_capture", "_fail_plain"]
    assert frames[-1]["lineno"] == RAISE_LINES["plain"]
    assert frames[-1]["context_line"] == 'raise ValueError("boom")'
    assert frames[0]["lineno"] == _capture.__code__.co_firstlineno + 2  # the `fn(*args)` line


@pytest.mark.parametrize("handled", [True, False, None])
def test_handled_passthrough(handled: bool | None) -> None:
    values = _values(_capture(_three_level), handled=handled)
    for value in values:
        if handled is None:
            assert "handled" not in value["mechanism"]
        else:
            assert value["mechanism"]["handled"] is handled


def test_caret_markers_are_not_context_lines() -> None:
    exc = _capture(_fail_caret)
    text = _text(exc)
    assert "~~^^^^^" in text  # what makes this test meaningful
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    assert frames[-1]["lineno"] == RAISE_LINES["caret"]
    assert frames[-1]["context_line"].startswith('{}["k"]')
    for frame in frames:
        assert set(frame["context_line"]) - set("^~ ")


def test_stdlib_exception_with_module() -> None:
    exc = _capture(_load_json)
    [value] = _values(exc)
    assert value["type"] == "JSONDecodeError"
    assert value["module"] == "json.decoder"  # from the text's final line
    assert value["value"] == str(exc)
    frames = _assert_frames(value, exc)
    assert _functions(value)[:2] == ["_capture", "_load_json"]
    assert frames[1]["lineno"] == RAISE_LINES["json"]
    assert [frame["in_app"] for frame in frames] == [True, True] + [False] * (len(frames) - 2)
    stdlib = frames[2:]
    assert stdlib[0]["abs_path"] == json.__file__
    assert stdlib[0]["filename"] == "json/__init__.py"
    assert stdlib[0]["module"] == "json"
    assert {frame["filename"] for frame in stdlib[1:]} == {"json/decoder.py"}
    assert {frame["module"] for frame in stdlib[1:]} == {"json.decoder"}
    assert "module" not in frames[0]


def test_dotted_type_name_is_split() -> None:
    exc = _capture(_load_json)
    [value] = exception_values("json.decoder.JSONDecodeError", str(exc), _text(exc), handled=True)
    assert (value["module"], value["type"]) == ("json.decoder", "JSONDecodeError")


def test_site_packages_frames() -> None:
    exc = _capture(_load_yaml)
    [value] = _values(exc)
    assert value["type"] == type(exc).__name__
    assert value["module"] == type(exc).__module__
    frames = _assert_frames(value, exc)
    library = [frame for frame in frames if "site-packages" in frame["abs_path"]]
    assert len(library) == len(frames) - 2
    for frame in library:
        assert frame["in_app"] is False
        assert frame["filename"].startswith("yaml/")
        assert frame["abs_path"].endswith(frame["filename"])
        assert frame["module"].startswith("yaml")


def test_frames_without_source_and_module_level_code() -> None:
    exc = _capture(_exec_missing_file)
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    module_frame = frames[-1]
    assert module_frame["function"] == "<module>"
    assert module_frame["abs_path"] == module_frame["filename"] == "/nonexistent/app/job.py"
    assert module_frame["lineno"] == 1
    assert module_frame["in_app"] is True
    assert "context_line" not in module_frame


def test_pseudo_files_are_not_in_app() -> None:
    exc = _capture(_exec_sourceless)
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    generated = frames[-2:]
    assert [(f["function"], f["lineno"]) for f in generated] == [("<module>", 3), ("f", 2)]
    assert all(f["in_app"] is False and "context_line" not in f for f in generated)


def test_repeated_line_after_sourceless_frame_is_not_context() -> None:
    exc = _capture(_exec_sourceless_recursion)
    assert "more times]" in _text(exc)
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    assert all("context_line" not in frame for frame in frames[2:])


def test_markers_after_sourceless_frame_are_not_context() -> None:
    text = 'Traceback (most recent call last):\n  File "<x>", line 1, in f\n    ~~^^\nE: m\n'
    [value] = exception_values("E", "m", text, handled=True)
    assert "context_line" not in value["stacktrace"]["frames"][0]


def test_frozen_frames() -> None:
    exc = _capture(_import_missing)
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    frozen = [frame for frame in frames if frame["abs_path"].startswith("<frozen")]
    assert frozen
    for frame in frozen:
        assert frame["in_app"] is False
        assert frame["module"] == "importlib._bootstrap"
        assert "context_line" not in frame


def test_syntax_error_location_is_not_a_frame() -> None:
    exc = _capture(_compile_bad)
    [value] = _values(exc)
    assert value["type"] == "SyntaxError"
    _assert_frames(value, exc)
    assert _functions(value) == ["_capture", "_compile_bad"]


def test_syntax_error_source_does_not_attach_to_sourceless_frame() -> None:
    exc = _capture(_exec_syntax_error_below_sourceless_frame)
    assert "foo(" in _text(exc)
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    assert frames[-1]["abs_path"] == "<outer>"
    assert "context_line" not in frames[-1]


# --- chains ------------------------------------------------------------------------------


def test_explicit_cause_chain() -> None:
    exc = _capture(_wrap_cause)
    cause = exc.__cause__
    assert cause is not None
    first, last = _values(exc, handled=False)
    assert (first["type"], first["value"]) == ("ValueError", "boom")
    assert (last["type"], last["value"]) == ("RuntimeError", "wrapped")
    assert first["mechanism"] == {
        "type": "chained",
        "handled": False,
        "exception_id": 1,
        "parent_id": 0,
        "source": "__cause__",
    }
    assert last["mechanism"] == {"type": "otel", "handled": False, "exception_id": 0}
    _assert_frames(first, cause)
    _assert_frames(last, exc)
    assert _functions(first) == ["_wrap_cause", "_fail_plain"]
    assert _functions(last) == ["_capture", "_wrap_cause"]
    assert first["stacktrace"]["frames"][-1]["lineno"] == RAISE_LINES["plain"]
    assert last["stacktrace"]["frames"][-1]["lineno"] == RAISE_LINES["wrap_cause"]


def test_implicit_context_chain() -> None:
    exc = _capture(_wrap_context)
    context = exc.__context__
    assert context is not None
    first, last = _values(exc)
    assert (first["type"], first["value"]) == ("KeyError", "'k'")
    assert last["type"] == "ZeroDivisionError"
    assert first["mechanism"]["source"] == "__context__"
    _assert_frames(first, context)
    _assert_frames(last, exc)
    assert last["stacktrace"]["frames"][-1]["lineno"] == RAISE_LINES["wrap_context"]
    assert last["stacktrace"]["frames"][-1]["context_line"] == "1 / 0  # noqa: B018"


def test_three_level_mixed_chain() -> None:
    exc = _capture(_three_level)
    values = _values(exc)
    assert [v["type"] for v in values] == ["ValueError", "KeyError", "RuntimeError"]
    assert [v["value"] for v in values] == ["boom", "'missing'", "while handling"]
    mechanisms = [v["mechanism"] for v in values]
    assert [m.get("source") for m in mechanisms] == ["__cause__", "__context__", None]
    assert [m["exception_id"] for m in mechanisms] == [2, 1, 0]
    assert [m.get("parent_id") for m in mechanisms] == [1, 0, None]
    assert [m["type"] for m in mechanisms] == ["chained", "chained", "otel"]
    for value, real in zip(values, [exc.__context__.__cause__, exc.__context__, exc], strict=True):
        _assert_frames(value, real)


def test_suppressed_context_is_a_single_value() -> None:
    [value] = _values(_capture(_suppressed))
    assert (value["type"], value["value"]) == ("RuntimeError", "clean")


def test_multi_line_message_in_chain() -> None:
    message = 'first line\nsecond: line\n  File "fake.py", line 1, in nope\n\n  indented'
    cause = _capture(_fail_plain)
    cause.args = (message,)
    exc = _capture(_wrap, cause, RuntimeError("top"))
    first, last = _values(exc)
    assert (first["type"], first["value"]) == ("ValueError", message)
    assert _functions(first) == ["_capture", "_fail_plain"]  # the fake frame stays text
    assert last["value"] == "top"


def test_library_exception_with_multi_line_message_as_cause() -> None:
    cause = _capture(_load_yaml)
    assert "\n" in str(cause)
    exc = _capture(_wrap, cause, RuntimeError("config unreadable"))
    first, _last = _values(exc)
    assert first["type"] == type(cause).__name__
    assert first["module"] == type(cause).__module__
    assert first["value"] == str(cause)
    _assert_frames(first, cause)


def test_messages_without_colon_and_with_notes() -> None:
    bare = _capture(_wrap, ValueError(), RuntimeError("a"))
    first, _ = _values(bare)
    assert (first["type"], first["value"]) == ("ValueError", "")
    assert "stacktrace" not in first  # never raised: no traceback

    noted = ValueError("base")
    noted.add_note("retry 3 of 3")
    first, _ = _values(_capture(_wrap, noted, RuntimeError("b")))
    assert first["value"] == "base\nretry 3 of 3"


def test_never_raised_cause_embedding_a_remote_traceback() -> None:
    remote = _text(_capture(_fail_caret))
    cause = RuntimeError(f'\n"""\n{remote}"""')  # like multiprocessing's RemoteTraceback
    exc = _capture(_wrap, cause, ValueError("worker failed"))
    first, last = _values(exc)
    assert first["type"] == "RuntimeError"
    assert first["value"] == str(cause).rstrip()
    assert "stacktrace" not in first
    assert last["value"] == "worker failed"
    _assert_frames(last, exc)


def test_deep_recursion_frames() -> None:
    depth = 30
    exc = _capture(_deep, depth)
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    assert len(frames) == depth + 1
    assert _functions(value) == ["_capture"] + ["_deep"] * depth
    odd_call, even_call = (_deep.__code__.co_firstlineno + offset for offset in (6, 8))
    calls = [frame["lineno"] for frame in frames[1:-1]]
    assert calls == [even_call, odd_call] * (depth // 2 - 1) + [even_call]
    assert frames[-1]["lineno"] == RAISE_LINES["deep"]


def test_repeated_lines_are_ignored() -> None:
    exc = _capture(_recurse, 30)
    text = _text(exc)
    assert "[Previous line repeated 27 more times]" in text
    [value] = _values(exc)
    frames = _assert_frames(value, exc)
    assert _functions(value) == ["_capture"] + ["_recurse"] * 4
    assert all("Previous line" not in frame.get("context_line", "") for frame in frames)


def test_frame_bound_keeps_oldest_and_newest() -> None:
    exc = _capture(_deep, 600)
    expected = _expected(exc)
    assert len(expected) == 601
    [value] = _values(exc)
    frames = value["stacktrace"]["frames"]
    assert len(frames) == MAX_FRAMES
    kept = expected[:FRAMES_HEAD] + expected[-FRAMES_TAIL:]
    for frame, real in zip(frames, kept, strict=True):
        _assert_frame(frame, real)


def test_chain_bound_keeps_the_newest() -> None:
    exc = _capture(_chain_of, 14)
    values = _values(exc)
    assert len(values) == MAX_VALUES
    assert [v["value"] for v in values] == [f"level {n}" for n in range(5, 15)]
    assert [v["mechanism"]["exception_id"] for v in values] == list(range(9, -1, -1))


# --- exception groups --------------------------------------------------------------------


def test_exception_group_outer_traceback_only() -> None:
    exc = _capture(_raise_group)
    assert "+-+----" in _text(exc)
    [value] = _values(exc)
    assert (value["type"], value["value"]) == ("ExceptionGroup", "many (2 sub-exceptions)")
    frames = _assert_frames(value, exc)
    assert _functions(value) == ["_capture", "_raise_group"]
    assert frames[-1]["lineno"] == RAISE_LINES["group"]
    assert "is_exception_group" not in value["mechanism"]


def test_exception_group_as_cause() -> None:
    exc = _capture(_group_then_wrap)
    first, last = _values(exc)
    assert (first["type"], first["value"]) == ("ExceptionGroup", "many (2 sub-exceptions)")
    _assert_frames(first, exc.__cause__)
    assert (last["type"], last["value"]) == ("KeyError", "'after group'")
    _assert_frames(last, exc)


def test_exception_group_raised_while_handling() -> None:
    exc = _capture(_group_while_handling)
    first, last = _values(exc)
    assert (first["type"], first["value"]) == ("ValueError", "boom")
    assert first["mechanism"]["source"] == "__context__"
    _assert_frames(first, exc.__context__)
    assert last["type"] == "ExceptionGroup"
    _assert_frames(last, exc)


def test_never_raised_exception_group_as_cause() -> None:
    group = ExceptionGroup("bare", [ValueError(1)])
    exc = _capture(_wrap, group, KeyError(1))
    first, last = _values(exc)
    assert (first["type"], first["value"]) == ("ExceptionGroup", "bare (1 sub-exception)")
    assert "stacktrace" not in first
    _assert_frames(last, exc)


# --- other text shapes -------------------------------------------------------------------


def test_synthetic_library_paths() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/db.py", line 12, in connect\n'
        "    engine.connect()\n"
        '  File "/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py", line 3, in c\n'
        "    raise OperationalError(msg)\n"
        '  File "/usr/lib/python3/dist-packages/psycopg2/__init__.py", line 9, in connect\n'
        '  File "/usr/lib64/python3.11/socket.py", line 7, in create_connection\n'
        '  File "C:\\venv\\Lib\\site-packages\\pkg\\mod.py", line 5, in win\n'
        "sqlalchemy.exc.OperationalError: connection refused\n"
    )
    [value] = exception_values(
        "sqlalchemy.exc.OperationalError", "connection refused", text, handled=None
    )
    assert (value["module"], value["type"]) == ("sqlalchemy.exc", "OperationalError")
    assert value["mechanism"] == {"type": "otel"}
    frames = value["stacktrace"]["frames"]
    assert [(f["filename"], f.get("module"), f["in_app"]) for f in frames] == [
        ("/srv/app/db.py", None, True),
        ("sqlalchemy/engine/base.py", "sqlalchemy.engine.base", False),
        ("psycopg2/__init__.py", "psycopg2", False),
        ("socket.py", "socket", False),
        ("pkg\\mod.py", "pkg.mod", False),
    ]
    assert frames[1]["abs_path"] == "/venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py"
    assert frames[1]["context_line"] == "raise OperationalError(msg)"


def test_crlf_and_log_prefix() -> None:
    exc = _capture(_wrap_cause)
    plain = _values(exc)
    assert (
        exception_values("RuntimeError", "wrapped", _text(exc).replace("\n", "\r\n"), handled=True)
        == plain
    )
    prefixed = "2024-05-01 12:00:00 ERROR request failed\n" + _text(exc)
    assert exception_values("RuntimeError", "wrapped", prefixed, handled=True) == plain


def test_truncated_traceback_keeps_frames_found_so_far() -> None:
    exc = _capture(_deep, 6)
    text = _text(exc)
    third_frame = text.index('  File "', text.index('  File "', text.index('  File "') + 1) + 1)
    cut = text[:third_frame] + '  File "/tr'  # header, two frames, half a frame line
    [value] = exception_values("RecursionError", "bottom", cut, handled=True)
    assert value["type"] == "RecursionError"
    for frame, real in zip(value["stacktrace"]["frames"], _expected(exc)[:2], strict=True):
        _assert_frame(frame, real)


def test_every_prefix_of_a_real_chain_is_safe() -> None:
    exc = _capture(_three_level)
    text = _text(exc)
    for end in range(0, len(text) + 1, 3):
        values = exception_values("RuntimeError", "while handling", text[:end], handled=True)
        assert 1 <= len(values) <= 3
        assert values[-1]["type"] == "RuntimeError"
        assert values[-1]["value"] == "while handling"


@pytest.mark.parametrize(
    "stacktrace",
    [
        None,
        "",
        "\n\n\n",
        "random text that is not a traceback",
        "Traceback (most recent call last):\n",
        'Traceback (most recent call last):\n  File "x.py", line 3',
        '  File "x.py", line 99999999999999999999999999999, in f\n',
        "The above exception was the direct cause of the following exception:\n" * 50,
        "  +-+---------------- 1 ----------------\n    | ValueError: 1\n",
        "  |\n  | \n  + \n",
        "\x00\x0b\x1c\u2028 ^^^ ~~~",
    ],
)
def test_garbage_returns_one_value(stacktrace: str | None) -> None:
    [value] = exception_values("ValueError", "bad", stacktrace, handled=True)
    assert (value["type"], value["value"]) == ("ValueError", "bad")
    assert "stacktrace" not in value
    assert value["mechanism"] == {"type": "otel", "handled": True}


def test_huge_input_is_bounded() -> None:
    block = _text(_capture(_fail_plain))
    separator = "\nThe above exception was the direct cause of the following exception:\n\n"
    text = separator.join([block] * (3_000_000 // len(block)))
    values = exception_values("ValueError", "boom", text, handled=True)
    assert len(values) == MAX_VALUES
    for value in values:
        assert (value["type"], value["value"]) == ("ValueError", "boom")
        assert _functions(value) == ["_capture", "_fail_plain"]


# --- property ----------------------------------------------------------------------------

_TRACEBACK_LINES = st.sampled_from(
    [
        "Traceback (most recent call last):",
        "  + Exception Group Traceback (most recent call last):",
        '  File "/app/x.py", line 3, in f',
        '  File "/venv/lib/python3.11/site-packages/p/q.py", line 0, in <module>',
        '  File "<frozen importlib._bootstrap>", line None, in g',
        '  File "<string>", line 1',
        "    return f(x)",
        "    ~~~^^^",
        "  [Previous line repeated 996 more times]",
        "  | ValueError: x",
        "  +-+---------------- 1 ----------------",
        "",
        "The above exception was the direct cause of the following exception:",
        "During handling of the above exception, another exception occurred:",
        "ValueError: boom",
        "pkg.mod.Error",
        "KeyError:",
    ]
)
_TEXTS = st.one_of(
    st.text(),
    st.lists(st.one_of(_TRACEBACK_LINES, st.text(max_size=20)), max_size=40).map("\n".join),
)


@settings(max_examples=300, deadline=None)
@given(
    type_name=st.text(max_size=30),
    message=st.text(max_size=30),
    stacktrace=st.one_of(st.none(), _TEXTS),
    handled=st.sampled_from([True, False, None]),
)
def test_arbitrary_text_never_raises(
    type_name: str, message: str, stacktrace: str | None, handled: bool | None
) -> None:
    if stacktrace:
        _parse(stacktrace)  # the parser itself, without exception_values' safety net
    values = exception_values(type_name, message, stacktrace, handled=handled)
    assert 1 <= len(values) <= MAX_VALUES
    last = values[-1]
    assert last["type"] == type_name or f"{last.get('module')}.{last['type']}" == type_name
    assert last["value"] == message
    assert last["mechanism"]["type"] == "otel"
    assert last["mechanism"].get("handled") == handled
    for index, value in enumerate(values):
        if len(values) > 1:
            assert value["mechanism"]["exception_id"] == len(values) - 1 - index
        if "stacktrace" in value:
            frames = value["stacktrace"]["frames"]
            assert 1 <= len(frames) <= MAX_FRAMES
            for frame in frames:
                assert isinstance(frame["in_app"], bool)
                assert isinstance(frame.get("lineno", 0), int)
