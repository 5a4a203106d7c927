"""The ``otel_sidecar`` sampler: every request is recorded, start-up noise is not.

The sidecar samples (consistently, by trace id), so the app records everything it traces but
one kind of span: a database query or outgoing HTTP call with no parent, made outside any
request, such as start-up migrations or ``create_all``. sentry-sdk records those only inside a
transaction; without this, each would become a transaction of its own. Spans with a parent
follow the parent's decision, as ``parentbased_always_on`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes


class _SkipOrphanClients(Sampler):
    """For spans without a parent: drop client spans, record the rest."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP, None, _trace_state(parent_context))
        return ALWAYS_ON.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "SkipOrphanClients"


def _trace_state(parent_context: Context | None) -> TraceState | None:
    return get_current_span(parent_context).get_span_context().trace_state


class RequestRootsSampler(ParentBased):
    """``OTEL_TRACES_SAMPLER=otel_sidecar`` (the default with this distribution)."""

    def __init__(self, _arg: object = None) -> None:  # the SDK passes OTEL_TRACES_SAMPLER_ARG
        super().__init__(root=_SkipOrphanClients())
