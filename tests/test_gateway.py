"""The gateway for real (``make test-gateway``: it builds the OpenTelemetry Collector first):
two sidecars, as two pods of one request's path, forward with the gateway overlay's config to
deploy/gateway's two tiers run by the real Collector (tier 1 routing by trace id to two tail
samplers), which send to a capturing OTLP backend. Every trace the tail samplers keep arrives
whole, though each reached them in parts from two sidecars; every trace with an error is kept,
though the error was in the part only one sidecar saw."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from collector.signals import Signal
from examples.services import free_port
from tests.otlp_sink import OtlpSink
from tests.sidecar import ROOT, Sidecar

pytestmark = pytest.mark.gateway

COLLECTOR = ROOT / "bench" / "otelcol" / "bin" / "otelcol-peer"
GATEWAY = ROOT / "deploy" / "gateway"
TRACES = 60
MS = 1_000_000


@contextmanager
def collector(tmp_path: Path, name: str, config: dict[str, Any], backend: str) -> Iterator[None]:
    """The real Collector on a deploy/gateway config, its ports moved to free loopback ones."""
    config["service"]["telemetry"] = {"metrics": {"level": "none"}}  # no fixed port 8888
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OTLP_BACKEND_ENDPOINT": backend, "OTLP_BACKEND_AUTHORIZATION": "Bearer t"}
    log = (tmp_path / f"{name}.log").open("w")
    process = subprocess.Popen([str(COLLECTOR), "--config", str(path)], env=env, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    try:
        health = f"http://{config['extensions']['health_check']['endpoint']}/"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(health, timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, f"{name} never became healthy"
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def loopback(config: dict[str, Any]) -> dict[str, Any]:
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        protocol["endpoint"] = f"127.0.0.1:{free_port()}"
    config["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{free_port()}"
    return config


def sidecar_config(queue: Path) -> str:
    text = (ROOT / "deploy" / "overlays" / "gateway" / "otel-sidecar.yaml").read_text()
    text = text.replace("/var/lib/otel-sidecar", str(queue))
    text = text.replace("127.0.0.1:4317", "127.0.0.1:0").replace("127.0.0.1:4318", "127.0.0.1:0")
    return text.replace('"0.0.0.0:13133"', '"127.0.0.1:0"')


def parts(number: int) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest, bool]:
    """One request's trace in two parts: the frontend pod's (its server span and the call out)
    and the backend pod's (its server span and a query), the error, if any, only in the second."""
    trace_id, start, failed = number.to_bytes(16, "big"), time.time_ns(), number % 6 == 0
    front, back = request("frontend"), request("backend")

    def span(into: ExportTraceServiceRequest, index: int, name: str, kind: int,
             times_ms: tuple[int, int], parent: Span | None = None) -> Span:  # fmt: skip
        return into.resource_spans[0].scope_spans[0].spans.add(
            trace_id=trace_id, span_id=(number * 8 + index).to_bytes(8, "big"), name=name,
            kind=kind, parent_span_id=parent.span_id if parent else b"",
            start_time_unix_nano=start + times_ms[0] * MS,
            end_time_unix_nano=start + times_ms[1] * MS,
        )  # fmt: skip

    root = span(front, 1, "GET /checkout", Span.SPAN_KIND_SERVER, (0, 50))
    call = span(front, 2, "POST backend", Span.SPAN_KIND_CLIENT, (1, 40), root)
    served = span(back, 3, "POST /reserve", Span.SPAN_KIND_SERVER, (2, 39), call)
    span(back, 4, "SELECT stock", Span.SPAN_KIND_INTERNAL, (3, 9), served)
    if failed:
        served.status.code = Status.STATUS_CODE_ERROR
    return front, back, failed


def request(service: str) -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    resource_spans = out.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = service
    resource_spans.scope_spans.add()
    return out


def post(sidecar: Sidecar, request: ExportTraceServiceRequest) -> None:
    answer = urllib.request.urlopen(urllib.request.Request(
        sidecar.url("/v1/traces"), data=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"}), timeout=10)  # fmt: skip
    assert answer.status == 200


def test_kept_traces_arrive_whole_through_two_tiers_of_the_real_collector(tmp_path: Path) -> None:
    if not COLLECTOR.exists():
        pytest.fail("the Collector peer is not built: run `make test-gateway`")
    samplers = [loopback(yaml.safe_load((GATEWAY / "tail-sampler.yaml").read_text()))
                for _ in range(2)]  # fmt: skip
    for config in samplers:
        config["processors"]["tail_sampling"]["decision_wait"] = "2s"  # the test's patience
    tier1 = loopback(yaml.safe_load((GATEWAY / "loadbalancer.yaml").read_text()))
    tier1["exporters"]["loadbalancing"]["resolver"] = {"static": {"hostnames": [
        c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] for c in samplers]}}  # fmt: skip
    gateway_grpc = tier1["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    with OtlpSink() as backend, ExitStack() as running:
        for number, config in enumerate(samplers):
            running.enter_context(collector(tmp_path, f"sampler{number}", config, backend.endpoint))
        running.enter_context(collector(tmp_path, "tier1", tier1, backend.endpoint))
        env = {"OTEL_GATEWAY_ENDPOINT": gateway_grpc}
        pods = [Sidecar(tmp_path / f"pod{n}", sidecar_config(tmp_path / f"queue{n}"), env).start()
                for n in range(2)]  # fmt: skip
        failed = set()
        try:
            for number in range(1, TRACES + 1):
                front, back, error = parts(number)
                post(pods[0], front)
                post(pods[1], back)
                if error:
                    failed.add(number.to_bytes(16, "big"))
        finally:
            for pod in pods:
                assert pod.stop() == 0
        backend.wait_for(lambda: failed <= received(backend).keys(), timeout=60)
        time.sleep(3)  # a decision still pending would show up now
    kept = received(backend)
    assert failed <= kept.keys()  # every error kept, though only the backend pod saw it
    assert len(kept) < TRACES  # and not everything: the rest is sampled
    partial = {tid.hex(): sorted(names) for tid, names in kept.items() if len(names) != 4}
    assert partial == {}, partial  # whole: four spans from two sidecars, one decision


def received(backend: OtlpSink) -> dict[bytes, set[str]]:
    spans: dict[bytes, set[str]] = defaultdict(set)
    for batch in backend.accepted(Signal.TRACES):
        for rs in batch.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans[span.trace_id].add(span.name)
    return spans


@pytest.mark.parametrize("name", ["loadbalancer.yaml", "tail-sampler.yaml"])
def test_the_real_collector_accepts_the_deployed_configs_as_they_are(name: str) -> None:
    """The test above moves ports and swaps the DNS resolver for a static one: here the files
    as deployed, checked by the Collector itself."""
    if not COLLECTOR.exists():
        pytest.fail("the Collector peer is not built: run `make test-gateway`")
    env = {**os.environ, "OTLP_BACKEND_ENDPOINT": "https://otlp.example:4318",
           "OTLP_BACKEND_AUTHORIZATION": "Bearer x"}  # fmt: skip
    run = subprocess.run([str(COLLECTOR), "validate", "--config", str(GATEWAY / name)], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
