"""Consistent probability sampling from the trace id, and how kept errors are marked.

The rule is the OpenTelemetry threshold rule: R, the low 56 bits of the trace id, is the
trace's randomness; a trace is kept at rate p iff R >= (1 - p) * 2**56. Every sidecar in every
pod computes the same answer for a trace, with no coordination, and a trace kept at rate p is
kept at any higher rate.

Errors are not sampled away: the sampler moves the error spans of dropped traces into
ResourceSpans of their own, marked with the resource attribute :data:`ERRORS_ONLY`. Only
exporters that declare ``accepts_unsampled_errors`` (Sentry's error path) receive them; the
fan-out removes them for every other exporter. The same path carries, as the resource attribute
:data:`UNSAMPLED_SESSIONS` of a ResourceSpans with no spans, how many requests (SERVER spans)
of dropped traces ended well, per minute: Sentry's release health counts every request.
"""

from __future__ import annotations

import functools
import math
import re

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

RANDOMNESS_BITS = 56
SCALE = 1 << RANDOMNESS_BITS
ERRORS_ONLY = "otel_sidecar.unsampled_errors"
UNSAMPLED_SESSIONS = "otel_sidecar.unsampled_sessions"  # {"<minute, Unix s>": requests}
# On the error path, the rate the trace was dropped at (its spans carry no ot=th: they were not
# kept, and a threshold would say they were).
UNSAMPLED_RATE = "otel_sidecar.unsampled_rate"
MARKERS = frozenset({ERRORS_ONLY, UNSAMPLED_SESSIONS, UNSAMPLED_RATE})


def threshold(rate: float) -> int:
    """Smallest R kept at this rate: 0 keeps everything, 2**56 nothing.

    Rounded towards keeping (ceil) so that :func:`sample_rand` agrees at the boundary.
    """
    return SCALE - math.ceil(rate * SCALE)


def randomness(trace_id: bytes) -> int:
    return int.from_bytes(trace_id[-7:], "big")


def sample_rand(trace_id: bytes) -> float:
    """Sentry's ``sample_rand`` in [0, 1) for this trace: ``sample_rand < rate`` exactly when
    the threshold rule keeps the trace at ``rate``, for every rate.

    It is (2**56 - 1 - R) / 2**56, rounded down to a float (53 bits) so that rounding can never
    carry it across a rate; repr() of it round-trips, so Sentry reads the same number.
    """
    complement = SCALE - 1 - randomness(trace_id)
    spare_bits = max(0, complement.bit_length() - 53)
    return ((complement >> spare_bits) << spare_bits) / SCALE


def strip_markers(batch: ExportTraceServiceRequest) -> None:
    """The marks above are the sampler's alone: a client that sets them (to make its spans
    skip the other exporters, or to inflate release health) has them removed at the door."""
    for resource_spans in batch.resource_spans:
        attributes = resource_spans.resource.attributes
        if any(kv.key in MARKERS for kv in attributes):
            kept = [kv for kv in attributes if kv.key not in MARKERS]
            del attributes[:]
            attributes.extend(kept)


def unsampled_rate(resource_spans: ResourceSpans) -> float | None:
    for kv in resource_spans.resource.attributes:
        if kv.key == UNSAMPLED_RATE:
            return kv.value.double_value
    return None


def is_errors_only(resource_spans: ResourceSpans) -> bool:
    return any(kv.key == ERRORS_ONLY for kv in resource_spans.resource.attributes)


def without_errors_only(batch: ExportTraceServiceRequest) -> ExportTraceServiceRequest | None:
    """The batch as the sampled-traces exporters should see it (None if nothing is left).

    Returns the batch itself, uncopied, when it carries no unsampled errors: the usual case.
    """
    marked = [is_errors_only(rs) for rs in batch.resource_spans]
    if not any(marked):
        return batch
    if all(marked):
        return None
    kept = ExportTraceServiceRequest()
    kept.resource_spans.extend(
        rs for rs, m in zip(batch.resource_spans, marked, strict=True) if not m
    )
    return kept


# --- the decision, carried in each span's W3C tracestate ------------------------------------
# OpenTelemetry's consistent probability sampling writes the rejection threshold into the
# ``ot`` entry (``ot=th:<hex>``: T as 14 hex digits, trailing zeros dropped): kept iff R >= T.
# A span the sampler keeps says so itself, so that every exporter, whichever pipeline it came
# through, reads the rate it was kept at (Sentry's trace header needs it).


# The ``ot`` entry's threshold and randomness: hex numbers, no place for a secret (the scrubber
# leaves them alone, as its card-number rule would otherwise take 14 digits for one).
SAMPLING_FIELD = re.compile(r"(?:th|rv):[0-9a-f]{1,14}")


def threshold_hex(threshold: int) -> str:
    return format(threshold, "014x").rstrip("0") or "0"


def with_threshold(trace_state: str, threshold: int) -> str:
    """``trace_state`` with ``th`` in its ``ot`` entry set to ``threshold``, or kept when that
    one is higher (an earlier sampler that kept less decided first). The ``ot`` entry goes
    first: the list's most recently updated entry, as W3C Trace Context says."""
    ot, others = "", []
    for entry in filter(None, (e.strip() for e in trace_state.split(","))):
        if entry.startswith("ot="):
            ot = entry[3:]
        else:
            others.append(entry)
    fields = [f for f in ot.split(";") if f and not f.startswith("th:")]
    earlier = _threshold_of(ot)
    mine = threshold_hex(max(threshold, earlier if earlier is not None else 0))
    return ",".join([f"ot={';'.join([f'th:{mine}', *fields])}", *others])


def rate_of(trace_state: str) -> float:
    """The probability a span was kept at, from ``ot=th:`` in its tracestate; 1 when no
    sampler said (nothing sampled it away; the sampler at rate 1 writes nothing)."""
    # Tracestates repeat: remembered, unless one is longer than W3C allows (a client's).
    return _remembered_rate(trace_state) if len(trace_state) <= 512 else _rate(trace_state)


def _rate(trace_state: str) -> float:
    for entry in trace_state.split(","):
        entry = entry.strip()
        if entry.startswith("ot="):
            threshold = _threshold_of(entry[3:])
            if threshold is None:
                return 1.0
            # 15 significant digits: the configured rate again (0.01, not 0.010000000000000009)
            return float(f"{(SCALE - threshold) / SCALE:.15g}")
    return 1.0


_remembered_rate = functools.lru_cache(maxsize=256)(_rate)


def _threshold_of(ot: str) -> int | None:
    for field in ot.split(";"):
        if field.startswith("th:") and SAMPLING_FIELD.fullmatch(field):
            return int(field[3:].ljust(14, "0"), 16)
    return None
