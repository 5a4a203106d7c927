"""Raw OTLP requests against a running sidecar: JSON, gzip, and every error answer; a bad
request never stops the sidecar from serving the next good one."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from collector import otlp_json
from collector.signals import MAX_ATTRIBUTES
from tests.sidecar import BASIC_CONFIG, Sidecar, spans_in

PROTOBUF = "application/x-protobuf"
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MIB = 1024 * 1024


def trace_request(spans: int = 2, name: str = "GET /") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    trace_id = os.urandom(16)
    for _ in range(spans):
        span = scope.spans.add(trace_id=trace_id, span_id=os.urandom(8), name=name)
        span.attributes.add(key="http.route").value.string_value = "/"
    return request


def post(
    sidecar: Sidecar,
    path: str,
    body: bytes,
    content_type: str = PROTOBUF,
    method: str = "POST",
    **headers: str,
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(
        sidecar.url(path),
        data=body,
        method=method,
        headers={"Content-Type": content_type, **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def assert_still_serving(sidecar: Sidecar) -> None:
    status, body, _ = post(sidecar, "/v1/traces", trace_request().SerializeToString())
    assert status == 200, body


def grpc_export(sidecar: Sidecar, payload: bytes) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(sidecar.endpoints["otlp_grpc"]) as channel:
        call = channel.unary_unary(TRACE_EXPORT)
        try:
            return call(payload, timeout=10)
        except grpc.RpcError as error:
            return error


class TestHttp:
    def test_protobuf_answers_empty_partial_success(self, shared_sidecar: Sidecar) -> None:
        """A protobuf request is answered 200 with an empty partial_success, in protobuf."""
        status, body, headers = post(
            shared_sidecar, "/v1/traces", trace_request().SerializeToString()
        )
        assert status == 200
        assert headers["Content-Type"] == PROTOBUF
        response = ExportTraceServiceResponse.FromString(body)
        assert response.HasField("partial_success")
        assert response.partial_success.rejected_spans == 0

    def test_json_body_in_the_otlp_json_mapping(self, shared_sidecar: Sidecar) -> None:
        """Hex ids and camelCase keys are accepted; the answer is JSON."""
        trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
        body = json.dumps(
            {
                "resourceSpans": [
                    {
                        "scopeSpans": [
                            {
                                "spans": [
                                    {
                                        "traceId": trace_id,
                                        "spanId": span_id,
                                        "name": "json span",
                                        "kind": 2,
                                        "startTimeUnixNano": "1700000000000000000",
                                        "endTimeUnixNano": 1700000000500000000,
                                        "attributes": [{"key": "n", "value": {"intValue": "7"}}],
                                    }
                                ]
                            }
                        ]
                    }
                ]
            }
        ).encode()
        status, answer, headers = post(shared_sidecar, "/v1/traces", body, "application/json")
        assert status == 200, answer
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(answer) == {"partialSuccess": {}}
        assert wait_for_span(shared_sidecar, span_id)["traceId"] == trace_id

    def test_gzip_body(self, shared_sidecar: Sidecar) -> None:
        request = trace_request(name="gzipped")
        status, _, _ = post(
            shared_sidecar,
            "/v1/traces",
            gzip.compress(request.SerializeToString()),
            **{"Content-Encoding": "gzip"},
        )
        assert status == 200
        span_id = request.resource_spans[0].scope_spans[0].spans[0].span_id.hex()
        assert wait_for_span(shared_sidecar, span_id)["name"] == "gzipped"

    def test_logs_endpoint(self, shared_sidecar: Sidecar) -> None:
        request = ExportLogsServiceRequest()
        request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hi"
        status, _, _ = post(shared_sidecar, "/v1/logs", request.SerializeToString())
        assert status == 200

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            (b"\xff\xff\xff\xff", PROTOBUF),
            (b"{not json", "application/json"),
            (b"[1, 2]", "application/json"),
            (
                b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
                "application/json",
            ),
            (b'{"resourceSpans": "nope"}', "application/json"),
        ],
        ids=["protobuf", "json-syntax", "json-not-object", "json-bad-hex", "json-bad-shape"],
    )
    def test_malformed_is_400(
        self, shared_sidecar: Sidecar, body: bytes, content_type: str
    ) -> None:
        status, answer, _ = post(shared_sidecar, "/v1/traces", body, content_type)
        assert status == 400
        if content_type == PROTOBUF:
            assert Status.FromString(answer).code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        else:
            assert "malformed" in json.loads(answer)["message"]
        assert_still_serving(shared_sidecar)

    def test_invalid_ids_are_400(self, shared_sidecar: Sidecar) -> None:
        request = trace_request()
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"short"
        status, answer, _ = post(shared_sidecar, "/v1/traces", request.SerializeToString())
        assert status == 400
        assert "trace_id must be 16 bytes" in Status.FromString(answer).message

    def test_oversized_is_413(self, shared_sidecar: Sidecar) -> None:
        status, _, _ = post(shared_sidecar, "/v1/traces", os.urandom(2 * MIB))
        assert status == 413
        assert_still_serving(shared_sidecar)

    def test_gzip_bomb_is_413(self, shared_sidecar: Sidecar) -> None:
        """A small gzip body that inflates past the limit is refused, not inflated."""
        bomb = gzip.compress(b"\0" * (64 * MIB))
        assert len(bomb) < MIB
        status, _, _ = post(shared_sidecar, "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
        assert status == 413
        assert_still_serving(shared_sidecar)

    def test_gzip_with_several_members(self, shared_sidecar: Sidecar) -> None:
        """RFC 1952 allows concatenated members; all of them are read."""
        data = trace_request(name="two members").SerializeToString()
        body = gzip.compress(data[:10]) + gzip.compress(data[10:])
        status, _, _ = post(shared_sidecar, "/v1/traces", body, **{"Content-Encoding": "gzip"})
        assert status == 200

    def test_deeply_nested_json_is_400(self, shared_sidecar: Sidecar) -> None:
        body = b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, answer, _ = post(shared_sidecar, "/v1/traces", body, "application/json")
        assert status == 400
        assert "nested too deeply" in json.loads(answer)["message"]
        assert_still_serving(shared_sidecar)

    def test_corrupt_gzip_is_400(self, shared_sidecar: Sidecar) -> None:
        status, _, _ = post(
            shared_sidecar, "/v1/traces", b"\x1f\x8bnot gzip", **{"Content-Encoding": "gzip"}
        )
        assert status == 400

    def test_wrong_content_type_is_415(self, shared_sidecar: Sidecar) -> None:
        status, _, _ = post(shared_sidecar, "/v1/traces", b"hello", "text/plain")
        assert status == 415
        assert_still_serving(shared_sidecar)

    def test_unknown_content_encoding_is_415(self, shared_sidecar: Sidecar) -> None:
        status, _, _ = post(shared_sidecar, "/v1/traces", b"x", **{"Content-Encoding": "br"})
        assert status == 415

    def test_other_method_is_405(self, shared_sidecar: Sidecar) -> None:
        status, _, _ = post(shared_sidecar, "/v1/traces", b"", method="PUT")
        assert status == 405
        request = urllib.request.Request(shared_sidecar.url("/v1/traces"))
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=10)
        assert error.value.code == 405

    def test_unknown_path_is_404(self, shared_sidecar: Sidecar) -> None:
        status, _, _ = post(shared_sidecar, "/v1/metrics", b"")
        assert status == 404


class TestGrpc:
    def test_export_answers_empty_partial_success(self, shared_sidecar: Sidecar) -> None:
        answer = grpc_export(shared_sidecar, trace_request().SerializeToString())
        assert isinstance(answer, bytes)
        assert ExportTraceServiceResponse.FromString(answer).HasField("partial_success")

    def test_malformed_is_invalid_argument(self, shared_sidecar: Sidecar) -> None:
        error = grpc_export(shared_sidecar, b"\xff\xff\xff\xff")
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert_still_serving(shared_sidecar)

    def test_invalid_ids_are_invalid_argument(self, shared_sidecar: Sidecar) -> None:
        request = trace_request()
        request.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01"
        error = grpc_export(shared_sidecar, request.SerializeToString())
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_oversized_is_resource_exhausted(self, shared_sidecar: Sidecar) -> None:
        error = grpc_export(
            shared_sidecar, trace_request(spans=1, name="x" * 2 * MIB).SerializeToString()
        )
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_still_serving(shared_sidecar)

    def test_a_call_without_a_message_is_invalid_argument(self, shared_sidecar: Sidecar) -> None:
        with (
            grpc.insecure_channel(shared_sidecar.endpoints["otlp_grpc"]) as channel,
            pytest.raises(grpc.RpcError) as raised,
        ):
            channel.stream_unary(TRACE_EXPORT)(iter(()), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert_still_serving(shared_sidecar)

    def test_two_messages_on_one_call_are_invalid_argument(self, shared_sidecar: Sidecar) -> None:
        """Export is unary: a client streaming a second message is told, not half-read."""
        body = trace_request(spans=1).SerializeToString()
        with (
            grpc.insecure_channel(shared_sidecar.endpoints["otlp_grpc"]) as channel,
            pytest.raises(grpc.RpcError) as raised,
        ):
            channel.stream_unary(TRACE_EXPORT)(iter([body, body]), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one request message" in (raised.value.details() or "")
        assert_still_serving(shared_sidecar)

    def test_a_message_that_never_comes_is_unavailable(self, shared_sidecar: Sidecar) -> None:
        """The call is taken before its message is read, holding the memory the message may
        cost: a message that does not arrive within 2 s + 1 s per MiB of the largest allowed
        (1 MiB here) is not waited for."""
        ended = threading.Event()

        def never() -> Iterator[bytes]:
            ended.wait(30)
            yield b""

        with grpc.insecure_channel(shared_sidecar.endpoints["otlp_grpc"]) as channel:
            try:
                with pytest.raises(grpc.RpcError) as raised:
                    channel.stream_unary(TRACE_EXPORT)(never(), timeout=20)
            finally:
                ended.set()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "too slow" in (raised.value.details() or "")
        assert_still_serving(shared_sidecar)


def wait_for_span(sidecar: Sidecar, span_id: str, timeout: float = 10) -> dict:
    """The span as written by the file exporter (the batch timeout is 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, span in spans_in(sidecar.lines()):
            if span["spanId"] == span_id:
                return span
        time.sleep(0.05)
    raise AssertionError(f"span {span_id} never reached the file")


@pytest.mark.parametrize("field", ["trace_id", "span_id"])
def test_all_zero_ids_are_refused_as_invalid(field: str, shared_sidecar: Sidecar) -> None:
    request = trace_request(spans=2)
    span = request.resource_spans[0].scope_spans[0].spans[1]
    setattr(span, field, bytes(len(getattr(span, field))))
    status, body, _ = post(shared_sidecar, "/v1/traces", request.SerializeToString())
    assert status == 400 and b"all-zero" in body


def test_json_bodies_are_capped_below_protobuf(tmp_path: Path) -> None:
    """Decoding JSON cannot be interrupted: past 2 MiB (sent or inflated) it is refused with
    a clear 413, while a protobuf body of the same size is taken."""
    config = BASIC_CONFIG.replace("max_request_body_size_mib: 1", "max_request_body_size_mib: 16")
    big = trace_request(spans=1, name="five MiB")
    big.resource_spans[0].scope_spans[0].spans[0].attributes.add(
        key="payload"
    ).value.string_value = "x" * (5 * MIB)
    with Sidecar(tmp_path, config) as sidecar:
        json_body = otlp_json.encode(big)
        gzipped = {"Content-Encoding": "gzip"}
        for body, headers in ((json_body, {}), (gzip.compress(json_body), gzipped)):
            status, answer, _ = post(sidecar, "/v1/traces", body, "application/json", **headers)
            assert status == 413
            assert "OTLP/JSON body exceeds 2 MiB" in json.loads(answer)["message"]
        status, _, _ = post(sidecar, "/v1/traces", big.SerializeToString())
        assert status == 200


def test_an_item_with_too_many_attributes_is_413_over_both_transports(tmp_path: Path) -> None:
    flood = trace_request(spans=1, name="flood")
    span = flood.resource_spans[0].scope_spans[0].spans[0]
    for index in range(MAX_ATTRIBUTES + 1):
        span.attributes.add(key=f"k{index}").value.bool_value = True
    resource_flood = trace_request(spans=1)
    for index in range(MAX_ATTRIBUTES + 1):
        resource_flood.resource_spans[0].resource.attributes.add(key=f"r{index}")
    with Sidecar(tmp_path, BASIC_CONFIG) as sidecar:
        for request, what in ((flood, "a span"), (resource_flood, "a resource")):
            status, answer, _ = post(sidecar, "/v1/traces", request.SerializeToString())
            assert status == 413
            message = Status.FromString(answer).message
            assert message.startswith(f"{what} has ") and f"at most {MAX_ATTRIBUTES}" in message
        error = grpc_export(sidecar, flood.SerializeToString())
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert post(sidecar, "/v1/traces", trace_request().SerializeToString())[0] == 200
