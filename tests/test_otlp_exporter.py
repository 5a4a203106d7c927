"""The otlp_http exporter: the SDK sends to a sidecar that forwards, sampled and scrubbed, to a
real OTLP/HTTP backend parsing with the official protobufs; retries, drops and headers."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from collector.settings import ConfigError, Duration
from collector.signals import Signal, item_count
from exporters.otlp import OtlpHttpExporter, OtlpHttpSettings
from exporters.otlp_base import TlsSettings
from exporters.retry import RetrySettings
from tests.certificates import self_signed
from tests.otlp_sink import OtlpSink
from tests.sidecar import Sidecar
from tests.test_receivers import trace_request

API_KEY = "key-9f8e7d6c5b4a"
CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
processors:
  scrubber: {}
  batch: {timeout: 20ms}
exporters:
  otlp_http:
    endpoint: "ENDPOINT"
    headers: {x-api-key: "API_KEY", x-tenant: acme}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [scrubber, batch], exporters: [otlp_http]}
"""


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as running:
        yield running


def test_forwards_scrubbed_protobuf_with_headers(sink: OtlpSink, tmp_path: Path) -> None:
    config = CONFIG.replace("ENDPOINT", sink.endpoint).replace("API_KEY", API_KEY)
    with Sidecar(tmp_path, config) as sidecar:
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(
            SimpleSpanProcessor(
                OTLPSpanExporter(endpoint=sidecar.endpoints["otlp_grpc"], insecure=True)
            )
        )
        with provider.get_tracer("t").start_as_current_span(
            "GET /",
            kind=SpanKind.SERVER,
            attributes={"http.request.header.cookie": ["session=abc"], "http.route": "/"},
        ) as span:
            pass
        provider.shutdown()
        sink.wait_for(lambda: sink.accepted(Signal.TRACES))
        assert sidecar.stop() == 0
    (batch,) = sink.accepted(Signal.TRACES)
    (received,) = batch.resource_spans[0].scope_spans[0].spans
    assert received.span_id == span.get_span_context().span_id.to_bytes(8, "big")
    assert {kv.key for kv in received.attributes} == {"http.route"}  # cookie removed
    _, headers, _, _ = sink.requests[0]
    assert headers["x-api-key"] == API_KEY and headers["x-tenant"] == "acme"
    assert headers["Content-Encoding"] == "gzip"
    assert API_KEY not in str(sidecar.events) + sidecar.stderr


def run(sink: OtlpSink, *batches: Any, **overrides: Any) -> None:
    settings = OtlpHttpSettings(
        **{
            "endpoint": sink.endpoint,
            "retry_on_failure": RetrySettings(
                initial_interval=Duration(0.05),
                max_interval=Duration(0.1),
                max_elapsed_time=Duration(0.5),
            ),
            **overrides,
        }
    )

    async def main() -> None:
        exporter = OtlpHttpExporter("otlp_http", settings)
        await exporter.start()
        for batch in batches:
            await exporter.consume(batch)
        await exporter.shutdown()

    asyncio.run(main())


def test_retryable_answers_are_retried_after_retry_after(sink: OtlpSink) -> None:
    sink.answer(503, Retry_After="0")
    sink.answer(429)
    run(sink, trace_request(spans=3))
    assert [status for *_, status in sink.requests] == [503, 429, 200]
    assert item_count(sink.accepted(Signal.TRACES)[0]) == 3


def test_permanent_errors_are_dropped_not_retried(sink: OtlpSink) -> None:
    sink.answer(400)
    run(sink, trace_request())
    assert [status for *_, status in sink.requests] == [400]


def test_dead_backend_gives_up_after_max_elapsed_time(sink: OtlpSink) -> None:
    sink.answer(500, times=100)
    run(sink, trace_request())
    assert 2 <= len(sink.requests) < 20


def test_uncompressed_when_asked(sink: OtlpSink) -> None:
    run(sink, trace_request(), compression="none")
    assert "Content-Encoding" not in sink.requests[0][1]


@pytest.mark.parametrize("endpoint", ["", "otlp.example:4318", "ftp://x", "http://[::1"])
def test_endpoint_must_be_an_http_url(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"exporters\.otlp_http\.endpoint"):
        OtlpHttpSettings(endpoint=endpoint).check("exporters.otlp_http")


def test_status_never_shows_credentials() -> None:
    exporter = OtlpHttpExporter(
        "otlp_http",
        OtlpHttpSettings(
            endpoint="https://user:pw@otlp.example:4318", headers={"authorization": "Bearer x"}
        ),
    )
    assert exporter.status() == ("healthy", "sending to https://otlp.example:4318")
    assert "pw" not in repr(exporter._settings) and "Bearer" not in repr(exporter._settings)


def test_random_payloads_round_trip(sink: OtlpSink) -> None:
    batches = [trace_request(spans=n) for n in (1, 5, 50)]
    run(sink, *batches)
    ids = {
        s.span_id
        for b in sink.accepted(Signal.TRACES)
        for rs in b.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }
    assert ids == {s.span_id for b in batches for s in b.resource_spans[0].scope_spans[0].spans}
    assert len(ids) == 56


