"""The ``scrubber`` processor: nothing leaves the sidecar with a secret or personal value in it.

Every string the app sent is checked: span and event names, span, event, link, resource and
scope attributes, status messages, log bodies, log attributes and event names, recursing into
array and kvlist values (bytes values too, read as Latin-1 so that other bytes stay as they
are). The default rules, each with the name used in ``disable`` and as the
``rule`` label of ``otelsidecar_scrubbed_values``:

``headers``
    Attributes named after a credential-carrying HTTP header (cookie, set-cookie,
    authorization, proxy-authorization, x-api-key; the last dot-separated part of the key,
    ``_`` read as ``-``), such as ``http.request.header.cookie``, are removed outright: the
    whole value is the secret and an attribute saying "there was a cookie" is no use. In
    text, a ``Cookie: ...`` line (or ``"cookie": "..."``) keeps its name, loses its value.
``keys``
    Sentry Relay's default denylist (password, passwd, secret, api_key, apikey, auth,
    credentials, mysql_pwd, privatekey, private_key, token, session, csrf) matched as a
    case-insensitive substring of the key: the whole value becomes ``[Filtered]``, whatever
    its type. Nested kvlist keys count as keys, and so do ``key=value`` pairs inside strings
    (query strings, command lines, log lines) and ``"key": value`` pairs in JSON-ish text.
``bearer``
    ``Bearer <token>`` anywhere, and ``Basic <base64>`` when the base64 decodes to
    ``user:password`` (so "Basic usage" stays): the credential becomes ``[Filtered]``.
``credit_card``
    13 to 19 digits, whole or in groups (of three or more, but for the last) split by single
    spaces or dashes, starting with 2 to 6 (the card networks' ranges) and passing the Luhn
    check. The Luhn check and the network digit keep order ids and epoch timestamps intact.
``pem_key``
    PEM private key blocks, from ``-----BEGIN ... PRIVATE KEY-----`` to the matching END line
    (or to the end of the text when the block was cut short).
``url_credentials``
    ``scheme://user:password@host`` becomes ``scheme://[Filtered]@host``; the user part goes
    too, because it is often the token itself (``https://<token>@github.com``).
``sql_literals``
    In ``db.statement`` and ``db.query.text`` only, string literals (``'...'`` with ``''`` and
    ``\\'`` escapes) and numeric literals become ``?``, as the OpenTelemetry Collector's
    database sanitizer does; identifiers (``table1``, ``"Users"``) and keywords stay, so
    Sentry can still group queries by statement. A double-quoted text that is not shaped
    like a name (``"a@b.c"``) is taken for a MySQL string literal and becomes ``?`` too.

The exception chain the zero-code side attaches (``otel_sidecar.exception.chain``, JSON with
frames' source lines and local variables) is scrubbed as the structure it is: its object keys
count as keys (a variable named ``password`` is filtered) and every string in it is scanned;
it is written back as valid JSON.

Configured rules add to these: ``drop_keys`` (keys removed outright), ``filter_keys``
(regexes on keys, value filtered) and ``filter_values`` (regexes on string values, each match
filtered). Integers, doubles and booleans only change when their key is denylisted.

This runs on every span kept, so the common case is made cheap: verdicts on keys are cached
(keys repeat across spans), strings already found clean are remembered (method, route, user
agent repeat too), and each rule is guarded by plain substring tests (``"=" in text``,
``"bearer" in lowered``...), necessary conditions of its pattern that run in C at a tenth of
the cost of one regex search; regexes only run on strings that might hold a secret. The
protobuf is written only where a value actually changes, and attributes are deleted only
when one is to go. Reading the protobuf itself (upb: ~70 ns a field) is most of what is left.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector.attributes import EXCEPTION_CHAIN
from collector.component import Consumer, Kind
from collector.sampling import SAMPLING_FIELD
from collector.settings import ConfigError, setting
from collector.signals import Batch, Signal
from collector.telemetry import SCRUBBED

__all__ = [
    "DEFAULT_RULES",
    "FILTERED",
    "RULE_NAMES",
    "Rules",
    "Scrubber",
    "ScrubberSettings",
    "scrub_batch",
    "scrub_text",
]

FILTERED: Final = "[Filtered]"

# Default rules, in the order of their indices below; the names are the public contract.
RULE_NAMES: Final = (
    "headers",
    "keys",
    "bearer",
    "credit_card",
    "pem_key",
    "url_credentials",
    "sql_literals",
)
# Metric labels: the default rules, then the configured ones.
LABELS: Final = (*RULE_NAMES, "drop_keys", "filter_keys", "filter_values")
HEADERS, KEYS, BEARER, CREDIT_CARD, PEM_KEY, URL_CREDENTIALS, SQL_LITERALS = range(7)
DROP_KEYS, FILTER_KEYS, FILTER_VALUES = range(7, 10)

# What to do with an attribute, decided once per key: (action, rule index).
_SCAN, _SQL, _FILTER, _DROP, _JSON = range(5)
Verdict = tuple[int, int]
Replacement = str | Callable[[re.Match[str]], str]
_SCAN_VERDICT: Final = (_SCAN, -1)
_NESTED_KINDS: Final = frozenset({"array_value", "kvlist_value", "bytes_value"})

_CACHE_SIZE: Final = 10_000  # entries per cache; cleared when full (keys and values repeat)
_CLEAN_MAX_LEN: Final = 256  # longer clean strings are not remembered (bounds the memory)
_MIN_SECRET_LEN: Final = 6  # "auth=x" is the shortest text a default rule changes

_SECRET_HEADERS: Final = frozenset(
    {"cookie", "set-cookie", "authorization", "proxy-authorization", "x-api-key"}
)
_SQL_KEYS: Final = frozenset({"db.statement", "db.query.text"})
_JSON_KEYS: Final = frozenset({EXCEPTION_CHAIN})

# Relay's denylist; separators inside api_key and friends may be -, _, . or nothing.
_DENY: Final = (
    r"passw(?:or)?d|secret|api[-_.]?key|auth|credentials?|mysql[-_.]?pwd"
    r"|private[-_.]?key|token|session|csrf"
)
_DENIED_KEY = re.compile(_DENY)  # searched in lowercased keys
# Substrings one of which every match of _DENY and of _HEADER_LINE contains (the header
# names other than cookie contain "auth" or "key"); testing them costs far less than a search.
_KEY_HINTS: Final = (
    "cookie",
    "passw",
    "secret",
    "key",
    "auth",
    "credential",
    "pwd",
    "token",
    "session",
    "csrf",
)

# A value in text: already filtered, quoted (a truncated quote runs to the end of the line) or
# a bare word that ends where query strings, JSON and log lines end values.
_TEXT_VALUE: Final = (
    r"""\[Filtered\]|"(?:[^"\\\n]|\\.)*(?:"|$)|'(?:[^'\\\n]|\\.)*(?:'|$)|[^\s&#;,"'<>{}\[\]]+"""
)
# key=value anywhere, or "key": value when the key is quoted (JSON, Python reprs). An unquoted
# key with ":" is not taken: "token.example.com:8080" is a host, not a secret.
_KEY_VALUE = re.compile(
    rf"""(?<![\w.\-])(?P<q>["'])?(?P<key>[\w.\-]*?(?:{_DENY})[\w.\-]{{0,64}})"""
    rf"""(?(q)(?P=q)[ \t]*[:=]|[ \t]*=)[ \t]*(?P<val>{_TEXT_VALUE})""",
    re.IGNORECASE | re.MULTILINE,
)
# A header line such as "Cookie: a=b; c=d": the value runs to the end of the line.
_HEADER_LINE = re.compile(
    r"""(?<![\w\-])(?P<q>["'])?(?P<key>(?:set-|proxy-)?(?:cookie|authorization)"""
    r"""|x[-_]api[-_]key)(?(q)(?P=q))[ \t]*[:=][ \t]*"""
    r"""(?P<val>\[Filtered\]|"(?:[^"\\\n]|\\.)*(?:"|$)|'(?:[^'\\\n]|\\.)*(?:'|$)|[^\r\n]+)""",
    re.IGNORECASE | re.MULTILINE,
)
# A pair in a Python repr or an argument list: ('api_key', 'v'), (b'cookie', b'v'),
# ["--password", "v"] (the ASGI scope's headers, in every frame's variables, are such pairs).
_PAIR = re.compile(
    rf"""(?P<head>[(\[][ \t]*b?(?P<q>["'])-{{0,2}}[\w.\-]*?(?:{_DENY}|cookie)[\w.\-]{{0,64}}"""
    rf"""(?P=q)[ \t]*,[ \t]*b?(?P<vq>["']))(?P<val>(?:(?!(?P=vq))[^\\\n]|\\.)*)(?P=vq)""",
    re.IGNORECASE,
)
# Placeholders are not secrets: "password = ?" in a sanitized statement stays as it is.
_SAFE_VALUE = re.compile(r"""(["']?)(?:\?|%s|%\(\w+\)s|\$\d+|\[Filtered\])\1""")

