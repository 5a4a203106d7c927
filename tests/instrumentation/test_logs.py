"""stdlib logging and structlog become OpenTelemetry log records: each event once, in its trace,
with its keys as typed attributes and its exception's frames."""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from otel_sidecar.instrumentation import logs
from otel_sidecar.instrumentation.exceptions import CHAIN
from otel_sidecar.instrumentation.values import MAX_BODY_BYTES, MAX_VALUE_BYTES
from tests.instrumentation.conftest import Captured


def attributes(record: Any) -> dict[str, Any]:
    return dict(record.attributes or {})


def strings(value: Any) -> Iterator[str]:
    """Every string in a body or attribute value, keys included, however nested."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict) or hasattr(value, "items"):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


# A file name or header read as surrogateescape'd text: not valid UTF-8, which protobuf refuses.
UNDECODABLE = b"caf\xff".decode("utf-8", "surrogateescape")


class TestStdlib:
    def test_a_record_is_sent_once_in_its_trace_with_extra_keys(self, captured: Captured) -> None:
        """The record's message, level, ``extra=`` keys and code location, in the span's trace."""
        logger = logging.getLogger("shop.orders")
        logger.setLevel(logging.INFO)
        with captured.tracer.start_as_current_span("checkout") as span:
            logger.warning("order %s refused", 42, extra={"order_id": 42, "reason": "stock"})
        (record,) = captured.records()
        assert record.body == "order 42 refused"
        assert (record.severity_text, record.severity_number.value) == ("WARNING", 13)
        assert record.trace_id == span.get_span_context().trace_id
        assert record.span_id == span.get_span_context().span_id
        found = attributes(record)
        assert found["order_id"] == 42 and found["reason"] == "stock"
        assert (
            found["code.function.name"] == "test_a_record_is_sent_once_in_its_trace_with_extra_keys"
        )
        assert found["code.file.path"] == __file__
        assert found["thread.name"] == "MainThread" and found["process.pid"] > 0

    def test_a_logger_that_does_not_propagate_is_captured(self, captured: Captured) -> None:
        """uvicorn's loggers keep their records away from the root: they are still sent."""
        logger = logging.getLogger("payments.isolated")
        logger.propagate = False
        logger.addHandler(logging.NullHandler())
        logger.setLevel(logging.INFO)
        logger.info("charged")
        assert [r.body for r in captured.records()] == ["charged"]

    def test_levels_below_the_capture_level_stay_in_the_app(self, captured: Captured) -> None:
        app = logging.getLogger("shop.debugging")
        app.setLevel(logging.DEBUG)
        app.debug("too detailed")  # below OTEL_SIDECAR_APP_LOG_LEVEL (info here)
        access = logging.getLogger("uvicorn.access")
        access.setLevel(logging.INFO)
        access.info("GET / 200")  # below OTEL_SIDECAR_APP_UVICORN_LOG_LEVEL (warning here)
        access.warning("GET / slow")
        assert [r.body for r in captured.records()] == ["GET / slow"]

    def test_the_sdks_own_loggers_are_left_out(self, captured: Captured) -> None:
        """An exporter that fails logs it; sending that would feed on itself."""
        logging.getLogger("opentelemetry.exporter.otlp").error("export failed")
        assert captured.records() == []

    def test_an_exception_carries_its_frames(self, captured: Captured) -> None:
        def parse(text: str) -> Any:
            return json.loads(text)

        try:
            parse("{not json")
        except ValueError:
            logging.getLogger("shop").exception("bad payload")
        (record,) = captured.records()
        found = attributes(record)
        assert found["exception.type"] == "json.decoder.JSONDecodeError"
        assert found["exception.message"].startswith("Expecting property name")
        assert "Traceback (most recent call last)" in found["exception.stacktrace"]
        (value,) = json.loads(found[CHAIN])
        frames = value["frames"]
        assert frames[1]["function"] == "parse" and frames[1]["in_app"] is True
        assert frames[1]["vars"] == {"text": "'{not json'"}
        assert frames[-1]["module"] == "json.decoder" and frames[-1]["in_app"] is False

    def test_an_exception_already_recorded_on_a_span_is_not_sent_again(
        self, captured: Captured
    ) -> None:
        """A server that logs the exception a request failed with (uvicorn's "Exception in
        ASGI application") sends the line, not a second error."""
        error = RuntimeError("boom")
        with captured.tracer.start_as_current_span("request") as span:
            span.record_exception(error)
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=error)
        (record,) = captured.records()
        assert record.body == "Exception in ASGI application"
        assert "exception.type" not in attributes(record)

    def test_odd_values_become_what_otlp_carries(self, captured: Captured) -> None:
        class Money:
            def __str__(self) -> str:
                return "12.50 EUR"

        extra = {"price": Money(), "huge": 2**70, "items": ("a", 1), "nested": {"k": [1, 2]}}
        logger = logging.getLogger("shop.prices")
        logger.setLevel(logging.INFO)
        logger.info("priced", extra=extra)
        found = attributes(captured.records()[0])
        assert found["price"] == "12.50 EUR"
        assert found["huge"] == str(2**70)  # past int64: as text, not an export failure
        assert list(found["items"]) == ["a", 1]
        assert dict(found["nested"]) == {"k": (1, 2)}

    def test_lone_surrogates_become_valid_utf8(self, captured: Captured) -> None:
        """One invalid string would fail the whole export batch, the other records with it."""
        logger = logging.getLogger("shop.files")
        logger.setLevel(logging.INFO)
        extra = {"path": UNDECODABLE, "nested": {"k": [UNDECODABLE]}, UNDECODABLE: 1}
        logger.error("read %s", UNDECODABLE, extra=extra, exc_info=ValueError(UNDECODABLE))
        (record,) = captured.records()
        assert record.body == "read caf\ufffd"
        found = attributes(record)
        assert found["path"] == "caf\ufffd" and found["exception.message"] == "caf\ufffd"
        for text in strings(found):
            text.encode("utf-8")  # raises on a lone surrogate

    def test_an_extra_key_that_is_not_text_never_breaks_the_app(self, captured: Captured) -> None:
        logger = logging.getLogger("shop.keys")
        logger.setLevel(logging.INFO)
        logger.info("keyed", extra={7: "seven"})
        assert attributes(captured.records()[0])["7"] == "seven"

    def test_a_huge_body_is_cut_and_says_so(self, captured: Captured) -> None:
        """A 128-record batch must fit the 4 MiB gRPC message."""
        logger = logging.getLogger("shop.dump")
        logger.setLevel(logging.INFO)
        logger.info("x" * 100_000)
        logger.info("\u00e9" * 10_000)  # two bytes each: the limit counts bytes
        first, second = (record.body for record in captured.records())
        assert first.startswith("x" * 1000)
        assert first.endswith("[truncated: 100000 characters in all]")
        assert second.endswith("[truncated: 10000 characters in all]")
        for body in (first, second):
            assert len(body.encode("utf-8")) <= MAX_BODY_BYTES

    def test_huge_attribute_values_are_cut_and_say_so(self, captured: Captured) -> None:
        """A megabyte payload logged as a key, five times, took the batch past the 4 MiB the
        sidecar takes, and every record in it was lost."""

        class Huge:
            def __str__(self) -> str:
                return "h" * 1_000_000

        logger = logging.getLogger("shop.payloads")
        logger.setLevel(logging.INFO)
        logger.info("sent", extra={"payload": "y" * 1_000_000, "raw": b"z" * 1_000_000,
                                   "object": Huge(), "small": "kept"})  # fmt: skip
        values = attributes(captured.records()[0])
        assert values["payload"].endswith("[truncated: 1000000 characters in all]")
        assert values["object"].endswith("[truncated: 1000000 characters in all]")
        assert values["raw"] == b"z" * MAX_VALUE_BYTES
        for text in (values["payload"], values["object"]):
            assert len(text.encode("utf-8")) <= MAX_VALUE_BYTES
        assert values["small"] == "kept"

    def test_a_logged_exception_is_not_kept_alive(self, captured: Captured) -> None:
        """Its frames' locals are freed once the app's frames are done with it, though it is
        remembered (for sending it once)."""

        class Payload:
            pass

        logger = logging.getLogger("shop.payments")
        logger.propagate = False  # pytest's log capture keeps records, with their tracebacks

        def handle(payload: Payload) -> None:
            try:
                raise ValueError("x")
            except ValueError:
                logger.exception("failed")

        payload = Payload()
        alive = weakref.ref(payload)
        handle(payload)
        del payload
        gc.collect()
        assert alive() is None
        assert len(captured.records()) == 1


