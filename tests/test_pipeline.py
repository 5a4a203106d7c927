"""The pipeline's joints, in process: FanOut isolates a failing exporter, a pipeline's door
refuses before any processor takes a batch, Tee gives each pipeline its own copy and takes a
batch into all of them or none; and, over the real components, a failed start stops what had
started, shutdown runs upstream first, and what the pipeline held is released once sent."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from structlog.testing import capture_logs

from collector import config as config_module
from collector import sampling
from collector.component import Consumer, Refused
from collector.memory import ADMISSION, HELD
from collector.pipeline import Door, FanOut, Service, Tee
from collector.signals import Batch, Signal
from collector.telemetry import REGISTRY
from tests.otlp_sink import OtlpSink
from tests.sidecar import spans_in
from tests.test_receivers import trace_request


class FakeExporter:
    """Takes batches into a list; or fails, or has no room, as a test says."""

    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.accepts_unsampled_errors = False
        self.durable = False
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


def test_listening_receivers_stop_before_one_that_makes_data() -> None:
    """key_metrics' last snapshot is taken once the OTLP receivers have let in all they will
    (ids alone would stop it first: "key_metrics" < "otlp")."""
    text = CONFIG.replace("SINK", "http://127.0.0.1:9").replace("GRPC_PORT", "0")
    text = text.replace("receivers:\n", "receivers:\n  key_metrics: {}\n", 1)
    text += "    metrics: {receivers: [key_metrics], exporters: [otlp_http]}\n"
    sidecar = Service(config_module.parse_yaml(text, {}))
    order: list[str] = []
    for receiver in sidecar.receivers.values():
        stop = receiver.shutdown

        async def recorded(_stop: Any = stop, _name: str = receiver.name, **kw: Any) -> None:
            order.append(_name)
            await _stop(**kw)

        receiver.shutdown = recorded  # type: ignore[method-assign]

    async def run() -> None:
        await sidecar.start()
        await sidecar.shutdown(grace_s=5)

    asyncio.run(run())
    assert order == ["otlp", "key_metrics"]


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


def errors_only(batch: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    for resource_spans in batch.resource_spans:
        resource_spans.resource.attributes.add(key=sampling.ERRORS_ONLY).value.bool_value = True
    return batch


def test_unsampled_errors_reach_only_the_exporters_with_an_error_path() -> None:
    errors, other = FakeExporter("sentry"), FakeExporter("otlp_http")
    errors.accepts_unsampled_errors = True
    batch = trace_request(spans=2, name="kept")
    batch.resource_spans.extend(errors_only(trace_request(spans=1, name="error")).resource_spans)
    asyncio.run(FanOut([errors, other]).consume(batch))
    assert [names(b) for b in errors.batches] == [{"kept", "error"}]
    assert [names(b) for b in other.batches] == [{"kept"}]
    asyncio.run(FanOut([errors, other]).consume(errors_only(trace_request(spans=1))))
    assert len(errors.batches) == 2 and len(other.batches) == 1  # nothing left for it


def test_a_failed_export_is_logged_by_exporter_signal_and_error_type_alone() -> None:
    broken = FakeExporter("broken", RuntimeError("https://key@sentry.example/1 refused"))
    with capture_logs() as logs:
        asyncio.run(FanOut([broken]).consume(trace_request(spans=1)))
    assert logs == [
        {"event": "export_failed", "exporter": "broken", "signal": "traces",
         "error": "RuntimeError", "log_level": "error"}
    ]  # fmt: skip


WIRING = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
  otlp/second: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
exporters:
  file/first: {path: "FIRST"}
  file/second: {path: "SECOND"}
  otlp_http: {endpoint: "http://127.0.0.1:9", retry_on_failure: {enabled: false}}
extensions:
  health: {endpoint: "127.0.0.1:0"}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file/first]}
    traces/second: {receivers: [otlp, otlp/second], exporters: [file/second, otlp_http]}
"""


def wired(tmp_path: Path) -> Service:
    text = WIRING.replace("FIRST", str(tmp_path / "first.jsonl"))
    return Service(config_module.parse_yaml(text.replace("SECOND", str(tmp_path / "second.jsonl"))))


