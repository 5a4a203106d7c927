"""``grpc.health.v1`` on the OTLP gRPC port, asked with the official grpcio-health-checking
client: SERVING while the pipelines run (the whole server and each OTLP service it serves),
NOT_SERVING once shutdown begins."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.sidecar import BASIC_CONFIG, Sidecar

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TRACES = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS = "opentelemetry.proto.collector.metrics.v1.MetricsService"


def check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_serving_while_running_then_not_serving_from_shutdown_on(tmp_path: Path) -> None:
    with Sidecar(tmp_path, BASIC_CONFIG) as sidecar:
        channel = grpc.insecure_channel(sidecar.endpoints["otlp_grpc"])
        assert check(channel, "") == SERVING
        assert check(channel, TRACES) == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            check(channel, METRICS)  # no metrics pipeline: not a service it serves
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        seen: list[int] = []
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)

        def follow() -> None:
            try:
                for answer in watch:
                    seen.append(answer.status)
            except grpc.RpcError:
                pass  # the server went away

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        while not seen:
            follower.join(0.05)
        assert sidecar.stop(signal.SIGTERM) == 0
        follower.join(10)
        channel.close()
    assert seen[0] == SERVING and NOT_SERVING in seen