class TestStructlog:
    def test_default_configuration_sends_each_event_once_with_typed_keys(
        self, captured: Captured
    ) -> None:
        """structlog left as it is (printing to stdout): keys as attributes, not in the body."""
        log = structlog.get_logger()
        with captured.tracer.start_as_current_span("run") as span:
            log.info("code_execution_completed", user_id=7, success=True, execution_time_ms=1.5)
        (record,) = captured.records()
        assert record.body == "code_execution_completed"
        assert record.severity_text == "info" and record.severity_number.value == 9
        assert record.trace_id == span.get_span_context().trace_id
        found = attributes(record)
        assert (found["user_id"], found["success"], found["execution_time_ms"]) == (7, True, 1.5)
        assert "event" not in found and "level" not in found and "timestamp" not in found

    def test_events_routed_through_stdlib_are_sent_once(self, captured: Captured) -> None:
        """structlog handing its events to a stdlib logger: the stdlib record is the same
        event, already sent with its keys."""
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        logging.getLogger("shop.stdlib").setLevel(logging.INFO)
        log = structlog.get_logger("shop.stdlib")
        log.info("order_placed", order_id=1)
        log.warning("stock_low", sku="A-1")
        log.debug("not enabled")  # the stdlib logger's level says no
        logging.getLogger("shop.stdlib").info("plain stdlib record")
        records = captured.records()
        assert [r.body for r in records] == ["order_placed", "stock_low", "plain stdlib record"]
        assert attributes(records[0])["order_id"] == 1
        assert records[0].severity_text == "info"

    def test_an_event_a_stdlib_filter_drops_is_not_sent_and_takes_nothing_with_it(
        self, captured: Captured
    ) -> None:
        """Dropped by the app's filter as a stdlib record would be, and the next record of the
        same logger and level is still sent."""
        structlog.configure(
            processors=[structlog.stdlib.add_log_level, structlog.processors.JSONRenderer()],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        std = logging.getLogger("shop.health")
        std.setLevel(logging.INFO)

        def no_healthchecks(record: logging.LogRecord) -> bool:
            return "healthcheck" not in record.getMessage()

        std.addFilter(no_healthchecks)
        try:
            structlog.get_logger("shop.health").info("healthcheck ok")
            std.info("PAYMENT captured")
            structlog.get_logger("shop.health").info("refund issued", amount=3)
        finally:
            std.removeFilter(no_healthchecks)
        records = captured.records()
        assert [r.body for r in records] == ["PAYMENT captured", "refund issued"]
        assert attributes(records[1])["amount"] == 3

    def test_keys_with_lone_surrogates_become_valid_utf8(self, captured: Captured) -> None:
        structlog.configure(processors=[structlog.processors.JSONRenderer()])
        structlog.get_logger().info(UNDECODABLE, name=UNDECODABLE, nested={"a": [UNDECODABLE]})
        (record,) = captured.records()
        assert record.body == "caf\ufffd"
        found = attributes(record)
        assert found["name"] == "caf\ufffd" and list(dict(found["nested"])["a"]) == ["caf\ufffd"]
        for text in strings(found):
            text.encode("utf-8")

    def test_events_routed_to_a_processor_formatter_are_sent_once(self, captured: Captured) -> None:
        structlog.configure(
            processors=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        logging.getLogger("shop.formatted").setLevel(logging.INFO)
        structlog.get_logger("shop.formatted").info("formatted", n=2)
        (record,) = captured.records()
        assert record.body == "formatted" and attributes(record)["n"] == 2

    def test_an_exception_carries_its_frames(self, captured: Captured) -> None:
        """Also when ``format_exc_info`` has already turned it into text."""
        structlog.configure(
            processors=[structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        )
        try:
            {}["missing"]
        except KeyError:
            structlog.get_logger().exception("lookup_failed", key="missing")
        (record,) = captured.records()
        found = attributes(record)
        assert found["exception.type"] == "KeyError" and found["key"] == "missing"
        assert "exception" not in found  # the rendered text: exception.* replace it
        (value,) = json.loads(found[CHAIN])
        assert value["frames"][-1]["function"] == "test_an_exception_carries_its_frames"

    def test_a_broken_event_never_breaks_the_app(self, captured: Captured) -> None:
        class Unprintable:
            def __str__(self) -> str:
                raise RuntimeError("no")

            __repr__ = __str__

        structlog.configure(processors=[lambda _logger, _name, event_dict: event_dict["event"]])
        structlog.get_logger().info("odd", value=Unprintable())
        assert attributes(captured.records()[0])["value"] == "<unprintable>"


class TestUnhandled:
    """An exception that ends a thread (or the program) is sent as an unhandled error, once,
    and the hook the app had still runs."""

    @pytest.fixture
    def previous(self, monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
        """The app's hooks before ours (pytest's, here, would turn the exception into a
        warning): they record what reaches them."""
        seen: list[BaseException | None] = []
        monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
        monkeypatch.setattr(sys, "excepthook", lambda _kind, value, _tb: seen.append(value))
        logs.install_excepthooks()
        return seen

    def test_an_exception_that_ends_a_thread(
        self, captured: Captured, previous: list[BaseException | None]
    ) -> None:
        def work() -> None:
            raise RuntimeError("worker died")

        thread = threading.Thread(target=work, name="worker-1")
        thread.start()
        thread.join()
        (record,) = captured.records()
        assert record.severity_number.value == 17 and record.severity_text == "ERROR"
        found = attributes(record)
        assert found["exception.type"] == "RuntimeError"
        assert found["exception.message"] == "worker died"
        assert found["exception.escaped"] is True  # unhandled
        assert found["thread.name"] == "worker-1"
        assert [str(error) for error in previous] == ["worker died"]

    def test_an_exception_that_ends_the_program(
        self, captured: Captured, previous: list[BaseException | None]
    ) -> None:
        try:
            {}["missing"]
        except KeyError as error:
            sys.excepthook(type(error), error, error.__traceback__)
            # again, from an app's threading hook that hands on to sys.excepthook
            sys.excepthook(type(error), error, error.__traceback__)
        (record,) = captured.records()
        found = attributes(record)
        assert found["exception.type"] == "KeyError" and found["exception.escaped"] is True
        assert len(previous) == 2  # the app's hook sees every call

    def test_an_exception_already_sent_is_not_sent_again(
        self, captured: Captured, previous: list[BaseException | None]
    ) -> None:
        """Recorded on the span it escaped, or logged before it was raised again."""

        def work() -> None:
            with captured.tracer.start_as_current_span("job"):
                raise RuntimeError("job failed")

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        try:
            try:
                raise ValueError("bad input")
            except ValueError:
                logging.getLogger("shop.jobs").exception("job input")
                raise
        except ValueError as error:
            sys.excepthook(type(error), error, error.__traceback__)
        assert [r.body for r in captured.records()] == ["job input"]
        assert len(previous) == 2

    def test_uninstall_puts_the_apps_hooks_back(
        self, captured: Captured, previous: list[BaseException | None]
    ) -> None:
        logs.uninstall_excepthooks()
        error = RuntimeError("after uninstall")
        threading.excepthook(threading.ExceptHookArgs([RuntimeError, error, None, None]))
        sys.excepthook(RuntimeError, error, None)
        assert previous == [error, error] and captured.records() == []
