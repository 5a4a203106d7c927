"""Consistent sampling: the decision is the trace id's alone, whole traces, errors kept aside."""

from __future__ import annotations

import asyncio
import math
import os
import random
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from collector import sampling
from collector.pipeline import FanOut
from collector.processors.sampler import Sampler, SamplerSettings
from collector.signals import Batch, Signal, item_count
from collector.telemetry import REGISTRY
from tests.sidecar import BASIC_CONFIG, Sidecar, spans_in
from tests.test_receivers import grpc_export


class Recorder:
    def __init__(self, accepts_unsampled_errors: bool = False) -> None:
        self.name = "recorder"
        self.accepts_unsampled_errors = accepts_unsampled_errors
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


def traces(trace_ids: list[bytes], spans_per_trace: int = 1) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "svc"
    scope = resource_spans.scope_spans.add()
    for trace_id in trace_ids:
        for index in range(spans_per_trace):
            scope.spans.add(trace_id=trace_id, span_id=os.urandom(8), name=f"span {index}")
    return request


def kept_trace_ids(batch: ExportTraceServiceRequest) -> set[bytes]:
    return {
        span.trace_id
        for rs in batch.resource_spans
        if not sampling.is_errors_only(rs)
        for ss in rs.scope_spans
        for span in ss.spans
    }


