"""OTLP/JSON: the protobuf JSON mapping with hex ids, checked against ``json_format``."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector import otlp_json
from collector.signals import Signal
from tests.test_receivers import trace_request


def rich_trace_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26")
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "svc"
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    span = scope_spans.spans.add(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        parent_span_id=os.urandom(8),
        name="GET /",
        kind=2,
        start_time_unix_nano=2**62,
        end_time_unix_nano=2**62 + 5,
        flags=0x301,
    )
    values = span.attributes
    values.add(key="s").value.string_value = "text"
    values.add(key="b").value.bool_value = False
    values.add(key="i").value.int_value = -(2**60)
    values.add(key="d").value.double_value = 0.25
    values.add(key="nan").value.double_value = float("nan")
    values.add(key="raw").value.bytes_value = b"\x00\xff"
    array = values.add(key="a").value.array_value
    array.values.add().string_value = "x"
    array.values.add().int_value = 3
    kvlist = values.add(key="kv").value.kvlist_value
    kvlist.values.add(key="inner").value.string_value = "y"
    values.add(key="empty").value.SetInParent()
    event = span.events.add(name="exception", time_unix_nano=7)
    event.attributes.add(key="exception.type").value.string_value = "ValueError"
    link = span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8))
    link.attributes.add(key="l").value.int_value = 1
    span.status.code = 2
    span.status.message = "boom"
    return request


def json_format_with_hex_ids(request: ExportTraceServiceRequest) -> dict:
    """The reference: json_format's mapping, with its base64 ids turned into hex."""
    tree = json_format.MessageToDict(request, use_integers_for_enums=True)

    def fix(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId"):
                    node[key] = base64.b64decode(value).hex()
                else:
                    fix(value)
        elif isinstance(node, list):
            for item in node:
                fix(item)

    fix(tree)
    return tree


def test_encoding_matches_json_format_except_ids() -> None:
    request = rich_trace_request()
    assert json.loads(otlp_json.encode(request)) == json_format_with_hex_ids(request)


def test_ids_are_hex() -> None:
    request = rich_trace_request()
    span = json.loads(otlp_json.encode(request))["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex()
    assert len(span["spanId"]) == 16


def test_round_trip_traces() -> None:
    request = rich_trace_request()
    decoded = otlp_json.decode(otlp_json.encode(request), Signal.TRACES)
    # NaN != NaN, so compare everything else through the encoding.
    assert otlp_json.encode(decoded) == otlp_json.encode(request)


def test_round_trip_logs() -> None:
    request = ExportLogsServiceRequest()
    record = (
        request.resource_logs.add()
        .scope_logs.add()
        .log_records.add(
            trace_id=os.urandom(16), span_id=os.urandom(8), severity_number=17, time_unix_nano=3
        )
    )
    record.body.kvlist_value.values.add(key="event").value.string_value = "login"
    assert otlp_json.decode(otlp_json.encode(request), Signal.LOGS) == request


def test_snake_case_keys_and_unknown_fields_are_accepted() -> None:
    body = json.dumps(
        {
            "resource_spans": [
                {
                    "scope_spans": [
                        {
                            "spans": [
                                {
                                    "trace_id": "0" * 31 + "1",
                                    "span_id": "0" * 15 + "2",
                                    "name": "n",
                                    "future": 1,
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    span = otlp_json.decode(body, Signal.TRACES).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex("0" * 31 + "1")
    assert span.name == "n"


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'{"resourceSpans": 3}', b"\xff"])
def test_not_otlp_json(body: bytes) -> None:
    with pytest.raises(otlp_json.InvalidJson):
        otlp_json.decode(body, Signal.TRACES)


def test_a_large_batch_is_encoded_in_pieces_to_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One dump of a whole batch would hold the interpreter lock for all of it.
    request = trace_request(spans=1000)
    request.resource_spans[0].scope_spans[0].spans[0].name = "GET /caf\u00e9 \u2603 1.5e-07"
    whole = orjson.dumps(otlp_json.message_to_dict(request))
    dumped: list[Any] = []
    dumps = otlp_json._dumps
    monkeypatch.setattr(otlp_json, "_dumps", lambda value: dumped.append(value) or dumps(value))
    assert otlp_json.encode(request) == whole
    assert max(len(value) for value in dumped if isinstance(value, list)) == 256
