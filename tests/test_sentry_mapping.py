"""OTel → Sentry rules, called directly: op, description and status in both semantic
conventions, transaction names, log levels."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporters.sentry import envelope, errors, filtering, logs, mapping
from exporters.sentry.records import CLIENT, CONSUMER, SERVER, Event, LogRecord, SpanRecord

INTERNAL = 1


def span(kind: int = INTERNAL, status: int = 0, message: str = "", **attrs: Any) -> SpanRecord:
    return SpanRecord(
        trace_id="a" * 32,
        span_id="b" * 16,
        parent_span_id="c" * 16,
        remote_parent=False,
        name="span name",
        kind=kind,
        start_ns=0,
        end_ns=1,
        attributes={k.replace("__", "."): v for k, v in attrs.items()},
        events=[],
        status_code=status,
        status_message=message,
        resource={},
        scope="s",
        sampled=True,
    )


@pytest.mark.parametrize(
    ("record", "op", "description"),
    [
        (
            span(SERVER, http__request__method="GET", http__route="/items/{id}"),
            "http.server",
            "GET /items/{id}",
        ),
        (
            span(SERVER, http__method="POST", http__target="/login?next=/"),
            "http.server",
            "POST /login?next=/",
        ),
        (
            span(CLIENT, http__request__method="GET", url__full="https://api.x/v1/a?key=1"),
            "http.client",
            "GET https://api.x/v1/a",
        ),
        (
            span(CLIENT, http__method="GET", http__url="http://old.x/p?q=1"),
            "http.client",
            "GET http://old.x/p",
        ),
        (
            span(CLIENT, http__request__method="PUT", server__address="cache"),
            "http.client",
            "PUT cache",
        ),
        (span(CLIENT, db__system__name="postgresql", db__query__text="SELECT ?"), "db", "SELECT ?"),
        (span(CLIENT, db__system="sqlite", db__statement="DELETE FROM t"), "db", "DELETE FROM t"),
        (span(CLIENT, db__system="redis"), "db", "span name"),
        (span(CLIENT, rpc__service="Greeter"), "rpc", "span name"),
        (span(CONSUMER, messaging__system="kafka"), "message", "span name"),
        (span(SERVER, faas__trigger="http"), "http", "span name"),
        (span(), "span name", "span name"),
    ],
    ids=[
        "http-server-stable",
        "http-server-old",
        "http-client-stable",
        "http-client-old",
        "http-client-peer",
        "db-stable",
        "db-old",
        "db-no-statement",
        "rpc",
        "messaging",
        "faas",
        "plain",
    ],
)
def test_op_and_description(record: SpanRecord, op: str, description: str) -> None:
    assert mapping.span_op(record) == (op, description)


@pytest.mark.parametrize(
    ("record", "status"),
    [
        (span(status=1), "ok"),
        (span(status=2), "unknown_error"),
        (span(status=2, http__response__status_code=404), "not_found"),
        (span(status=2, http__status_code=503), "unavailable"),
        (span(http__response__status_code=500), "internal_error"),
        (span(http__response__status_code=418), "invalid_argument"),
        (span(http__response__status_code=201), "ok"),
        (span(status=2, rpc__grpc__status_code=5), "not_found"),
        (span(status=2, message="deadline_exceeded"), "deadline_exceeded"),
        (span(), None),
    ],
)
def test_status(record: SpanRecord, status: str | None) -> None:
    assert mapping.span_status(record) == status


def test_transaction_name_as_sentry_sdks_fastapi_integration_names_it() -> None:
    segment = span(SERVER, http__request__method="GET", http__route="/a/{b}")
    assert mapping.transaction_name(segment) == ("/a/{b}", "route")
    assert mapping.transaction_name(segment, "method_route") == ("GET /a/{b}", "route")
    old = span(SERVER, http__method="GET", http__route="/a/{b}")  # old semantic conventions
    assert mapping.transaction_name(old, "method_route") == ("GET /a/{b}", "route")
    assert mapping.transaction_name(span(SERVER)) == ("span name", "custom")


@pytest.mark.parametrize(
    ("number", "text", "level"),
    [
        (1, "", "trace"),
        (4, "", "trace"),
        (5, "", "debug"),
        (9, "", "info"),
        (13, "", "warn"),
        (17, "", "error"),
        (20, "", "error"),
        (21, "", "fatal"),
        (24, "", "fatal"),
        (0, "WARNING", "warn"),
        (0, "", "info"),
        (0, "critical", "fatal"),
    ],
)
def test_log_level_from_severity(number: int, text: str, level: str) -> None:
    record = LogRecord(None, None, 0, number, text, "m", {}, {}, "s")
    assert logs.log_level(record) == level


def test_structured_log_body_keys_become_attributes() -> None:
    record = LogRecord(
        "a" * 32,
        None,
        1_000_000_000,
        9,
        "INFO",
        {"event": "code_execution_completed", "user_id": 7, "success": True},
        {"logger": "app"},
        {"service.name": "api"},
        "app.api",
    )
    item = logs.log_items([record], mapping.Defaults("prod", "1.0", "0.1.0"))[0]
    assert item["body"] == "code_execution_completed"
    assert item["attributes"]["user_id"] == {"value": 7, "type": "integer"}
    assert item["attributes"]["success"] == {"value": True, "type": "boolean"}
    assert item["attributes"]["sentry.environment"] == {"value": "prod", "type": "string"}
    assert item["timestamp"] == 1.0


def test_request_header_names_as_http_writes_them() -> None:
    """The instrumentations write ``http.request.header.user_agent``; Sentry shows
    ``User-Agent``, as sentry-sdk sends it."""
    segment = span(
        SERVER,
        http__request__method="GET",
        http__request__header__user_agent=["curl/8"],
        http__request__header__x_request_id=["r-1"],
    )
    request = mapping.transaction(segment, [], mapping.Defaults("", "", "1"))["request"]
    assert request["headers"] == {"User-Agent": "curl/8", "X-Request-Id": "r-1"}


def test_an_exception_log_item_leaves_the_frames_to_its_error_event() -> None:
    attributes = {"exception.type": "E", "otel_sidecar.exception.chain": "[]", "n": 1}
    record = LogRecord(None, None, 1, 17, "ERROR", "failed", attributes, {}, "app")
    item = logs.log_items([record], mapping.Defaults("", "", "1"))[0]
    assert "otel_sidecar.exception.chain" not in item["attributes"]
    assert item["attributes"]["exception.type"] == {"value": "E", "type": "string"}


RESOURCE = {
    "service.name": "api",
    "process.runtime.name": "cpython",
    "process.runtime.version": "3.11.7",
    "process.runtime.description": "3.11.7 (main) [GCC 12]",
    "os.type": "linux",
    "os.version": "6.1.0",
    "os.description": "Linux-6.1.0-x86_64",
    "host.name": "api-7d9f-x2",
}


def test_runtime_os_server_name_and_response_as_sentry_sdk_sends_them() -> None:
    segment = span(SERVER, http__request__method="GET", http__response__status_code=404)
    segment.resource = RESOURCE
    event = mapping.transaction(segment, [], mapping.Defaults("", "", "0.1"))
    assert event["contexts"]["runtime"] == {
        "name": "CPython", "version": "3.11.7", "build": "3.11.7 (main) [GCC 12]",
    }  # fmt: skip
    assert event["contexts"]["os"] == {
        "name": "Linux", "version": "6.1.0", "raw_description": "Linux-6.1.0-x86_64",
    }  # fmt: skip
    assert event["server_name"] == "api-7d9f-x2"
    assert event["contexts"]["response"] == {"status_code": 404}
    # The span's attributes once, as the trace context's data; the resource beside them.
    assert event["contexts"]["otel"] == {"resource": RESOURCE}
    assert event["contexts"]["trace"]["data"]["http.response.status_code"] == 404


def test_an_apps_own_context_named_runtime_is_kept() -> None:
    segment = span(SERVER, **{"sentry.context.runtime.name": "worker"})
    segment.resource = RESOURCE
    event = mapping.transaction(segment, [], mapping.Defaults("", "", "0.1"))
    assert event["contexts"]["runtime"] == {"name": "worker"}


def test_error_events_have_no_fingerprint_so_sentry_groups_on_frames() -> None:
    failing = span(SERVER, http__request__method="GET")
    event = errors.error_from_span_event(
        failing, Event("exception", 1, {"exception.type": "E"}), failing, [],
        mapping.Defaults("", "", "0.1"),
    )  # fmt: skip
    assert "fingerprint" not in event


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("https://api.x/v1?api_key=S&page=2",
         {"url": "https://api.x/v1", "query": {"api_key": "[Filtered]", "page": "2"}}),
        ("https://api.x/v1?q=1&token=[Filtered]",
         {"url": "https://api.x/v1", "query": {"q": "1", "token": "[Filtered]"}}),
        ("page=2&password=S", {"query": {"page": "2", "password": "[Filtered]"}}),
        ("https://api.x/v1?page=2", "https://api.x/v1?page=2"),  # nothing to filter
        ("https://u:secret@api.x/v1?api_key=S", "[Filtered]"),  # sensitive outside the query
        ("my api_key=S is here", "[Filtered]"),  # not a URL: the whole value, as Sentry would
    ],
)  # fmt: skip
def test_a_url_is_filtered_one_query_value_at_a_time(value: str, safe: Any) -> None:
    assert filtering.sentry_safe({"url.full": value}) == {"url.full": safe}


def test_request_query_string_leaves_as_pairs_with_credentials_filtered() -> None:
    segment = span(SERVER, http__request__method="GET", url__path="/a",
                   url__query="page=2&api_key=S&q=a%20b")  # fmt: skip
    request = mapping.transaction(segment, [], mapping.Defaults("", "", "0.1"))["request"]
    assert request["query_string"] == [["page", "2"], ["api_key", "[Filtered]"], ["q", "a b"]]


def test_log_breadcrumbs_carry_the_apps_keys_as_data() -> None:
    body = {"event": "quota_low", "remaining": 3}
    attributes = {"user_id": 7, "code.function.name": "f", "thread.id": 1}
    record = LogRecord("a" * 32, "b" * 16, 5, 13, "warning", body, attributes, {}, "app")
    (crumb,) = errors.breadcrumbs([], [record], before_ns=10)
    assert crumb["message"] == "quota_low" and crumb["level"] == "warning"
    assert crumb["data"] == {"remaining": 3, "user_id": 7}


def test_log_items_carry_what_sentry_sdk_gives_its_own() -> None:
    record = LogRecord(None, None, 1, 13, "WARNING", "low", {"thread.name": "T"}, RESOURCE, "a")
    attributes = logs.log_items([record], mapping.Defaults("", "", "0.1"))[0]["attributes"]
    values = {key: attribute["value"] for key, attribute in attributes.items()}
    assert values["sentry.severity_text"] == "warn"  # lower-case, as sentry-sdk's
    assert values["server.address"] == "api-7d9f-x2"
    assert values["process.runtime.name"] == "CPython"
    assert values["process.runtime.version"] == "3.11.7"
    assert values["thread.name"] == "T"


def test_log_items_of_one_batch_keep_their_own_resource_and_scope() -> None:
    """What a resource and scope decide is typed once per pair, never lent to another's
    records; the sidecar's own names override a record's attribute of the same name."""
    api, worker = {"service.name": "api"}, {"service.name": "worker"}
    records = [
        LogRecord(None, None, 1, 9, "INFO", "a", {"logger.name": "mine"}, api, "app.http"),
        LogRecord(None, None, 2, 9, "INFO", "b", {}, api, "app.db"),
        LogRecord(None, None, 3, 9, "INFO", "c", {"sentry.sdk.name": "x"}, worker, ""),
    ]
    items = logs.log_items(records, mapping.Defaults("", "", "1"))
    values = [{key: value["value"] for key, value in i["attributes"].items()} for i in items]
    assert [v["service.name"] for v in values] == ["api", "api", "worker"]
    assert [v.get("logger.name") for v in values] == ["app.http", "app.db", None]
    assert values[2]["sentry.sdk.name"] == "otel-sidecar"


def test_envelope_json_is_utf8_and_keeps_what_ascii_escapes_would() -> None:
    """Items are encoded as UTF-8; what the fast encoder refuses (a lone surrogate, an integer
    past 64 bits) still encodes, the surrogate as a JSON escape; a NaN becomes null."""
    value = {"body": "café ☃", "n": [1, 2.5, None, True], "big": 2**70}
    raw = envelope.json_payload(value).get_bytes()
    assert "café ☃".encode() in raw and json.loads(raw) == value
    odd = {"odd": "a\udc80b"}
    raw = envelope.json_payload(odd).get_bytes()
    assert b"\\udc80" in raw and json.loads(raw) == odd
    assert json.loads(envelope.json_payload({"x": float("nan")}).get_bytes()) == {"x": None}


def test_an_envelope_is_byte_for_byte_what_sentry_sdk_would_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its JSON lines are encoded by orjson, the framing is sentry_sdk's: the same bytes; with
    non-ASCII text in a header (UTF-8 here, escaped there) the same envelope when read."""
    from sentry_sdk.envelope import Envelope, Item

    monkeypatch.setattr(envelope, "_now_iso", lambda: "2026-11-29T00:00:00.000000Z")
    items = [
        Item(payload=envelope.json_payload({"type": "transaction", "é": [1, 2.5]}),
             type="transaction"),
        Item(payload=envelope.json_payload({"items": [{"body": "x"}]}), type="log",
             headers={"item_count": 1, "content_type": envelope.LOG_CONTENT_TYPE}),
    ]  # fmt: skip
    headers = {"event_id": "0" * 32, "dsn": "http://k@h/1", "trace": {"trace_id": "1" * 32}}
    report = Item(payload=envelope.json_payload({"discarded_events": []}), type="client_report")
    sdk = Envelope({**headers, "sent_at": "2026-11-29T00:00:00.000000Z"}, [*items, report])
    assert envelope.Outgoing(headers, items).serialize([report]) == sdk.serialize()
    named = {**headers, "trace": {"trace_id": "1" * 32, "transaction": "GET /café"}}
    ours = Envelope.deserialize(envelope.Outgoing(named, items).serialize())
    theirs = Envelope({**named, "sent_at": "2026-11-29T00:00:00.000000Z"}, items)
    assert ours.headers == theirs.headers
    assert [(i.headers, json.loads(i.get_bytes())) for i in ours.items] == [
        ({**i.headers, "length": len(i.get_bytes())}, json.loads(i.get_bytes()))
        for i in theirs.items
    ]


def test_sent_at_is_written_as_sentry_sdk_writes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """UTC, microseconds, a Z: the whole seconds are kept for a second, the rest is not."""
    for now, written in [
        (1_764_374_400.000001, "2025-11-29T00:00:00.000001Z"),
        (1_764_374_400.5, "2025-11-29T00:00:00.500000Z"),
        (1_764_374_401.25, "2025-11-29T00:00:01.250000Z"),  # the next second
        (1_764_374_399.999999, "2025-11-28T23:59:59.999999Z"),  # and back, as clocks may go
    ]:
        monkeypatch.setattr(envelope.time, "time", lambda now=now: now)
        assert envelope._now_iso() == written
