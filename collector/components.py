"""The registry of component types: the one place that knows every receiver, processor and
exporter, so that config can validate them and the pipeline can build them.

A component id in the config is ``type`` or ``type/name`` (``batch``, ``batch/small``), as in
the OpenTelemetry Collector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector.health import HealthServer, HealthSettings
from collector.processors.batch import BatchProcessor, BatchSettings
from collector.processors.memory_limiter import MemoryLimiter, MemoryLimiterSettings
from collector.processors.sampler import Sampler, SamplerSettings
from collector.processors.scrubber import Scrubber, ScrubberSettings
from collector.processors.slow_spans import SlowSpans, SlowSpansSettings
from collector.receivers.otlp import OtlpReceiver, OtlpReceiverSettings
from collector.signals import Signal
from exporters.file import FileExporter, FileSettings
from exporters.otlp import OtlpHttpExporter, OtlpHttpSettings
from exporters.otlp_grpc import OtlpGrpcExporter, OtlpGrpcSettings
from exporters.sentry import SentryExporter, SentrySettings
from exporters.storage import FileStorage, FileStorageSettings

BOTH = frozenset(Signal)
TRACES = frozenset({Signal.TRACES})


@dataclass(frozen=True)
class Kind:
    settings: type
    factory: Callable[..., Any]
    signals: frozenset[Signal] = BOTH


RECEIVERS: dict[str, Kind] = {
    "otlp": Kind(OtlpReceiverSettings, OtlpReceiver),
}
PROCESSORS: dict[str, Kind] = {
    "memory_limiter": Kind(MemoryLimiterSettings, MemoryLimiter),
    "slow_spans": Kind(SlowSpansSettings, SlowSpans, TRACES),
    "sampler": Kind(SamplerSettings, Sampler, TRACES),
    "scrubber": Kind(ScrubberSettings, Scrubber),
    "batch": Kind(BatchSettings, BatchProcessor),
}
EXPORTERS: dict[str, Kind] = {
    "file": Kind(FileSettings, FileExporter),
    "otlp_http": Kind(OtlpHttpSettings, OtlpHttpExporter),
    "otlp_grpc": Kind(OtlpGrpcSettings, OtlpGrpcExporter),
    "sentry": Kind(SentrySettings, SentryExporter),
}
EXTENSIONS: dict[str, Kind] = {
    "health": Kind(HealthSettings, HealthServer),
    "file_storage": Kind(FileStorageSettings, FileStorage),
}

SECTIONS: dict[str, dict[str, Kind]] = {
    "receivers": RECEIVERS,
    "processors": PROCESSORS,
    "exporters": EXPORTERS,
    "extensions": EXTENSIONS,
}


def type_of(component_id: str) -> str:
    return component_id.partition("/")[0]