def sample(rate: float, batch: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    Sampler("sampler", SamplerSettings(rate=rate), Signal.TRACES, Recorder()).sample(batch)
    return batch


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_kept_fraction_is_the_rate(rate: float) -> None:
    """Over 100 000 random trace ids the kept fraction is within 4 standard deviations."""
    n = 100_000
    rng = random.Random(rate)
    batch = sample(rate, traces([rng.randbytes(16) for _ in range(n)]))
    kept = item_count(batch)
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(kept - n * rate) <= 4 * sigma


def test_rate_zero_keeps_nothing_and_one_keeps_everything() -> None:
    ids = [os.urandom(16) for _ in range(2000)]
    assert item_count(sample(0.0, traces(ids))) == 0
    assert kept_trace_ids(sample(1.0, traces(ids))) == set(ids)


def test_whole_traces_are_kept_or_dropped() -> None:
    ids = [os.urandom(16) for _ in range(500)]
    batch = sample(0.5, traces(ids, spans_per_trace=4))
    counts: dict[bytes, int] = {}
    for span in batch.resource_spans[0].scope_spans[0].spans:
        counts[span.trace_id] = counts.get(span.trace_id, 0) + 1
    assert set(counts.values()) == {4}
    assert 150 < len(counts) < 350


def test_decision_matches_the_threshold_rule_and_sample_rand() -> None:
    """Kept iff R >= (1 - rate) * 2**56, and Sentry's sampled == (sample_rand < rate)."""
    ids = [os.urandom(16) for _ in range(5000)]
    for rate in (0.05, 0.3, 0.77):
        kept = kept_trace_ids(sample(rate, traces(ids)))
        for trace_id in ids:
            by_rule = int.from_bytes(trace_id[9:], "big") >= (1 - rate) * 2**56
            assert (trace_id in kept) == by_rule == (sampling.sample_rand(trace_id) < rate)


def test_sample_rand_agrees_at_the_threshold() -> None:
    """Around the exact threshold, sample_rand never disagrees with the rule."""
    for rate in [0.1, 0.5, 0.123456, 1 / 3, *(random.Random(1).random() for _ in range(300))]:
        threshold = sampling.threshold(rate)
        for r in range(threshold - 2, threshold + 3):
            trace_id = bytes(9) + r.to_bytes(7, "big")
            assert (r >= threshold) == (sampling.sample_rand(trace_id) < rate)


def test_exception_in_dropped_trace_reaches_the_error_path_only() -> None:
    """A dropped trace's spans with an exception go to error-path exporters, marked, and
    nowhere else; its whole trace within the batch travels with it for context."""
    rate = 0.1
    dropped_id = next(
        t
        for t in iter(lambda: os.urandom(16), None)
        if sampling.randomness(t) < sampling.threshold(rate)
    )
    kept_id = next(
        t
        for t in iter(lambda: os.urandom(16), None)
        if sampling.randomness(t) >= sampling.threshold(rate)
    )
    batch = traces([dropped_id, kept_id, os.urandom(16)], spans_per_trace=2)
    spans = batch.resource_spans[0].scope_spans[0].spans
    failing = spans[0]
    failing.events.add(name="exception").attributes.add(
        key="exception.type"
    ).value.string_value = "ValueError"

    sentry, otlp = Recorder(accepts_unsampled_errors=True), Recorder()
    sampler = Sampler("sampler", SamplerSettings(rate=rate), Signal.TRACES, FanOut([sentry, otlp]))
    asyncio.run(sampler.consume(batch))

    (to_sentry,), (to_otlp,) = sentry.batches, otlp.batches
    marked = [rs for rs in to_sentry.resource_spans if sampling.is_errors_only(rs)]
    assert len(marked) == 1
    error_spans = list(marked[0].scope_spans[0].spans)
    assert {s.trace_id for s in error_spans} == {dropped_id}
    assert len(error_spans) == 2  # the failing span and its sibling in the trace
    assert error_spans[0].events[0].attributes[0].value.string_value == "ValueError"
    assert any(kv.key == "service.name" for kv in marked[0].resource.attributes)
    assert dropped_id not in {
        s.trace_id for rs in to_otlp.resource_spans for ss in rs.scope_spans for s in ss.spans
    }
    assert kept_id in kept_trace_ids(to_otlp)
    assert not any(sampling.is_errors_only(rs) for rs in to_otlp.resource_spans)


def test_error_status_counts_as_an_error() -> None:
    dropped_id = next(
        t
        for t in iter(lambda: os.urandom(16), None)
        if sampling.randomness(t) < sampling.threshold(0.5)
    )
    batch = traces([dropped_id])
    batch.resource_spans[0].scope_spans[0].spans[0].status.code = Status.STATUS_CODE_ERROR
    sample(0.5, batch)
    assert [sampling.is_errors_only(rs) for rs in batch.resource_spans] == [True]


SAMPLING_CONFIG = BASIC_CONFIG.replace(
    "processors:\n", "processors:\n  sampler: {rate: 0.3}\n"
).replace(
    "processors: [batch], exporters: [file]}\n    logs",
    "processors: [sampler, batch], exporters: [file]}\n    logs",
)


def test_three_sidecars_make_identical_decisions(tmp_path: Path) -> None:
    """Sidecar processes that never talk to each other keep exactly the same traces."""
    ids = [os.urandom(16) for _ in range(300)]
    payload = traces(ids, spans_per_trace=3).SerializeToString()
    decisions = []
    for index in range(3):
        (tmp_path / str(index)).mkdir()
        with Sidecar(tmp_path / str(index), SAMPLING_CONFIG) as sidecar:
            assert isinstance(grpc_export(sidecar, payload), bytes)
            assert sidecar.stop() == 0
        kept = [span["traceId"] for _, span in spans_in(sidecar.lines())]
        decisions.append(set(kept))
        assert len(kept) == 3 * len(set(kept))  # whole traces
    assert decisions[0] == decisions[1] == decisions[2]
    assert 40 < len(decisions[0]) < 140


def test_passed_on_spans_carry_the_threshold_in_their_tracestate() -> None:
    """OpenTelemetry's consistent probability sampling: ``ot=th:<hex>``, the rejection
    threshold, so an exporter reads the rate each span was kept at."""
    ids = [os.urandom(16) for _ in range(400)]
    batch = sample(0.1, traces(ids))
    states = {
        s.trace_state for rs in batch.resource_spans for ss in rs.scope_spans for s in ss.spans
    }
    assert states == {"ot=th:e6666666666666"}
    assert sampling.rate_of("ot=th:e6666666666666") == pytest.approx(0.1)
    assert sampling.rate_of("") == sampling.rate_of("vendor=x") == 1.0


def test_rate_one_writes_nothing() -> None:
    batch = sample(1.0, traces([os.urandom(16) for _ in range(10)]))
    assert all(s.trace_state == "" for s in batch.resource_spans[0].scope_spans[0].spans)


def test_the_threshold_joins_what_the_tracestate_had() -> None:
    kept = sampling.threshold(0.5)
    # other entries stay, the ot entry goes first with its other fields
    assert sampling.with_threshold("vendor=x,ot=rv:00112233445566", kept) == (
        "ot=th:8;rv:00112233445566,vendor=x"
    )
    # an earlier sampler that kept less decided first: its threshold stays
    assert sampling.with_threshold("ot=th:e6666666666666", kept) == "ot=th:e6666666666666"
    assert sampling.with_threshold("ot=th:4", kept) == "ot=th:8"


def test_error_spans_of_dropped_traces_carry_the_rate_on_their_resource() -> None:
    """Not a threshold on the spans (they were not kept): the error path's resource says the
    rate, and Sentry's trace header says ``sampled: false`` from it."""
    dropped = next(t for t in iter(lambda: os.urandom(16), None) if not _kept(t, 0.1))
    batch = traces([dropped])
    batch.resource_spans[0].scope_spans[0].spans[0].status.code = Status.STATUS_CODE_ERROR
    sample(0.1, batch)
    (errors,) = [rs for rs in batch.resource_spans if sampling.is_errors_only(rs)]
    assert errors.scope_spans[0].spans[0].trace_state == ""
    assert sampling.unsampled_rate(errors) == 0.1


def _kept(trace_id: bytes, rate: float) -> bool:
    return sampling.randomness(trace_id) >= sampling.threshold(rate)


def trace_id_with_randomness(value: int) -> bytes:
    return os.urandom(9) + value.to_bytes(7, "big")


def test_a_trace_whose_randomness_is_the_threshold_is_kept() -> None:
    threshold = sampling.threshold(0.25)
    on, below = trace_id_with_randomness(threshold), trace_id_with_randomness(threshold - 1)
    assert kept_trace_ids(sample(0.25, traces([on, below]))) == {on}


def test_kept_and_dropped_spans_are_counted_across_scopes() -> None:
    """One scope all kept, then a mixed one: every span of both is counted once."""
    keep, drop = trace_id_with_randomness(1 << 55), trace_id_with_randomness(0)
    batch = traces([keep], spans_per_trace=3)
    second = batch.resource_spans[0].scope_spans.add()
    for trace_id in (keep, drop, drop):
        second.spans.add(trace_id=trace_id, span_id=os.urandom(8), name="second scope")
    sampler = Sampler("sampler/counted", SamplerSettings(rate=0.5), Signal.TRACES, Recorder())
    assert sampler.sample(batch) == (4, 2)
    assert [len(ss.spans) for ss in batch.resource_spans[0].scope_spans] == [3, 1]
    everything = Sampler("s", SamplerSettings(rate=1.0), Signal.TRACES, Recorder())
    assert everything.sample(traces([drop, keep])) == (2, 0)


def test_the_counts_reach_the_metrics() -> None:
    def counted(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    kept_labels = {"processor": "sampler/metrics"}
    dropped_labels = {"component": "sampler/metrics", "signal": "traces", "reason": "sampled_out"}
    before = (counted("otelsidecar_sampler_kept_spans_total", kept_labels),
              counted("otelsidecar_dropped_items_total", dropped_labels))  # fmt: skip
    recorder = Recorder()
    sampler = Sampler("sampler/metrics", SamplerSettings(rate=0.5), Signal.TRACES, recorder)
    keep, drop = trace_id_with_randomness(1 << 55), trace_id_with_randomness(0)
    asyncio.run(sampler.consume(traces([keep, drop, drop])))
    after = (counted("otelsidecar_sampler_kept_spans_total", kept_labels),
             counted("otelsidecar_dropped_items_total", dropped_labels))  # fmt: skip
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)
    asyncio.run(sampler.consume(traces([drop])))  # nothing left: nothing handed on
    assert len(recorder.batches) == 1


def test_a_kept_span_s_tracestate_keeps_its_vendors_entries() -> None:
    keep = trace_id_with_randomness(1 << 55)
    batch = traces([keep])
    batch.resource_spans[0].scope_spans[0].spans[0].trace_state = "vendor=x"
    sample(0.5, batch)
    assert batch.resource_spans[0].scope_spans[0].spans[0].trace_state == "ot=th:8,vendor=x"


def test_every_failed_trace_of_a_batch_is_found() -> None:
    """A trace failed by its status, then one failed by an exception event: both reach the
    error path."""
    first, second = trace_id_with_randomness(0), trace_id_with_randomness(1)
    batch = traces([first, second])
    spans = batch.resource_spans[0].scope_spans[0].spans
    spans[0].status.code = Status.STATUS_CODE_ERROR
    spans[1].events.add(name="exception")
    sample(0.5, batch)
    (errors,) = [rs for rs in batch.resource_spans if sampling.is_errors_only(rs)]
    assert {s.trace_id for s in errors.scope_spans[0].spans} == {first, second}


def test_dropped_healthy_requests_are_counted_per_minute_for_release_health() -> None:
    """What the sampler drops still counts for Sentry's sessions: the healthy SERVER spans
    per minute, on a resource of their own; a failed trace's request is not among them (its
    spans go on, on the error path), nor is a CLIENT span."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from collector.attributes import plain

    minute = 1_700_000_040  # a minute's first second
    healthy = [trace_id_with_randomness(n) for n in range(3)]
    failed = trace_id_with_randomness(7)
    batch = traces([*healthy, failed])
    batch.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    batch.resource_spans[0].scope_spans[0].scope.name = "app.http"
    batch.resource_spans[0].scope_spans[0].schema_url = "https://example/scope-schema"
    spans = batch.resource_spans[0].scope_spans[0].spans
    for span, second in zip(spans, (minute, minute + 59, minute + 60, minute), strict=True):
        span.kind = Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = second * 1_000_000_000
    spans[3].status.code = Status.STATUS_CODE_ERROR
    spans.add(trace_id=healthy[0], span_id=os.urandom(8), kind=Span.SPAN_KIND_CLIENT,
              start_time_unix_nano=minute * 1_000_000_000)  # fmt: skip
    sample(0.5, batch)
    marked = [rs for rs in batch.resource_spans if sampling.is_errors_only(rs)]
    (sessions,) = [rs for rs in marked if not rs.scope_spans]
    attributes = {kv.key: plain(kv.value) for kv in sessions.resource.attributes}
    assert attributes[sampling.UNSAMPLED_SESSIONS] == {str(minute): 2, str(minute + 60): 1}
    assert attributes["service.name"] == "svc"
    assert sessions.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    (errors,) = [rs for rs in marked if rs.scope_spans]
    assert errors.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    assert errors.scope_spans[0].scope.name == "app.http"
    assert errors.scope_spans[0].schema_url == "https://example/scope-schema"
    assert [s.trace_id for s in errors.scope_spans[0].spans] == [failed]
