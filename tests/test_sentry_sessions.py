"""Release health: requests counted before sampling, sent as Sentry ``sessions`` aggregates,
exact at any sample rate; the sampler hands on the count of the requests it drops."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from collector import sampling
from collector.processors.sampler import Sampler, SamplerSettings
from collector.settings import Duration
from collector.signals import Signal
from exporters.sentry import SentryExporter
from tests.sentry_sink import SentrySink, payload
from tests.test_sentry_transport import Trace, settings

SERVER = Span.SPAN_KIND_SERVER
Requests = tuple[ExportTraceServiceRequest, Counter[str]]


@pytest.fixture
def sink() -> Iterator[SentrySink]:
    with SentrySink() as running:
        yield running


class Collect:
    def __init__(self) -> None:
        self.batches: list[ExportTraceServiceRequest] = []

    async def consume(self, batch: ExportTraceServiceRequest) -> None:
        self.batches.append(batch)


def requests(
    count: int, release: str = "shop@2.0"
) -> tuple[ExportTraceServiceRequest, Counter[str]]:
    """``count`` requests, one trace each: every 10th crashed (status ERROR), every 7th
    recorded a handled exception; each with a child span."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource = resource_spans.resource.attributes
    resource.add(key="service.version").value.string_value = release
    resource.add(key="deployment.environment.name").value.string_value = "prod"
    spans = resource_spans.scope_spans.add().spans
    expected: Counter[str] = Counter()
    for number in range(count):
        trace = Trace()
        server = trace.span("GET /x", kind=SERVER, error=number % 7 == 0)
        if number % 10 == 0:
            server.status.code = Status.STATUS_CODE_ERROR
        expected["crashed" if number % 10 == 0 else "errored" if number % 7 == 0 else "exited"] += 1
        spans.extend([server, trace.span("SELECT", parent=server)])
    return request, expected


def sessions_sent(sink: SentrySink) -> Counter[str]:
    totals: Counter[str] = Counter()
    for received in sink.received:
        for item in received.items("sessions"):
            body = payload(item)
            assert body["attrs"] == {"release": "shop@2.0", "environment": "prod"}
            for aggregate in body["aggregates"]:
                assert aggregate["started"].endswith(":00Z")  # per minute
                totals.update({k: v for k, v in aggregate.items() if k != "started"})
    return totals


def test_sessions_are_exact_whatever_the_sample_rate(sink: SentrySink) -> None:
    batch, expected = requests(400)

    async def main() -> None:
        collected = Collect()
        sampler = Sampler("sampler", SamplerSettings(rate=0.1), Signal.TRACES, collected)
        await sampler.consume(batch)
        exporter = SentryExporter(
            "sentry", settings(sink, environment="", sessions_interval=Duration(3600))
        )
        await exporter.start()
        for sampled in collected.batches:
            await exporter.consume(sampled)
        await exporter.shutdown()  # the last aggregates leave at shutdown

    asyncio.run(main())
    assert len(sink.events("transaction")) < 100  # most requests were sampled out...
    assert sessions_sent(sink) == expected  # ...and every one of them is counted


def test_the_sampler_hands_on_the_requests_it_drops_for_release_health() -> None:
    batch, _ = requests(50)
    collected = Collect()
    sampler = Sampler("sampler", SamplerSettings(rate=0.0), Signal.TRACES, collected)
    asyncio.run(sampler.consume(batch))
    (out,) = collected.batches
    counted = 0
    for resource_spans in out.resource_spans:
        keys = {kv.key: kv.value for kv in resource_spans.resource.attributes}
        assert keys[sampling.ERRORS_ONLY].bool_value  # only Sentry's error path sees it
        if sampling.UNSAMPLED_SESSIONS in keys:
            assert not resource_spans.scope_spans
            minutes = keys[sampling.UNSAMPLED_SESSIONS].kvlist_value.values
            counted += sum(minute.value.int_value for minute in minutes)
    healthy = sum(1 for n in range(50) if n % 10 and n % 7)
    assert counted == healthy  # the failed requests travel as spans, for their error events


def test_no_release_no_sessions(sink: SentrySink) -> None:
    batch, _ = requests(5, release="")

    async def main() -> None:
        exporter = SentryExporter("sentry", settings(sink, environment=""))
        await exporter.start()
        await exporter.consume(batch)
        await exporter.shutdown()

    asyncio.run(main())
    assert not [r for r in sink.received if r.items("sessions")]
