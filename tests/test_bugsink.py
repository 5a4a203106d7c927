"""A real Sentry-compatible receiver: an exception recorded by the OpenTelemetry SDK on a server
span becomes a Bugsink issue with its type, in-app frames and transaction. No fingerprint is
sent: the receiver groups with its own rules (Sentry's on the frames; Bugsink's on the type and
message)."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from examples.bugsink import Bugsink
from tests.sidecar import Sidecar

pytestmark = pytest.mark.slow

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:0"}
processors:
  scrubber: {}
  batch: {timeout: 20ms}
exporters:
  sentry:
    dsn: "DSN"
    environment: test
    transaction_wait: 100ms
service:
  pipelines:
    traces: {receivers: [otlp], processors: [scrubber, batch], exporters: [sentry]}
"""


class InventoryError(Exception):
    pass


def reserve(sku: str, quantity: int) -> None:
    raise InventoryError(f"only {quantity - 1} left of {sku}")


def checkout(tracer: object, sku: str, quantity: int) -> None:
    with tracer.start_as_current_span(  # type: ignore[attr-defined]
        "POST /checkout",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": "/checkout", "enduser.id": "u-1"},
    ) as span:
        try:
            reserve(sku, quantity)
        except InventoryError as error:
            span.record_exception(error)


def test_exceptions_become_issues_with_frames(bugsink_server: Bugsink, tmp_path: Path) -> None:
    project = bugsink_server.create_project("sidecar-errors")
    with Sidecar(tmp_path, CONFIG.replace("DSN", project["dsn"])) as sidecar:
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(
            SimpleSpanProcessor(
                OTLPSpanExporter(endpoint=sidecar.endpoints["otlp_grpc"], insecure=True)
            )
        )
        tracer = provider.get_tracer("shop")
        checkout(tracer, "red-shoes", 3)
        checkout(tracer, "blue-hat", 9)
        provider.shutdown()
        issues = bugsink_server.wait_for_issues(2, timeout=30, project_id=project["id"])
        assert sidecar.stop() == 0
    events = [event for issue in issues for event in bugsink_server.events(issue["id"])]
    assert {issue["type"] for issue in issues} == {"InventoryError"}
    assert {e["data"]["exception"]["values"][0]["value"] for e in events} == {
        "only 2 left of red-shoes",
        "only 8 left of blue-hat",
    }
    for event in events:
        data = event["data"]
        (value,) = data["exception"]["values"]
        in_app = [f for f in value["stacktrace"]["frames"] if f["in_app"]]
        assert [f["function"] for f in in_app] == ["checkout", "reserve"]
        assert all(f["abs_path"] == __file__ for f in in_app)
        assert in_app[-1]["context_line"].strip().startswith("raise InventoryError")
        assert data["transaction"] == "/checkout"
        assert data["user"] == {"id": "u-1"}
        assert "fingerprint" not in data
