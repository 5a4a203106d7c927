"""Cost of the per-span processors, in spans per CPU-second, on 512-span batches.

Usage: ``.venv/bin/python bench/processors.py [--batches N]``

The payload is ``bench/throughput.py``'s realistic 512-span request, built from N seeds so the
trace ids differ and sampling at 0.1 keeps about a tenth of the traces (plus the error traces,
which go on to the error path). Every step runs on freshly parsed copies (parsing is not
counted), timed with the process CPU clock:

* ``slow_spans``: duration check on every span, attributes read for slow ones only;
* ``sampler(0.1)``: the decision from the trace id, dropped spans deleted in place;
* ``scrubber``: every default rule, on every span (no sampling in front);
* ``key_metrics``: kind and duration of every span, attributes of SERVER and CLIENT ones;
* ``pipeline``: slow_spans → key_metrics → sampler(0.1) → scrubber, as the default config
  chains them;
* ``sentry mapping``: what the Sentry exporter does with spans that reach it: records,
  segment assembly, transaction and error events, envelopes serialised (no network). It runs
  on every span here; in the pipeline it sees only what sampling keeps.

The target for ``pipeline`` is 300 000 spans per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import structlog
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from throughput import SPANS_PER_REQUEST, build_request

from collector.processors.key_metrics import KeyMetrics, KeyMetricsSettings
from collector.processors.sampler import Sampler, SamplerSettings
from collector.processors.scrubber import ScrubberSettings
from collector.processors.slow_spans import SlowSpans, SlowSpansSettings
from collector.signals import Signal
from exporters.sentry import SentryExporter, SentrySettings, envelope
from exporters.sentry.records import spans_of

Step = Callable[[ExportTraceServiceRequest], object]


def steps() -> dict[str, Step]:
    slow = SlowSpans("slow_spans", SlowSpansSettings(), Signal.TRACES, None)  # type: ignore[arg-type]
    sampler = Sampler("sampler", SamplerSettings(rate=0.1), Signal.TRACES, None)  # type: ignore[arg-type]
    rules = ScrubberSettings().rules()
    key = KeyMetrics("key_metrics", KeyMetricsSettings(), Signal.TRACES, None)  # type: ignore[arg-type]

    def pipeline(batch: ExportTraceServiceRequest) -> None:
        slow.mark(batch)
        key.measure(batch)
        sampler.sample(batch)
        rules.scrub_batch(batch)

    return {
        "slow_spans": slow.mark,
        "key_metrics": key.measure,
        "sampler(0.1)": sampler.sample,
        "scrubber": rules.scrub_batch,
        "pipeline": pipeline,
        "sentry mapping": sentry_mapping(),
    }


def sentry_mapping() -> Step:
    dsn = "https://0123456789abcdef@127.0.0.1/1"
    exporter = SentryExporter("sentry", SentrySettings(dsn=dsn))

    def step(batch: ExportTraceServiceRequest) -> None:
        buffer = exporter._buffer
        for group in [*buffer.add_spans(spans_of(batch), 0.0), *buffer.flush_all()]:
            for event in exporter._events(group):
                trace = exporter._trace_header(event, 1.0)
                envelope.event_envelope(event, dsn, trace).serialize()

    return step


def spans_per_cpu_second(step: Step, payloads: list[bytes], rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        batches = [ExportTraceServiceRequest.FromString(p) for p in payloads]
        started = time.process_time()
        for batch in batches:
            step(batch)
        elapsed = time.process_time() - started
        best = max(best, len(batches) * SPANS_PER_REQUEST / elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100, help="512-span batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # Slow spans are logged as the sidecar does; the log lines go nowhere here.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    payloads = [build_request(seed).SerializeToString() for seed in range(args.batches)]
    results = {
        name: spans_per_cpu_second(step, payloads, args.rounds) for name, step in steps().items()
    }
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.batches} batches of {SPANS_PER_REQUEST} spans, best of {args.rounds} rounds")
    for name, rate in results.items():
        print(f"{name:>15}  {rate:>12,.0f} spans/CPU-s  {1e6 / rate:6.2f} µs/span")
    target = results["pipeline"] / 300_000
    print(f"pipeline vs the 300 000 spans/CPU-s target: {target:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
