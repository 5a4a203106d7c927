"""stdlib logging and structlog become OpenTelemetry log records: each event once, in its trace,
with its keys as typed attributes and its exception's frames."""

from __future__ import annotations

import json
import logging
from typing import Any

import structlog

from otel_sidecar.instrumentation.exceptions import CHAIN
from tests.instrumentation.conftest import Captured


def attributes(record: Any) -> dict[str, Any]:
    return dict(record.attributes or {})


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
