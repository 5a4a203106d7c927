"""The pipeline's joints, in process: FanOut isolates a failing exporter, a pipeline's door
refuses before any processor takes a batch, Tee gives each pipeline its own copy and takes a
batch into all of them or none; and, over the real components, a failed start stops what had
started, shutdown runs upstream first, and what the pipeline held is released once sent."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import ClientSession

from collector import config as config_module
from collector.component import Consumer, Refused
from collector.memory import ADMISSION, HELD
from collector.pipeline import Door, FanOut, Service, Tee
from collector.signals import Batch, Signal
from collector.telemetry import REGISTRY
from tests.otlp_sink import OtlpSink
from tests.test_receivers import trace_request


class FakeExporter:
    """Takes batches into a list; or fails, or has no room, as a test says."""

    accepts_unsampled_errors = False

    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error
        self.full = False
        self.batches: list[Batch] = []

    def admit(self) -> None:
        if self.full:
            raise Refused("queue_full")

    async def consume(self, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        self.batches.append(batch)


class Rename:
    """A processor: renames every span in place."""

    def __init__(self, name: str, next: Consumer) -> None:
        self.name = name
        self.next = next
        self.calls = 0

    async def consume(self, batch: Batch) -> None:
        self.calls += 1
        for span in spans(batch):
            span.name = self.name
        await self.next.consume(batch)


def spans(batch: Any) -> Iterator[Any]:
    for resource_spans in batch.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            yield from scope_spans.spans


def names(batch: Batch) -> set[str]:
    return {span.name for span in spans(batch)}


def dropped(component: str, reason: str) -> float:
    labels = {"component": component, "signal": "traces", "reason": reason}
    return REGISTRY.get_sample_value("otelsidecar_dropped_items_total", labels) or 0.0


# --- FanOut, Door, Tee ---------------------------------------------------------------------


def test_a_failing_exporter_does_not_stop_the_others_and_its_drop_is_counted() -> None:
    broken, healthy = FakeExporter("broken", RuntimeError("disk full")), FakeExporter("healthy")
    before = dropped("broken", "export_failed")
    asyncio.run(FanOut([broken, healthy]).consume(trace_request(spans=3)))
    assert [len(list(spans(b))) for b in healthy.batches] == [3]
    assert dropped("broken", "export_failed") == before + 3


def test_a_refusal_is_passed_on_after_every_other_exporter_had_the_batch() -> None:
    refusing, healthy = FakeExporter("refusing", Refused("queue_full")), FakeExporter("healthy")
    with pytest.raises(Refused):
        asyncio.run(FanOut([refusing, healthy]).consume(trace_request(spans=2)))
    assert len(healthy.batches) == 1


def test_the_door_refuses_before_any_processor_takes_the_batch() -> None:
    exporter = FakeExporter("sentry")
    exporter.full = True
    processor = Rename("renamed", exporter)
    with pytest.raises(Refused):
        asyncio.run(Door(processor, [exporter]).consume(trace_request(spans=2)))
    assert processor.calls == 0
    exporter.full = False
    asyncio.run(Door(processor, [exporter]).consume(trace_request(spans=2)))
    assert [names(b) for b in exporter.batches] == [{"renamed"}]


def two_pipelines() -> tuple[Tee, FakeExporter, FakeExporter]:
    first, second = FakeExporter("first"), FakeExporter("second")
    tee = Tee([Door(Rename("changed", first), [first]), Door(second, [second])])
    return tee, first, second


def test_each_pipeline_gets_its_own_copy() -> None:
    tee, first, second = two_pipelines()
    asyncio.run(tee.consume(trace_request(spans=2, name="as sent")))
    assert [names(b) for b in first.batches] == [{"changed"}]
    assert [names(b) for b in second.batches] == [{"as sent"}]


def test_a_batch_goes_into_every_pipeline_or_none() -> None:
    """Were the first pipeline to take a batch the second refuses, the client's resend would
    put it into the first twice."""
    tee, first, second = two_pipelines()
    second.full = True
    with pytest.raises(Refused):
        asyncio.run(tee.consume(trace_request(spans=2)))
    assert first.batches == [] and second.batches == []


# --- the real components -------------------------------------------------------------------

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:GRPC_PORT"}
      http: {endpoint: "127.0.0.1:0"}
processors:
  memory_limiter: {limit_mib: 256}
  scrubber: {}
  batch: {timeout: 50ms}
exporters:
  otlp_http: {endpoint: "SINK", retry_on_failure: {enabled: false}}
extensions:
  health: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, scrubber, batch]
      exporters: [otlp_http]
"""


def service(sink_endpoint: str, grpc_port: int = 0) -> Service:
    text = CONFIG.replace("SINK", sink_endpoint).replace("GRPC_PORT", str(grpc_port))
    return Service(config_module.parse_yaml(text, {}))


def listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def test_a_failed_start_stops_what_had_started() -> None:
    """The gRPC port is taken: the health server and the memory limiter, started before the
    receivers, are stopped again (no port left open, no limit left registered)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sidecar = service("http://127.0.0.1:9", taken.getsockname()[1])

        async def start() -> str:
            with pytest.raises(OSError, match="cannot listen"):
                await sidecar.start()
            return sidecar.extensions["health"].address

        health = asyncio.run(start())
    assert not listening(health)
    assert ADMISSION._limits == []


def test_shutdown_runs_upstream_first() -> None:
    """Receivers stop taking data, processors flush in pipeline order into exporters that
    still run, and the probes answer until the very end."""
    sidecar = service("http://127.0.0.1:9")
    order: list[str] = []
    for component in [
        *sidecar.receivers.values(),
        *sidecar.processors,
        *sidecar.exporters.values(),
        *sidecar.extensions.values(),
    ]:
        stop = component.shutdown

        async def recorded(_stop: Any = stop, _name: str = component.name, **kw: Any) -> None:
            order.append(_name)
            await _stop(**kw)

        component.shutdown = recorded

    async def run() -> None:
        await sidecar.start()
        await sidecar.shutdown(grace_s=5)

    asyncio.run(run())
    assert order == ["otlp", "memory_limiter", "scrubber", "batch", "otlp_http", "health"]


def test_what_the_pipeline_held_is_released_once_sent() -> None:
    """The request's admission, the batch processor's buffer and the sending queue each hold
    bytes (otelsidecar_memory_held_bytes); once the backend has the spans, none are left."""
    with OtlpSink() as sink:
        sidecar = service(sink.endpoint)

        async def run() -> tuple[int, int]:
            await sidecar.start()
            idle = HELD.value
            try:
                address = sidecar.endpoints()["otlp_http"]
                body = trace_request(spans=20).SerializeToString()
                headers = {"Content-Type": "application/x-protobuf"}
                async with ClientSession() as client:
                    answer = await client.post(f"http://{address}/v1/traces", data=body,
                                               headers=headers)  # fmt: skip
                    assert answer.status == 200
                for _ in range(200):
                    if sink.accepted(Signal.TRACES) and HELD.value == idle:
                        break
                    await asyncio.sleep(0.05)
                return idle, HELD.value
            finally:
                await sidecar.shutdown(grace_s=5)

        idle, after = asyncio.run(run())
        assert sum(len(list(spans(b))) for b in sink.accepted(Signal.TRACES)) == 20
    assert after == idle
