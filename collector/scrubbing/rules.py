"""Where the rules apply: :class:`Rules` walks a trace or log batch in place, decides once per
attribute key what to do with its value (drop it, filter it, sanitize it as SQL, walk it as
the exception chain's JSON, or scan it), and keeps the caches that make the common case cheap.
"""

from __future__ import annotations

import json
import re
from typing import Final

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector.attributes import EXCEPTION_CHAIN
from collector.sampling import SAMPLING_FIELD
from collector.scrubbing.text import (
    DENY,
    DROP_KEYS,
    FILTER_KEYS,
    FILTERED,
    HEADERS,
    KEYS,
    LABELS,
    MIN_SECRET_LEN,
    RULE_NAMES,
    SQL_LITERALS,
    scan,
    sql_literals,
)
from collector.signals import Batch, data_points, exemplars

# What to do with an attribute, decided once per key: (action, rule index).
_SCAN, _SQL, _FILTER, _DROP, _JSON = range(5)
Verdict = tuple[int, int]
_SCAN_VERDICT: Final = (_SCAN, -1)
_NESTED_KINDS: Final = frozenset({"array_value", "kvlist_value", "bytes_value"})

_CACHE_SIZE: Final = 10_000  # entries per cache; cleared when full (keys and values repeat)
_CLEAN_MAX_LEN: Final = 256  # longer clean strings are not remembered (bounds the memory)

_SECRET_HEADERS: Final = frozenset(
    {"cookie", "set-cookie", "authorization", "proxy-authorization", "x-api-key"}
)
_SQL_KEYS: Final = frozenset({"db.statement", "db.query.text"})
_JSON_KEYS: Final = frozenset({EXCEPTION_CHAIN})
_DENIED_KEY = re.compile(DENY)  # searched in lowercased keys