def sent_and_dropped(reason: str) -> tuple[float, float]:
    from collector.telemetry import REGISTRY

    sent = (
        REGISTRY.get_sample_value(
            "otelsidecar_exporter_sent_items_total", {"exporter": "otlp_http", "signal": "traces"}
        )
        or 0.0
    )
    dropped = (
        REGISTRY.get_sample_value(
            "otelsidecar_dropped_items_total",
            {"component": "otlp_http", "signal": "traces", "reason": reason},
        )
        or 0.0
    )
    return sent, dropped


def test_partial_success_rejections_are_counted_as_drops(sink: OtlpSink) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    sink.reply_body = ExportTraceServiceResponse(
        partial_success={"rejected_spans": 4, "error_message": "too old"}
    ).SerializeToString()
    sent_before, rejected_before = sent_and_dropped("rejected")
    run(sink, trace_request(spans=5))
    sent_after, rejected_after = sent_and_dropped("rejected")
    assert (sent_after - sent_before, rejected_after - rejected_before) == (1, 4)


def test_redirects_are_not_followed(sink: OtlpSink) -> None:
    sink.answer(301, Location="http://127.0.0.1:1/elsewhere")
    _, before = sent_and_dropped("send_error")
    run(sink, trace_request(spans=2))
    assert [status for *_, status in sink.requests] == [301]
    assert sent_and_dropped("send_error")[1] - before == 2


def test_retry_after_counts_against_max_elapsed_time(sink: OtlpSink) -> None:
    sink.answer(503, times=10, Retry_After="5")
    run(sink, trace_request())  # max_elapsed_time 0.5 s: a 5 s wait is never started
    assert len(sink.requests) == 1


def test_header_values_with_line_breaks_are_refused() -> None:
    settings = OtlpHttpSettings(endpoint="https://otlp.example", headers={"x-key": "a\r\nb: c"})
    with pytest.raises(ConfigError, match=r"exporters\.otlp_http\.headers\.x-key: must not"):
        settings.check("exporters.otlp_http")


def test_a_full_queue_asks_the_client_to_send_again(tmp_path: Path) -> None:
    """Backpressure by default: 503 with Retry-After, not an accepted-then-dropped batch."""
    from examples.services import free_port
    from tests.test_receivers import grpc_export, post

    config = f"""
receivers:
  otlp: {{protocols: {{http: {{endpoint: "127.0.0.1:0"}}, grpc: {{endpoint: "127.0.0.1:0"}}}}}}
exporters:
  otlp_http:
    endpoint: "http://127.0.0.1:{free_port()}"
    sending_queue: {{queue_size: 1, num_consumers: 1}}
    retry_on_failure: {{initial_interval: 1s, max_elapsed_time: 60s}}
service:
  grace_period: 1s
  pipelines: {{traces: {{receivers: [otlp], exporters: [otlp_http]}}}}
"""
    with Sidecar(tmp_path, config) as sidecar:
        answers = [post(sidecar, "/v1/traces", trace_request().SerializeToString())
                   for _ in range(4)]  # fmt: skip
        garbage, _, _ = post(sidecar, "/v1/traces", b"\xff not a protobuf message")
        called = grpc_export(sidecar, b"\xff not a protobuf message")
    statuses = [status for status, _, _ in answers]
    assert statuses[0] == 200 and 503 in statuses
    # Refused before the message was read or parsed (so not INVALID_ARGUMENT / 400): parsing
    # what cannot be let in would take the CPU the requests that can be need.
    assert garbage == 503
    assert isinstance(called, grpc.RpcError) and called.code() == grpc.StatusCode.UNAVAILABLE
    refused = next(headers for status, _, headers in answers if status == 503)
    assert "Retry-After" in refused


def test_https_with_the_servers_ca_and_a_client_certificate(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    client_key, client_cert = self_signed(tmp_path, "client")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    with OtlpSink(tls=server) as secure:
        run(secure, trace_request(spans=2), tls=TlsSettings(ca_file=str(cert)))
        assert item_count(secure.accepted(Signal.TRACES)[0]) == 2
        _, before = sent_and_dropped("network_error")
        run(secure, trace_request(spans=1))  # the system's roots do not know this server
        assert sent_and_dropped("network_error")[1] - before == 1
        server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS from here on
        server.load_verify_locations(client_cert)
        run(secure, trace_request(spans=1), tls=TlsSettings(ca_file=str(cert)))
        assert sent_and_dropped("network_error")[1] - before == 2  # no client certificate
        mutual = TlsSettings(ca_file=str(cert), cert_file=str(client_cert),
                             key_file=str(client_key))  # fmt: skip
        run(secure, trace_request(spans=3), tls=mutual)
        assert [item_count(b) for b in secure.accepted(Signal.TRACES)] == [2, 3]


@pytest.mark.parametrize(
    ("endpoint", "tls", "problem"),
    [
        ("https://otlp.example", {"insecure": True}, "tls.insecure: plaintext is an http://"),
        ("http://otlp.example", {"ca_file": __file__}, "tls: set for an endpoint that is not"),
        ("https://otlp.example", {"cert_file": __file__}, "cert_file and key_file go together"),
        ("https://otlp.example", {"ca_file": "/nowhere/ca.pem"}, "tls.ca_file: no such file"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(endpoint: str, tls: dict, problem: str) -> None:
    settings = OtlpHttpSettings(endpoint=endpoint, tls=TlsSettings(**tls))
    with pytest.raises(ConfigError, match=re.escape(problem)):
        settings.check("exporters.otlp_http")