_CREDENTIAL = re.compile(
    r"""(?P<scheme>bearer|basic)(?P<space>[ \t]+)(?!\[Filtered\]|bearer[ \t]|basic[ \t])"""
    r"""(?P<cred>[^\s"'`,;<>()\[\]{}]+)""",
    re.IGNORECASE,
)
# Groups of three digits or more (the last may be shorter: 4111 1111 1111 1), so that dates
# (2024-01-15) do not chain into runs; a run is a card candidate once it holds 13 digits.
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]{3,}(?:[ -][0-9]{3,})*(?:[ -][0-9]{1,2})?(?![0-9])")
_RUN_PARTS = re.compile(r"([ -])")
_DIGITS: Final = b"0123456789"
_CARD_NETWORKS: Final = "23456"
_LUHN_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)

_PEM_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----"
    r".*?(?:-----END[A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----|\Z)",
    re.DOTALL,
)
# The userinfo of a URL, up to the last "@" of the authority (passwords do contain "@").
# Lengths are bounded here and in _KEY_VALUE so that no input makes a search quadratic.
_URL_USERINFO = re.compile(r"""://(?!\[Filtered\]@)[^\s/?#"<>\\]{1,512}@""")

# Every alternative starts with a literal character, so `re` computes the set of first
# characters and skips the rest of the statement in C: three times faster than one
# alternative starting with a lookbehind or a class. A number is one alternative per first
# digit; the lookbehind after it checks the character before (not part of a name, of a
# 1.5-style number already taken, or of a $1 / :1 placeholder).
_SQL_NUMBER_TAIL: Final = (
    r"(?<![\w$:.@].)(?:(?<=0)x[0-9a-f]+|[0-9]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)(?![\w$])"
)
_SQL_LITERALS: Final = (
    r"'(?:[^'\\]|\\.|'')*(?:'|\Z)",  # a string literal; unterminated: to the end
    r"\.(?<![\w$:.@]\.)[0-9]+(?:e[+-]?[0-9]+)?(?![\w$])",  # .5
    *(digit + _SQL_NUMBER_TAIL for digit in "0123456789"),
)
_SQL_LITERAL = re.compile("|".join(_SQL_LITERALS), re.IGNORECASE | re.DOTALL)
# With double quotes or backticks around: quoted names stay, other double quotes are MySQL
# strings. Listed first, so a literal inside a quoted name is not taken for one.
_SQL_TOKEN = re.compile(
    "|".join(
        [
            r'"(?P<ident>[A-Za-z_][\w$ ]{0,62})"',
            r"`[^`\n]*`",
            r'"(?:[^"\\]|\\.|"")*(?:"|\Z)',
            *_SQL_LITERALS,
        ]
    ),
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class ScrubberSettings:
    drop_keys: tuple[str, ...] = setting(())  # keys removed outright (case-insensitive)
    filter_keys: tuple[str, ...] = setting(())  # regexes searched in keys: value filtered
    filter_values: tuple[str, ...] = setting(())  # regexes: each match in a string filtered
    disable: tuple[str, ...] = setting(())  # default rules turned off, by name

    def check(self, path: str) -> None:
        """Refuse unknown rule names and bad regexes at config load, naming the YAML path."""
        for index, name in enumerate(self.disable):
            if name not in RULE_NAMES:
                raise ConfigError(
                    f"{path}.disable[{index}]: unknown rule {name!r} "
                    f"(known: {', '.join(RULE_NAMES)})"
                )
        _compile_all(self.filter_keys, f"{path}.filter_keys", re.IGNORECASE)
        _compile_all(self.filter_values, f"{path}.filter_values", 0)


def _compile_all(patterns: tuple[str, ...], path: str, flags: int) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for index, pattern in enumerate(patterns):
        try:
            regex = re.compile(pattern, flags)
        except re.error as error:
            raise ConfigError(f"{path}[{index}]: invalid regular expression ({error})") from None
        # An empty match would filter every key, or put [Filtered] between every character.
        if regex.search("") is not None:
            raise ConfigError(f"{path}[{index}]: {pattern!r} matches the empty string")
        compiled.append(regex)
    return tuple(compiled)


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
        on = self._on
        self._value_rules = (
            on[PEM_KEY],
            on[URL_CREDENTIALS],
            on[HEADERS],
            on[BEARER],
            on[KEYS],
            on[CREDIT_CARD],
        )
        self._drop_keys = frozenset(key.lower() for key in drop_keys)
        self._filter_keys = filter_keys
        self._filter_values = filter_values
        # Short strings and pure letters cannot hold a default secret (those need digits,
        # "=", ":", spaces...); configured patterns can match anything: no shortcut then.
        self._shortcut = not filter_values
        self._verdicts: dict[str, Verdict] = {}
        self._clean: set[str] = set()
        self._clean_sql: set[str] = set()

    @classmethod
    def from_settings(cls, settings: ScrubberSettings, path: str = "scrubber") -> Rules:
        settings.check(path)
        return cls(
            disable=frozenset(settings.disable),
            drop_keys=settings.drop_keys,
            filter_keys=_compile_all(settings.filter_keys, f"{path}.filter_keys", re.IGNORECASE),
            filter_values=_compile_all(settings.filter_values, f"{path}.filter_values", 0),
        )

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
        """Scrub a trace or log export request in place; values changed per rule label."""
        counts = [0] * len(LABELS)
        if isinstance(batch, ExportTraceServiceRequest):
            for resource_spans in batch.resource_spans:
                self._attributes(resource_spans.resource.attributes, counts)
                for scope_spans in resource_spans.scope_spans:
                    self._attributes(scope_spans.scope.attributes, counts)
                    for span in scope_spans.spans:
                        self._span(span, counts)
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
        if span.trace_state and (new := self._trace_state(span.trace_state, counts)) is not None:
            span.trace_state = new

    def _record(self, record: LogRecord, counts: list[int]) -> None:
        self._value(record.body, counts)
        self._attributes(record.attributes, counts)
        level = record.severity_text
        if level and (new := self._changed(level, counts)) is not None:
            record.severity_text = new
        if (name := self._changed(record.event_name, counts)) is not None:
            record.event_name = name

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
        if '"' in text or "`" in text:
            new, found = _SQL_TOKEN.subn(_sql_replace, text)
        else:  # no quoted names to keep: a plain replacement, done in C without callbacks
            new, found = _SQL_LITERAL.subn("?", text)
        if found and new != text:
            counts[SQL_LITERALS] += 1
        else:
            new = text
        # The other rules still apply: credentials in a comment, a DSN in a string function.
        new = self._text(new, counts)
        if new is text and len(text) <= _CLEAN_MAX_LEN:
            if len(self._clean_sql) >= _CACHE_SIZE:
                self._clean_sql.clear()
            self._clean_sql.add(text)
        return new

    def _scan(self, text: str, counts: list[int]) -> str:
        """Apply each enabled value rule whose substring test says it might match; remember
        ``text`` as clean if none changed it. The tests are necessary conditions of the
        rules' patterns, so skipping a rule on them never misses a match."""
        if self._shortcut and (len(text) < _MIN_SECRET_LEN or text.isalpha()):
            return text  # cannot hold a default secret; not worth a place in the cache
        pem, url, headers, bearer, keys, card = self._value_rules
        new = text
        if pem and "-----BEGIN" in new:
            new = _apply(_PEM_KEY, FILTERED, new, PEM_KEY, counts)
        if url and "://" in new and "@" in new:
            new = _apply(_URL_USERINFO, f"://{FILTERED}@", new, URL_CREDENTIALS, counts)
        pairs = "=" in new or ":" in new
        spaced = " " in new or "\t" in new
        listed = "," in new
        if pairs or spaced or listed:
            low = new.lower()
            # Bearer before keys: in "token=Bearer abc" the keys rule would take "Bearer" for
            # the value and leave "abc" to a bearer rule that no longer sees its scheme.
            hinted = pairs and (headers or keys) and _any_in(low, _KEY_HINTS)
            if hinted and headers:
                new = _apply(_HEADER_LINE, _replace_value, new, HEADERS, counts)
            if bearer and spaced and ("bearer" in low or "basic" in low):
                new = _apply(_CREDENTIAL, _replace_credential, new, BEARER, counts)
            if hinted and keys:
                new = _apply(_KEY_VALUE, _replace_value, new, KEYS, counts)
            if keys and listed and _any_in(low, _KEY_HINTS):
                new = _apply(_PAIR, _replace_pair, new, KEYS, counts)
        if card and len(new) >= 13:
            # 13 digits at least; bytes.translate counts them in C, ten times faster than
            # a loop or a regex over the text.
            raw = new.encode("utf-8", "surrogatepass")
            if len(raw) - len(raw.translate(None, _DIGITS)) >= 13:
                new = _apply(_DIGIT_RUN, _replace_cards, new, CREDIT_CARD, counts)
        for pattern in self._filter_values:
            new = _apply(pattern, FILTERED, new, FILTER_VALUES, counts)
        if new is text and len(text) <= _CLEAN_MAX_LEN:
            if len(self._clean) >= _CACHE_SIZE:
                self._clean.clear()
            self._clean.add(text)
        return new


def _apply(
    pattern: re.Pattern[str], replace: Replacement, text: str, rule: int, counts: list[int]
) -> str:
    """``pattern.sub`` that counts one for ``rule`` and returns ``text`` itself if unchanged."""
    new, found = pattern.subn(replace, text)
    if found and new != text:
        counts[rule] += 1
        return new
    return text


def _any_in(low: str, hints: tuple[str, ...]) -> bool:
    # A plain loop: any() over a generator costs more than the substring tests themselves.
    for hint in hints:  # noqa: SIM110
        if hint in low:
            return True
    return False


def _replace_pair(match: re.Match[str]) -> str:
    return f"{match['head']}{FILTERED}{match['vq']}"


def _replace_value(match: re.Match[str]) -> str:
    value = match.group("val")
    if _SAFE_VALUE.fullmatch(value):
        return match.group(0)
    head = match.string[match.start() : match.start("val")]
    quote = value[0]
    if quote in "\"'":  # keep the quotes, so JSON stays JSON
        closing = quote if len(value) > 1 and value[-1] == quote else ""
        return f"{head}{quote}{FILTERED}{closing}"
    return head + FILTERED


def _replace_credential(match: re.Match[str]) -> str:
    scheme, space, credential = match.group("scheme", "space", "cred")
    if scheme.lower() == "basic" and not _is_basic_credential(credential):
        return match.group(0)
    return f"{scheme}{space}{FILTERED}"


def _is_basic_credential(credential: str) -> bool:
    """Whether ``credential`` is base64 of ``user:password``, what HTTP Basic auth sends."""
    stripped = credential.rstrip("=")
    try:
        decoded = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _replace_cards(match: re.Match[str]) -> str:
    """Filter each card number inside a run of digit groups; the other groups stay."""
    parts = _RUN_PARTS.split(match.group(0))
    groups, separators = parts[0::2], parts[1::2]
    out: list[str] = []
    index = 0
    while index < len(groups):
        end = _card_end(groups, index)
        last = index if end < 0 else end
        out.append(groups[index] if end < 0 else FILTERED)
        if last < len(separators):
            out.append(separators[last])
        index = last + 1
    return "".join(out)


def _card_end(groups: list[str], start: int) -> int:
    """The last group of the longest card number starting at ``groups[start]``, else -1."""
    digits = ""
    end = -1
    for index in range(start, len(groups)):
        digits += groups[index]
        if len(digits) > 19:
            break
        if len(digits) >= 13 and digits[0] in _CARD_NETWORKS and _luhn(digits):
            end = index
    return end


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        total += _LUHN_DOUBLED[digit] if position & 1 else digit
    return total % 10 == 0


def _sql_replace(match: re.Match[str]) -> str:
    token = match.group(0)
    if token[0] == "`" or match.group("ident") is not None:
        return token
    return "?"


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


class Scrubber:
    """The processor: scrubs each batch in place, counts per rule, hands the batch on."""

    def __init__(
        self, name: str, settings: ScrubberSettings, signal: Signal, next: Consumer
    ) -> None:
        self.name = name  # one set of rules serves traces and logs alike: signal is not needed
        self._next = next
        self.rules = Rules.from_settings(settings, f"processors.{name}")
        self._counters = {label: SCRUBBED.labels(label) for label in LABELS}

    async def start(self) -> None:
        pass

    async def consume(self, batch: Batch) -> None:
        for label, count in self.rules.scrub_batch(batch).items():
            self._counters[label].inc(count)
        await self._next.consume(batch)

    async def shutdown(self) -> None:
        pass


KIND = Kind(ScrubberSettings, Scrubber)  # registered as an entry point (pyproject.toml)