class Rules:
    """The compiled rules and their caches; pure apart from the caches, reusable anywhere.

    Counts are kept in a list indexed like :data:`LABELS` while a batch is scrubbed.
    """

    def __init__(
        self,
        *,
        disable: frozenset[str] = frozenset(),
        drop_keys: tuple[str, ...] = (),
        filter_keys: tuple[re.Pattern[str], ...] = (),
        filter_values: tuple[re.Pattern[str], ...] = (),
    ) -> None:
        unknown = sorted(disable.difference(RULE_NAMES))
        if unknown:
            raise ValueError(f"unknown rules {unknown} (known: {', '.join(RULE_NAMES)})")
        self._on = tuple(name not in disable for name in RULE_NAMES)
        self._drop_keys = frozenset(key.lower() for key in drop_keys)
        self._filter_keys = filter_keys
        self._filter_values = filter_values
        # Short strings and pure letters cannot hold a default secret (those need digits,
        # "=", ":", spaces...); configured patterns can match anything: no shortcut then.
        self._shortcut = not filter_values
        self._verdicts: dict[str, Verdict] = {}
        self._clean: set[str] = set()
        self._clean_sql: set[str] = set()

    # -- public ------------------------------------------------------------------------------

    def scrub_text(self, text: str, key: str | None = None) -> str:
        """``text`` scrubbed; with ``key``, as the value of that attribute (removed → filtered)."""
        counts = [0] * len(LABELS)
        action = _SCAN if key is None else self._verdict(key)[0]
        if action in (_DROP, _FILTER):
            return FILTERED if text else text
        if action == _SQL:
            return self._sql_text(text, counts)
        if action == _JSON:
            value = AnyValue(string_value=text)
            self._json_value(value, counts)
            return value.string_value
        return self._text(text, counts)

    def scrub_batch(self, batch: Batch) -> dict[str, int]:
        """Scrub an export request in place; values changed per rule label."""
        counts = [0] * len(LABELS)
        if isinstance(batch, ExportTraceServiceRequest):
            for resource_spans in batch.resource_spans:
                self._attributes(resource_spans.resource.attributes, counts)
                for scope_spans in resource_spans.scope_spans:
                    self._attributes(scope_spans.scope.attributes, counts)
                    for span in scope_spans.spans:
                        self._span(span, counts)
        elif isinstance(batch, ExportMetricsServiceRequest):
            for resource_metrics in batch.resource_metrics:
                self._attributes(resource_metrics.resource.attributes, counts)
                for scope_metrics in resource_metrics.scope_metrics:
                    self._attributes(scope_metrics.scope.attributes, counts)
                    for metric in scope_metrics.metrics:
                        self._metric(metric, counts)
        else:
            for resource_logs in batch.resource_logs:
                self._attributes(resource_logs.resource.attributes, counts)
                for scope_logs in resource_logs.scope_logs:
                    self._attributes(scope_logs.scope.attributes, counts)
                    for record in scope_logs.log_records:
                        self._record(record, counts)
        return {LABELS[index]: count for index, count in enumerate(counts) if count}

    # -- the batch walk ----------------------------------------------------------------------

    def _span(self, span: Span, counts: list[int]) -> None:
        name = span.name
        if name not in self._clean and (new := self._changed(name, counts)) is not None:
            span.name = new
        self._attributes(span.attributes, counts)
        for event in span.events:
            if (name := self._changed(event.name, counts)) is not None:
                event.name = name
            self._attributes(event.attributes, counts)
        for link in span.links:
            self._attributes(link.attributes, counts)
        message = span.status.message
        if message and (new := self._changed(message, counts)) is not None:
            span.status.message = new
        state = span.trace_state  # the sampler writes the same one on every span it keeps
        if state and state not in self._clean:
            if (new := self._trace_state(state, counts)) is not None:
                span.trace_state = new
            else:
                self._remember_clean(state)

    def _record(self, record: LogRecord, counts: list[int]) -> None:
        self._value(record.body, counts)
        self._attributes(record.attributes, counts)
        level = record.severity_text
        if level and (new := self._changed(level, counts)) is not None:
            record.severity_text = new
        if (name := self._changed(record.event_name, counts)) is not None:
            record.event_name = name

    def _metric(self, metric: Metric, counts: list[int]) -> None:
        """Names, units and descriptions come from code; what varies per request (route, user,
        URL) is in the data points' attributes and the exemplars' filtered attributes."""
        self._attributes(metric.metadata, counts)
        for point in data_points(metric):
            self._attributes(point.attributes, counts)
            for exemplar in exemplars(point):
                self._attributes(exemplar.filtered_attributes, counts)

    def _attributes(self, attributes: list[KeyValue], counts: list[int]) -> None:
        # The hot loop (upb makes every field read cost ~70 ns, so reads are kept to key,
        # value, string_value): a string under an ordinary key that was found clean before
        # costs one set lookup. Everything else goes through the methods below.
        verdict_of = self._verdicts.get
        clean = self._clean
        scan = _SCAN_VERDICT
        dropping = False
        for kv in attributes:
            key = kv.key
            verdict = verdict_of(key) or self._verdict(key)
            if verdict is scan:
                value = kv.value
                text = value.string_value
                if text:
                    if text not in clean:
                        new = self._scan(text, counts)
                        if new is not text:
                            value.string_value = new
                else:
                    kind = value.WhichOneof("value")
                    if kind in _NESTED_KINDS:
                        self._nested(value, kind, counts)
            elif verdict[0] == _SQL:
                self._sql_value(kv.value, counts)
            elif verdict[0] == _FILTER:
                self._filter(kv.value, verdict[1], counts)
            elif verdict[0] == _JSON:
                self._json_value(kv.value, counts)
            else:
                dropping = True
        if dropping:
            self._drop(attributes, counts)

    def _drop(self, attributes: list[KeyValue], counts: list[int]) -> None:
        """Remove the attributes whose keys are to go; rare, so a second pass finds them."""
        doomed = [
            (index, verdict[1])
            for index, kv in enumerate(attributes)
            if (verdict := self._verdict(kv.key))[0] == _DROP
        ]
        for index, rule in reversed(doomed):  # from the end: earlier indices stay valid
            del attributes[index]
            counts[rule] += 1

    def _value(self, value: AnyValue, counts: list[int]) -> None:
        text = value.string_value
        if text:
            new = self._text(text, counts)
            if new is not text:
                value.string_value = new
            return
        kind = value.WhichOneof("value")
        if kind in _NESTED_KINDS:
            self._nested(value, kind, counts)

    def _nested(self, value: AnyValue, kind: str, counts: list[int]) -> None:
        if kind == "array_value":
            for item in value.array_value.values:
                self._value(item, counts)
        elif kind == "kvlist_value":
            self._attributes(value.kvlist_value.values, counts)
        elif kind == "bytes_value":
            # Latin-1 maps bytes to characters one to one, so ASCII secrets are found and
            # everything else is written back byte for byte.
            raw = value.bytes_value.decode("latin-1")
            new = self._text(raw, counts)
            if new is not raw:
                value.bytes_value = new.encode("latin-1")

    def _sql_value(self, value: AnyValue, counts: list[int]) -> None:
        text = value.string_value
        if not text:
            if value.WhichOneof("value") == "array_value":  # a batch of statements
                for item in value.array_value.values:
                    self._sql_value(item, counts)
            else:
                self._value(value, counts)
            return
        new = self._sql_text(text, counts)
        if new is not text:
            value.string_value = new

    def _json_value(self, value: AnyValue, counts: list[int]) -> None:
        text = value.string_value
        try:
            data = json.loads(text) if text else None
        except (ValueError, RecursionError):
            data = None
        if data is None:  # not JSON after all (or nested past recursion): an ordinary value
            self._value(value, counts)
            return
        try:
            new = self._json(data, counts)
        except RecursionError:  # nested too deep to walk: not what the app side writes
            self._filter(value, FILTER_KEYS, counts)
            return
        if new != data:
            # Valid UTF-8 only: an escaped lone surrogate (\udcff) in the JSON must not make
            # the batch unsendable.
            encoded = json.dumps(new, ensure_ascii=False)
            value.string_value = encoded.encode("utf-8", "replace").decode("utf-8")

    def _json(self, data: object, counts: list[int]) -> object:
        """Parsed JSON scrubbed: object keys decide as attribute keys do, strings are scanned."""
        if isinstance(data, str):
            return self._text(data, counts)
        if isinstance(data, list):
            return [self._json(item, counts) for item in data]
        if not isinstance(data, dict):
            return data
        out = {}
        for key, item in data.items():
            action, rule = self._verdict(key)
            if action == _DROP:
                counts[rule] += 1
            elif action == _FILTER:
                if item not in ("", FILTERED, None):
                    counts[rule] += 1
                out[key] = FILTERED
            elif action == _SQL and isinstance(item, str):
                out[key] = self._sql_text(item, counts)
            else:
                out[key] = self._json(item, counts)
        return out

    @staticmethod
    def _filter(value: AnyValue, rule: int, counts: list[int]) -> None:
        kind = value.WhichOneof("value")
        if kind is None or (kind == "string_value" and value.string_value in ("", FILTERED)):
            return  # nothing there, or filtered already: no change, no count
        value.string_value = FILTERED  # also clears an int, array or kvlist: it is a oneof
        counts[rule] += 1

    def _trace_state(self, text: str, counts: list[int]) -> str | None:
        """Vendors' key=value pairs: a token put there by a client must not pass; the sampling
        fields of the ``ot`` entry (``th:``, ``rv:``) are kept as they are."""
        if "ot=" not in text:
            return self._changed(text, counts)
        entries = []
        for entry in text.split(","):
            key, equals, value = entry.partition("=")
            if key.strip() == "ot" and equals:
                fields = [f if SAMPLING_FIELD.fullmatch(f) else self._text(f, counts)
                          for f in value.split(";")]  # fmt: skip
                entries.append(f"{key}={';'.join(fields)}")
            else:
                entries.append(self._text(entry, counts))
        new = ",".join(entries)
        return None if new == text else new

    def _changed(self, text: str, counts: list[int]) -> str | None:
        """The scrubbed text of a plain string field, or None when it stays as it is."""
        if not text:
            return None
        new = self._text(text, counts)
        return None if new is text else new

    # -- keys --------------------------------------------------------------------------------

    def _verdict(self, key: str) -> Verdict:
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._decide(key)
            if len(key) <= _CLEAN_MAX_LEN:  # a huge key is decided, not remembered
                if len(self._verdicts) >= _CACHE_SIZE:
                    self._verdicts.clear()
                self._verdicts[key] = verdict
        return verdict

    def _decide(self, key: str) -> Verdict:
        low = key.lower()
        on = self._on
        if low in self._drop_keys:
            return (_DROP, DROP_KEYS)
        if on[HEADERS] and low.rpartition(".")[2].replace("_", "-") in _SECRET_HEADERS:
            return (_DROP, HEADERS)
        if on[KEYS] and _DENIED_KEY.search(low):
            return (_FILTER, KEYS)
        if any(pattern.search(key) for pattern in self._filter_keys):
            return (_FILTER, FILTER_KEYS)
        if on[SQL_LITERALS] and low in _SQL_KEYS:
            return (_SQL, SQL_LITERALS)
        if key in _JSON_KEYS:
            return (_JSON, -1)
        return _SCAN_VERDICT

    # -- strings -----------------------------------------------------------------------------

    def _text(self, text: str, counts: list[int]) -> str:
        """``text`` scrubbed; the very same object when nothing changed."""
        return text if text in self._clean else self._scan(text, counts)

    def _sql_text(self, text: str, counts: list[int]) -> str:
        if text in self._clean_sql:
            return text
        # The other rules still apply: credentials in a comment, a DSN in a string function.
        new = self._text(sql_literals(text, counts), counts)
        if new is text and len(text) <= _CLEAN_MAX_LEN:
            if len(self._clean_sql) >= _CACHE_SIZE:
                self._clean_sql.clear()
            self._clean_sql.add(text)
        return new

    def _scan(self, text: str, counts: list[int]) -> str:
        """:func:`~collector.scrubbing.text.scan`, remembering ``text`` as clean if no rule
        changed it."""
        if self._shortcut and (len(text) < MIN_SECRET_LEN or text.isalpha()):
            return text  # cannot hold a default secret; not worth a place in the cache
        new = scan(text, self._on, self._filter_values, counts)
        if new is text:
            self._remember_clean(text)
        return new

    def _remember_clean(self, text: str) -> None:
        if len(text) <= _CLEAN_MAX_LEN:
            if len(self._clean) >= _CACHE_SIZE:
                self._clean.clear()
            self._clean.add(text)


DEFAULT_RULES: Final = Rules()


def scrub_text(text: str, key: str | None = None) -> str:
    """``text`` with the default rules applied; with ``key``, as that attribute's value.

    For log lines and exporters: ``scrub_text(statement, key="db.statement")`` sanitizes SQL,
    ``scrub_text(value, key="user.password")`` is ``[Filtered]``.
    """
    return DEFAULT_RULES.scrub_text(text, key)


def scrub_batch(batch: Batch, rules: Rules = DEFAULT_RULES) -> dict[str, int]:
    """Scrub ``batch`` in place with ``rules``; values changed per rule label."""
    return rules.scrub_batch(batch)
