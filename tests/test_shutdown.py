"""SIGTERM, SIGINT, SIGHUP: stop accepting, flush what was accepted, exit 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.sidecar import BASIC_CONFIG, Sidecar, spans_in
from tests.test_receivers import grpc_export, post, trace_request

# Batches would only leave on a 60 s timer or at 100 000 spans: only shutdown can flush them.
HOLDING_CONFIG = BASIC_CONFIG.replace(
    "timeout: 50ms, send_batch_size: 512", "timeout: 60s, send_batch_size: 100000"
)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_accepted_spans_are_flushed_on_signal(tmp_path: Path, sig: int) -> None:
    with Sidecar(tmp_path, HOLDING_CONFIG) as sidecar:
        sent = []
        for index in range(10):
            request = trace_request(spans=5, name=f"batch {index}")
            via_grpc = index % 2 == 0
            if via_grpc:
                assert isinstance(grpc_export(sidecar, request.SerializeToString()), bytes)
            else:
                assert post(sidecar, "/v1/traces", request.SerializeToString())[0] == 200
            sent += [s.span_id.hex() for s in request.resource_spans[0].scope_spans[0].spans]
        assert sidecar.lines() == []  # still held by the batch processor
        assert sidecar.stop(sig) == 0
    assert sorted(span["spanId"] for _, span in spans_in(sidecar.lines())) == sorted(sent)
    assert [e["event"] for e in sidecar.events][-2:] == ["sidecar_stopping", "sidecar_stopped"]


def test_port_in_use_fails_the_start(tmp_path: Path) -> None:
    """A second sidecar on a taken port exits 1 saying so (no silent port sharing)."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with Sidecar(tmp_path / "first", BASIC_CONFIG) as first:
        taken = first.endpoints["otlp_grpc"]
        config = BASIC_CONFIG.replace(
            'grpc: {endpoint: "127.0.0.1:0"', f'grpc: {{endpoint: "{taken}"'
        )
        second = Sidecar(tmp_path / "second", config)
        with pytest.raises(RuntimeError):
            second.start()
        assert second.process is not None and second.process.wait(15) == 1
        assert any("cannot listen on" in e.get("error", "") for e in second.named("start_failed"))
