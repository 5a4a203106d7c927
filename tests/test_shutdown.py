"""SIGTERM and SIGINT: stop accepting, flush what was accepted, exit 0. SIGHUP: read the config
again; a valid one replaces the running pipelines (what they held is flushed first), a bad one
is reported and the running config kept."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar import BASIC_CONFIG, Sidecar, spans_in
from tests.test_receivers import grpc_export, post, trace_request

# Batches would only leave on a 60 s timer or at 100 000 spans: only shutdown can flush them.
HOLDING_CONFIG = BASIC_CONFIG.replace(
    "timeout: 50ms, send_batch_size: 512", "timeout: 60s, send_batch_size: 100000"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
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
        (failed,) = second.named("start_failed")
        assert failed["error"] == f"otlp_grpc: cannot listen on {taken}: Address already in use"


def test_a_host_that_does_not_resolve_is_said_so() -> None:
    from collector.receivers.otlp_grpc import _why_not_listening
    from collector.settings import Endpoint

    why = _why_not_listening(Endpoint("no-such-host.invalid:4999"))
    assert why and not why.startswith("Unknown error"), why


def test_sighup_reloads_a_valid_config_and_keeps_the_old_on_a_bad_one(tmp_path: Path) -> None:
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    with Sidecar(tmp_path, HOLDING_CONFIG.replace("${OUT}", str(first_out))) as sidecar:
        assert post(sidecar, "/v1/traces", trace_request(spans=2).SerializeToString())[0] == 200
        sidecar.config_path.write_text(BASIC_CONFIG.replace("${OUT}", str(second_out)))
        _hangup(sidecar, "config_reloaded")
        assert len(spans_in(_read(first_out))) == 2  # flushed by the old pipelines first
        assert post(sidecar, "/v1/traces", trace_request(spans=3).SerializeToString())[0] == 200
        sidecar.config_path.write_text("receivers: [not, a, mapping")
        _hangup(sidecar, "config_reload_failed")
        sidecar.config_path.write_bytes(b"# caf\xe9\n")  # not UTF-8: a crash once
        _hangup(sidecar, "config_reload_failed")
        assert post(sidecar, "/v1/traces", trace_request(spans=1).SerializeToString())[0] == 200
        assert sidecar.stop() == 0
    assert len(spans_in(_read(second_out))) == 4  # the new config's output, still running
    bad_yaml, not_text = sidecar.named("config_reload_failed")
    assert "not valid YAML" in bad_yaml["error"]
    assert "not UTF-8 text" in not_text["error"]


def test_after_a_reload_that_cannot_start_sigterm_still_drains(tmp_path: Path) -> None:
    """The new config's port is taken: the old config runs again, and is what SIGTERM drains."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Sidecar(tmp_path, HOLDING_CONFIG) as sidecar:
            sidecar.config_path.write_text(
                HOLDING_CONFIG.replace("${OUT}", str(sidecar.output)).replace(
                    'http: {endpoint: "127.0.0.1:0"', f'http: {{endpoint: "127.0.0.1:{port}"'
                )
            )
            _hangup(sidecar, "config_reload_failed")
            sidecar.endpoints = sidecar.named("sidecar_started")[-1]["endpoints"]
            assert post(sidecar, "/v1/traces", trace_request(spans=2).SerializeToString())[0] == 200
            assert sidecar.stop() == 0
    assert len(spans_in(_read(sidecar.output))) == 2


def _hangup(sidecar: Sidecar, event: str) -> None:
    before = len(sidecar.named(event))
    assert sidecar.process is not None
    sidecar.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while len(sidecar.named(event)) == before:
        assert time.monotonic() < deadline, f"no {event}: {sidecar.events[-5:]}"
        time.sleep(0.05)
    time.sleep(0.2)  # sidecar_started follows with the new endpoints


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_grace_period_bounds_shutdown_with_sentry_stalled(tmp_path: Path) -> None:
    """A Sentry that takes connections and never answers, 5,000 transactions waiting: SIGTERM
    ends the process anyway (the sends are cut at the grace period, and counted)."""
    import socket
    import threading

    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: stalled.accept()[0], None)),
                     daemon=True).start()  # fmt: skip
    port = stalled.getsockname()[1]
    config = f"""
receivers: {{otlp: {{protocols: {{http: {{endpoint: "127.0.0.1:0"}}}}}}}}
processors: {{batch: {{timeout: 50ms}}}}
exporters:
  sentry: {{dsn: "http://0123456789abcdef0123456789abcdef@127.0.0.1:{port}/1",
            transaction_wait: 30s}}
service:
  grace_period: 2s
  pipelines: {{traces: {{receivers: [otlp], processors: [batch], exporters: [sentry]}}}}
"""
    try:
        with Sidecar(tmp_path, config) as sidecar:
            for _ in range(200):
                post(sidecar, "/v1/traces", trace_request(spans=25).SerializeToString())
            # Not a timing assertion: a hang would be the process outliving a generous bound.
            assert sidecar.stop(timeout=60) == 0
    finally:
        stalled.close()
        for connection in held:
            connection.close()
    assert [e["component"] for e in sidecar.named("shutdown_timeout")] == ["sentry"]