def written(path: Path) -> list[str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [span["name"] for _, span in spans_in(lines)]


def test_each_receiver_feeds_the_pipelines_that_list_it(tmp_path: Path) -> None:
    sidecar = wired(tmp_path)
    intakes = {
        rid: receiver.servers[0].intake for rid, receiver in sidecar.receivers.items()
    }  # fmt: skip
    assert not intakes["otlp"].serves(Signal.LOGS)  # no logs pipeline lists it

    async def run() -> None:
        await sidecar.start()
        try:
            await intakes["otlp"].accept(Signal.TRACES, trace_request(spans=1, name="to both"))
            await intakes["otlp/second"].accept(Signal.TRACES, trace_request(spans=1, name="one"))
        finally:
            await sidecar.shutdown(grace_s=1)

    asyncio.run(run())
    assert written(tmp_path / "first.jsonl") == ["to both"]
    assert sorted(written(tmp_path / "second.jsonl")) == ["one", "to both"]


def test_one_health_entry_per_component(tmp_path: Path) -> None:
    """The otlp_http exporter and the otlp receiver's HTTP transport share a name: the
    exporter's entry is ``exporter/otlp_http``."""
    sidecar = wired(tmp_path)

    async def run() -> dict[str, dict[str, str]]:
        await sidecar.start()
        try:
            return sidecar.component_status()
        finally:
            await sidecar.shutdown(grace_s=1)

    status = asyncio.run(run())
    assert set(status) == {
        "otlp_http", "otlp/second_http", "file/first", "file/second", "exporter/otlp_http"
    }  # fmt: skip
    address = sidecar.endpoints()["otlp/second_http"]
    assert status["otlp/second_http"] == {"status": "healthy", "message": f"listening on {address}"}
    assert status["exporter/otlp_http"]["status"] == "healthy"
    assert set(status["file/first"]) == {"status", "message"}
    assert "health" in sidecar.endpoints()


def test_ready_once_started_and_not_from_the_start_of_shutdown(tmp_path: Path) -> None:
    sidecar = wired(tmp_path)
    health = sidecar.extensions["health"]
    seen: list[bool] = []
    receiver = sidecar.receivers["otlp"]
    stop = receiver.shutdown

    async def recorded(**kw: Any) -> None:
        seen.append(health.ready)  # what the probe said as the receivers stopped
        await stop(**kw)

    receiver.shutdown = recorded

    async def run() -> None:
        assert health.ready is False
        await sidecar.start()
        seen.append(health.ready)
        await sidecar.shutdown(grace_s=1)

    asyncio.run(run())
    assert seen == [True, False] and health.ready is False


def test_a_shutdown_past_the_grace_period_is_cancelled_and_the_rest_still_stop(
    tmp_path: Path,
) -> None:
    """Receivers get a quarter of the grace period (at most 5 s) to finish their calls; a
    component that overruns the deadline is cancelled and named in the log; one that fails
    is named too; the components after it stop all the same."""
    sidecar = wired(tmp_path)
    stopped: list[str] = []
    graces: list[float] = []

    cancelled: list[bool] = []

    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fails() -> None:
        raise OSError("disk gone")

    for exporter in sidecar.exporters.values():
        stop = exporter.shutdown

        async def recorded(_stop: Any = stop, _name: str = exporter.name) -> None:
            stopped.append(_name)
            await _stop()

        exporter.shutdown = recorded
    receiver_stop = sidecar.receivers["otlp"].shutdown

    async def receiver_recorded(grace_s: float) -> None:
        graces.append(grace_s)
        await receiver_stop(grace_s=grace_s)

    sidecar.receivers["otlp"].shutdown = receiver_recorded
    sidecar.exporters["file/first"].shutdown = hangs
    sidecar.exporters["file/second"].shutdown = fails

    async def run() -> None:
        await sidecar.start()
        await sidecar.shutdown(grace_s=0.4)

    with capture_logs() as logs:
        asyncio.run(run())
    assert graces == [0.1]
    assert stopped == ["otlp_http"]
    events = {(e["event"], e.get("component"), e.get("error")) for e in logs}
    assert ("shutdown_timeout", "file/first", None) in events
    assert ("shutdown_failed", "file/second", "OSError") in events
    assert cancelled == [True]  # not waited for
    assert not listening(sidecar.extensions["health"].address)


def test_logs_reach_every_exporter() -> None:
    plain, errors = FakeExporter("file"), FakeExporter("sentry")
    errors.accepts_unsampled_errors = True
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
    asyncio.run(FanOut([plain, errors]).consume(logs))
    assert plain.batches == [logs] and errors.batches == [logs]
