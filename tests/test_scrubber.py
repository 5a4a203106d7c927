"""The scrubber, called directly: a corpus of secrets in every place, the rules, config, counts."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import string
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector import otlp_json, sampling
from collector.processors.scrubber import Scrubber, ScrubberSettings
from collector.scrubbing import FILTERED, RULE_NAMES, Rules, scrub_batch, scrub_text
from collector.settings import ConfigError, build
from collector.signals import Batch, Signal
from collector.telemetry import REGISTRY

# Ids without decimal digits, so that no secret number can turn up in their hex by chance.
TRACE_ID = bytes.fromhex("ab" * 16)
SPAN_ID = bytes.fromhex("cd" * 8)
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-._~+/"
DENYLIST = (
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "auth",
    "credentials",
    "mysql_pwd",
    "privatekey",
    "private_key",
    "token",
    "session",
    "csrf",
)
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


# -- building OTLP values ------------------------------------------------------------------------


def any_value(value: Any) -> AnyValue:
    out = AnyValue()
    if isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, list):
        out.array_value.values.extend(any_value(item) for item in value)
    else:
        out.kvlist_value.values.extend(key_value(k, v) for k, v in value.items())
    return out


def key_value(key: str, value: Any) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def add(attributes: Any, **values: Any) -> None:
    """Append attributes, with ``__`` in keyword names standing for a dot."""
    attributes.extend(key_value(key.replace("__", "."), value) for key, value in values.items())


# -- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    needles: tuple[str, ...]  # what must not survive, anywhere
    key: str  # placed as the value of this attribute (and nested kvlist key)
    value: Any
    text: str | None  # the same secret in free text; None when only its key makes it one


def token(rng: random.Random, size: int = 20) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    """A Luhn-valid number of ``length`` digits starting with ``prefix``."""
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def luhn_ok(number: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def grouped(number: str, sizes: tuple[int, ...], separator: str) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(number[start : start + size])
        start += size
    return separator.join(parts)


def denied_key(rng: random.Random) -> str:
    word = rng.choice(DENYLIST)
    word = rng.choice([word, word.upper(), word.title()])
    return (
        rng.choice(["", "db.", "app_", "x-", "user."])
        + word
        + rng.choice(["", "_hash", ".value", "Id", "-x"])
    )


def keyed_secrets(rng: random.Random) -> list[Secret]:
    out = []
    for index in range(40):
        key = denied_key(rng)
        if index % 8 == 0:  # a number under a denylisted key
            number = rng.randrange(10**11, 10**12)
            out.append(Secret((str(number),), key, number, f"{key}={number}"))
        elif index % 8 == 1:  # an array
            first, second = token(rng), token(rng)
            out.append(Secret((first, second), key, [first, second], f"{key}={first}"))
        elif index % 8 == 2:  # a kvlist, and JSON in text
            secret = token(rng)
            out.append(
                Secret((secret,), key, {"user": "bob", "v": secret}, f'{{"{key}": "{secret}"}}')
            )
        else:
            secret = token(rng, rng.randrange(12, 30))
            out.append(Secret((secret,), key, secret, f"{key}={secret}"))
    return out


def credential_secrets(rng: random.Random) -> list[Secret]:
    out = []
    for index in range(30):
        jwt = ".".join(token(rng, 16) for _ in range(3)) if index % 3 == 0 else token(rng, 32)
        scheme = rng.choice(["Bearer", "bearer", "BEARER"])
        text = f"upstream called with {scheme} {jwt}"
        out.append(Secret((jwt,), "note", text, text))
    for _ in range(15):
        encoded = base64.b64encode(f"user{token(rng, 4)}:{token(rng, 14)}".encode()).decode()
        text = f"proxy sent Basic {encoded} twice"
        out.append(Secret((encoded,), "note", text, text))
    return out


def card_secrets(rng: random.Random) -> list[Secret]:
    out = []
    formats = [
        ("4", 16, (16,), ""),
        ("4", 16, (4, 4, 4, 4), " "),
        ("51", 16, (4, 4, 4, 4), "-"),
        ("55", 16, (16,), ""),
        ("2221", 16, (4, 4, 4, 4), " "),
        ("37", 15, (4, 6, 5), " "),
        ("34", 15, (15,), ""),
        ("6011", 16, (4, 4, 4, 4), "-"),
        ("36", 14, (4, 6, 4), " "),
        ("4", 19, (4, 4, 4, 4, 3), " "),
    ]
    for index in range(40):
        prefix, length, sizes, separator = formats[index % len(formats)]
        number = luhn_complete(prefix, length, rng)
        written = grouped(number, sizes, separator)
        text = f"charged card {written} for order"
        needles = (written,) if written == number else (written, number)
        out.append(Secret(needles, "payment.note", text, text))
    return out


PEM_KINDS = ("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY")


def pem_secrets(rng: random.Random) -> list[Secret]:
    out = []
    for index in range(12):
        kind = PEM_KINDS[index % len(PEM_KINDS)]
        lines = [
            "".join(rng.choice(string.ascii_letters + "+/") for _ in range(64)) for _ in range(4)
        ]
        body = "\n".join(lines)
        pem = f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"
        if index % 4 == 3:  # cut short, as in a truncated log line
            pem = f"-----BEGIN {kind}-----\n{body}"
        text = f"loaded key\n{pem}\nfrom disk"
        out.append(Secret(tuple(lines), "config.dump", text, text))
    return out


def url_secrets(rng: random.Random) -> list[Secret]:
    out = []
    for index in range(25):
        scheme = ["postgres", "https", "redis", "amqp", "mysql+pymysql"][index % 5]
        password = token(rng, 10) + rng.choice(["", "!", "$x", "*", "@at"])
        text = f"connecting to {scheme}://svc_{index}:{password}@db{index}.internal:5432/app now"
        out.append(Secret((password,), "note", text, text))
    for index in range(25):
        param = ["access_token", "token", "api_key", "sessionid", "auth", "X-Amz-Credentials"][
            index % 6
        ]
        secret = token(rng, 24)
        text = f"https://api.example.com/cb?page=2&{param}={secret}&x=1"
        out.append(Secret((secret,), "url.full", text, text))
    return out


def header_secrets(rng: random.Random) -> list[Secret]:
    out = []
    headers = [
        ("http.request.header.cookie", "Cookie"),
        ("http.response.header.set-cookie", "Set-Cookie"),
        ("http.request.header.authorization", "Authorization"),
        ("http.request.header.proxy_authorization", "Proxy-Authorization"),
        ("HTTP.REQUEST.HEADER.X-API-KEY", "X-Api-Key"),
    ]
    for index in range(20):
        key, name = headers[index % len(headers)]
        secret = token(rng, 22)
        value = f"sid{index}={secret}" if "cookie" in key.lower() else secret
        out.append(Secret((secret,), key, [value], f"{name}: {value}"))
    return out


def sql_secrets(rng: random.Random) -> list[Secret]:
    out = []
    for index in range(20):
        email = f"{token(rng, 8).lower()}@example.org"
        number = str(rng.randrange(10**9, 10**10))
        key = "db.statement" if index % 2 else "db.query.text"
        statement = f"SELECT id, name FROM users WHERE email = '{email}' AND account_id = {number}"
        out.append(Secret((email, number), key, statement, None))
    return out


def corpus() -> list[Secret]:
    rng = random.Random(20240601)
    return [
        *keyed_secrets(rng),
        *credential_secrets(rng),
        *card_secrets(rng),
        *pem_secrets(rng),
        *url_secrets(rng),
        *header_secrets(rng),
        *sql_secrets(rng),
    ]


CORPUS = corpus()


def place_in_traces(secrets: list[Secret]) -> ExportTraceServiceRequest:
    """Every secret in every place a trace has: resource, scope, span, events, links, status."""
    request = ExportTraceServiceRequest()
    for secret in secrets:
        text = secret.text or "plain"
        resource_spans = request.resource_spans.add()
        add(resource_spans.resource.attributes, **{secret.key: secret.value})
        scope_spans = resource_spans.scope_spans.add()
        add(scope_spans.scope.attributes, **{secret.key: secret.value})
        span = scope_spans.spans.add(trace_id=TRACE_ID, span_id=SPAN_ID, name=text)
        add(
            span.attributes,
            **{secret.key: secret.value},
            note__text=text,
            note__array=["plain", text],
            note__nested={
                "inner": {secret.key: secret.value},
                "list": [{secret.key: secret.value}],
            },
        )
        event = span.events.add(name="exception")
        add(
            event.attributes,
            **{secret.key: secret.value},
            exception__type="ValueError",
            exception__message=text,
            exception__stacktrace=(
                'Traceback (most recent call last):\n  File "app.py", line 7, in handler\n'
                f"ValueError: {text}\n"
            ),
            otel_sidecar__exception__chain=exception_chain(secret, text),
        )
        event = span.events.add(name=text)
        link = span.links.add(trace_id=TRACE_ID, span_id=SPAN_ID)
        add(link.attributes, **{secret.key: secret.value})
        span.status.message = text
    return request


def exception_chain(secret: Secret, text: str) -> str:
    """The zero-code side's exception chain (JSON) with the secret as a local variable (and a
    nested one) and its text in the source lines and the message."""
    frame = {
        "filename": "app.py",
        "function": "handler",
        "pre_context": [text],
        "context_line": text,
        "vars": {secret.key: repr(secret.value), "note": repr(text), "d": {secret.key: "x"}},
    }
    return json.dumps([{"type": "ValueError", "value": text, "frames": [frame]}])


def place_in_logs(secrets: list[Secret]) -> ExportLogsServiceRequest:
    """Every secret in every place a log batch has: resource, scope, bodies, attributes."""
    request = ExportLogsServiceRequest()
    for secret in secrets:
        text = secret.text or "plain"
        resource_logs = request.resource_logs.add()
        add(resource_logs.resource.attributes, **{secret.key: secret.value})
        scope_logs = resource_logs.scope_logs.add()
        add(scope_logs.scope.attributes, **{secret.key: secret.value})
        record = scope_logs.log_records.add(body=any_value(text))
        add(record.attributes, **{secret.key: secret.value}, exception__message=text)
        record = scope_logs.log_records.add(
            body=any_value(
                {secret.key: secret.value, "msg": text, "more": {secret.key: secret.value}}
            )
        )
        record = scope_logs.log_records.add(body=any_value([text, {secret.key: secret.value}]))
        add(record.attributes, exception__stacktrace=f"Traceback:\n  {text}\n")
    return request


def leaked(batch: Batch, secrets: list[Secret]) -> list[str]:
    """The needles still readable in the batch, as protobuf bytes or as OTLP/JSON."""
    binary = batch.SerializeToString()
    encoded = otlp_json.encode(batch).decode()
    found = []
    for secret in secrets:
        for needle in secret.needles:
            in_json = json.dumps(needle, ensure_ascii=False)[1:-1]  # OTLP/JSON is UTF-8
            if needle.encode() in binary or in_json in encoded:
                found.append(needle)
    return found


# -- the corpus in every place ------------------------------------------------------------------


def test_corpus_is_large_and_distinct() -> None:
    """The corpus holds more than 200 distinct secrets, of every kind."""
    needles = [needle for secret in CORPUS for needle in secret.needles]
    assert len(set(needles)) == len(needles) >= 200


def test_corpus_is_readable_before_scrubbing() -> None:
    """Without scrubbing every secret is found (cards as written): the leak check works."""
    for place in (place_in_traces, place_in_logs):
        found = set(leaked(place(CORPUS), CORPUS))
        assert {secret.needles[0] for secret in CORPUS} <= found


@pytest.mark.parametrize("place", [place_in_traces, place_in_logs], ids=["traces", "logs"])
def test_no_secret_survives_anywhere(place: Any) -> None:
    """After scrubbing, no secret of the corpus is left anywhere in the batch, in any encoding."""
    batch = place(CORPUS)
    counts = scrub_batch(batch, Rules())
    assert leaked(batch, CORPUS) == []
    assert set(counts) == set(RULE_NAMES)  # every default rule took part


def test_scrubbing_twice_changes_nothing_more() -> None:
    """A scrubbed batch is a fixed point: the Sentry exporter may scrub again safely."""
    batch = place_in_traces(CORPUS)
    rules = Rules()
    rules.scrub_batch(batch)
    once = batch.SerializeToString()
    assert rules.scrub_batch(batch) == {}
    assert Rules().scrub_batch(batch) == {}
    assert batch.SerializeToString() == once


# -- what stays ---------------------------------------------------------------------------------


def ordinary_span() -> Span:
    span = Span(trace_id=TRACE_ID, span_id=SPAN_ID, name="GET /users/{id}/orders")
    add(
        span.attributes,
        http__request__method="GET",
        http__route="/users/{id}/orders",
        url__path="/users/1234567/orders",
        url__full="https://api.example.com/users/1234567/orders?page=2&sort=desc",
        http__response__status_code=200,
        server__address="api.example.com",
        user_agent__original=UA,
        db__system="postgresql",
        enduser__id="user-42",
        order__id="4111111111111112",  # 16 digits failing Luhn: an order id, not a card
        event__time="at 1705312200127 ms",  # epoch ms passing Luhn: no card network starts with 1
        ratio=0.25,
        cached=True,
        tags=["a", "b"],
        note="Basic usage of the API",
        host__port="token.example.com:8080",
    )
    span.events.add(name="cache miss")
    span.status.message = "upstream returned 503"
    return span


def test_ordinary_values_pass_unchanged() -> None:
    """Values that match no rule keep their exact protobuf value, type included."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.CopyFrom(ordinary_span())
    assert Rules().scrub_batch(request) == {}
    assert span == ordinary_span()


def test_author_is_a_denylisted_key() -> None:
    """Relay's denylist matches substrings, so "author_note" is filtered as containing "auth"."""
    assert scrub_text("Basic usage of the API", key="author_note") == FILTERED


# -- the rules one by one -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "SELECT * FROM users WHERE email = 'a@b.c' AND id = 42",
            "SELECT * FROM users WHERE email = ? AND id = ?",
        ),
        (
            "SELECT col_2, t1.c3 FROM table1 t1 WHERE x = 1.5 AND y = -7 LIMIT 10",
            "SELECT col_2, t1.c3 FROM table1 t1 WHERE x = ? AND y = -? LIMIT ?",
        ),
        (
            "INSERT INTO t2 (a) VALUES ('it''s', 'a\\'b', 0x1F)",
            "INSERT INTO t2 (a) VALUES (?, ?, ?)",
        ),
        (
            'SELECT "auth_user"."id" FROM "auth_user" WHERE "auth_user"."email" = %s',
            'SELECT "auth_user"."id" FROM "auth_user" WHERE "auth_user"."email" = %s',
        ),
        ('SELECT * FROM t WHERE name = "a@b.c"', "SELECT * FROM t WHERE name = ?"),
        ("SELECT * FROM t WHERE a = $1 AND b = :2", "SELECT * FROM t WHERE a = $1 AND b = :2"),
        ("SELECT * FROM t WHERE note = 'unterminated", "SELECT * FROM t WHERE note = ?"),
        (
            "UPDATE users SET password = ? WHERE id = ?",
            "UPDATE users SET password = ? WHERE id = ?",
        ),
    ],
)
def test_sql_literals_become_placeholders(statement: str, expected: str) -> None:
    """Literals in SQL statements become ?, identifiers with digits, names and placeholders stay."""
    assert scrub_text(statement, key="db.statement") == expected
    assert scrub_text(statement, key="db.query.text") == expected


def test_sql_rule_applies_to_statements_only() -> None:
    """The same SQL under another key keeps its numbers: only db.statement and db.query.text."""
    statement = "SELECT * FROM users WHERE id = 42"
    assert scrub_text(statement) == statement
    assert scrub_text(statement, key="messaging.destination") == statement


@pytest.mark.parametrize(
    "number",
    ["4111111111111112", "4111 1111 1111 1112", "1234-5678-9012-3456", "9999999999999995"],
)
def test_numbers_failing_luhn_or_outside_card_ranges_stay(number: str) -> None:
    """Order ids and other long numbers stay: Luhn fails, or no card network starts with them."""
    assert scrub_text(f"order {number} shipped") == f"order {number} shipped"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 ok", f"card {FILTERED} ok"),
        ("card 4111-1111-1111-1111 ok", f"card {FILTERED} ok"),
        ("amex 3782 822463 10005.", f"amex {FILTERED}."),
        ("ids 12 4111111111111111 99", f"ids 12 {FILTERED} 99"),
        ("id=555555555555444401", "id=555555555555444401"),  # 18 digits, Luhn fails
    ],
)
def test_credit_cards(text: str, expected: str) -> None:
    """Luhn-valid card numbers in the common groupings become [Filtered], their neighbours stay."""
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", f"Authorization: {FILTERED}"),
        ("retry with bearer abc.def-ghi now", f"retry with bearer {FILTERED} now"),
        ("sent Basic dXNlcjpwYXNz", f"sent Basic {FILTERED}"),
        ("Basic usage of the API", "Basic usage of the API"),
        ("token=Bearer abc", f"token={FILTERED} {FILTERED}"),
    ],
)
def test_bearer_and_basic(text: str, expected: str) -> None:
    """Bearer tokens and real Basic credentials go; the word "Basic" in prose stays."""
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres://app:s3cr@t@db:5432/x", f"postgres://{FILTERED}@db:5432/x"),
        ("https://ghp_abc123@github.com/o/r", f"https://{FILTERED}@github.com/o/r"),
        ("https://example.com/users/a@b.c", "https://example.com/users/a@b.c"),
        ("https://token.example.com:8080/x", "https://token.example.com:8080/x"),
    ],
)
def test_url_credentials(text: str, expected: str) -> None:
    """The userinfo of a URL goes; an @ in the path and a denylisted word in the host stay."""
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/cb?access_token=abc&x=1", f"/cb?access_token={FILTERED}&x=1"),
        ("sessionid=abc; theme=dark", f"sessionid={FILTERED}; theme=dark"),
        ('{"password": "hunter2", "user": "bob"}', f'{{"password": "{FILTERED}", "user": "bob"}}'),
        ("{'api_key': 'k-123'}", f"{{'api_key': '{FILTERED}'}}"),
        ("run --db-password=hunter2 --verbose", f"run --db-password={FILTERED} --verbose"),
        ("Cookie: a=1; b=2\nHost: x", f"Cookie: {FILTERED}\nHost: x"),
        ("token: just a word", "token: just a word"),
    ],
)
def test_denylisted_keys_in_text(text: str, expected: str) -> None:
    """key=value pairs, quoted JSON keys and header lines lose their values, nothing else."""
    assert scrub_text(text) == expected


def test_pem_private_keys() -> None:
    """A PEM private key block goes whole, also when cut short; certificates stay."""
    block = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----"
    assert scrub_text(f"key:\n{block}\nok") == f"key:\n{FILTERED}\nok"
    assert scrub_text("-----BEGIN PRIVATE KEY-----\nMIIE") == FILTERED
    certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert scrub_text(certificate) == certificate


def test_key_rules_through_scrub_text() -> None:
    """With a key, denylisted and header keys give [Filtered] whatever the value."""
    assert scrub_text("hunter2", key="DB_PASSWORD") == FILTERED
    assert scrub_text("sid=1", key="http.request.header.cookie") == FILTERED
    assert scrub_text("ok", key="http.route") == "ok"


def test_headers_are_removed_and_nested_keys_filtered() -> None:
    """Credential headers are removed from the list; denylisted keys inside kvlists are filtered."""
    span = Span(name="x")
    add(
        span.attributes,
        http__request__header__cookie=["a=1"],
        **{"http.request.header.X_Api_Key": ["k"]},
        http__request__header__accept=["*/*"],
        body={"user": {"name": "bob", "Password": 1234, "sessions": [1, 2]}, "n": 1},
    )
    span, counts = scrubbed(span)
    assert [kv.key for kv in span.attributes] == ["http.request.header.accept", "body"]
    user = span.attributes[1].value.kvlist_value.values[0].value.kvlist_value.values
    assert [(kv.key, kv.value.WhichOneof("value"), kv.value.string_value) for kv in user] == [
        ("name", "string_value", "bob"),
        ("Password", "string_value", FILTERED),
        ("sessions", "string_value", FILTERED),
    ]
    assert counts == {"headers": 2, "keys": 2}


def test_bytes_values_are_scrubbed_byte_for_byte() -> None:
    """Secrets in bytes values go, and the other bytes are kept exactly."""
    span = Span(name="x")
    span.attributes.add(key="raw").value.bytes_value = b"\xff\x00 Bearer abcdefgh \xfe"
    span, _ = scrubbed(span)
    assert span.attributes[0].value.bytes_value == b"\xff\x00 Bearer [Filtered] \xfe"


# -- counts -------------------------------------------------------------------------------------


def traces_with(*spans: Span) -> ExportTraceServiceRequest:
    """A request holding copies of ``spans``."""
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(spans)
    return request


def scrubbed(span: Span, rules: Rules | None = None) -> tuple[Span, dict[str, int]]:
    """The span as scrubbed inside a batch, and the counts."""
    request = traces_with(span)
    counts = (rules or Rules()).scrub_batch(request)
    return request.resource_spans[0].scope_spans[0].spans[0], counts


def test_counts_per_rule() -> None:
    """Each changed or removed value counts once per rule that changed it."""
    span = Span(name="GET /x", trace_id=TRACE_ID, span_id=SPAN_ID)
    add(
        span.attributes,
        http__request__header__authorization=["Bearer x"],
        user__password="hunter2",
        note="Bearer abcdef and card 4111 1111 1111 1111",
        db__statement="SELECT * FROM t WHERE a = 'x' AND b = 2",
        nested={"token": "t", "ok": "fine"},
        dsn="postgres://u:p@h/db",
        key="-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
        route="/fine",
    )
    span.status.message = "Bearer abcdef"
    assert Rules().scrub_batch(traces_with(span)) == {
        "headers": 1,
        "keys": 2,
        "bearer": 2,
        "credit_card": 1,
        "sql_literals": 1,
        "url_credentials": 1,
        "pem_key": 1,
    }


# -- configuration ------------------------------------------------------------------------------

PATH = "processors.scrubber"


def rules_from(**raw: Any) -> Rules:
    settings_ = build(ScrubberSettings, raw, PATH)
    settings_.check(PATH)
    return settings_.rules(PATH)


def test_drop_keys() -> None:
    """drop_keys removes attributes by exact key, ignoring case."""
    span = Span(name="x")
    add(span.attributes, internal__Note="a", internal__note2="b")
    span, counts = scrubbed(span, rules_from(drop_keys=["INTERNAL.note"]))
    assert [kv.key for kv in span.attributes] == ["internal.note2"]
    assert counts == {"drop_keys": 1}


def test_filter_keys() -> None:
    """filter_keys filters the values of keys a regex finds, ignoring case."""
    rules = rules_from(filter_keys=[r"^user\.(email|phone)$"])
    assert rules.scrub_text("a@b.c", key="User.Email") == FILTERED
    assert rules.scrub_text("a@b.c", key="user.emails") == "a@b.c"


def test_filter_values() -> None:
    """filter_values filters each match in string values, also in short ones."""
    rules = rules_from(filter_values=[r"\b[\w.]+@[\w.]+\b", "ACME"])
    assert rules.scrub_text("mail a.b@c.io now") == f"mail {FILTERED} now"
    assert rules.scrub_text("ACME") == FILTERED
    span = Span(name="ACME")
    assert scrubbed(span, rules) == (Span(name=FILTERED), {"filter_values": 1})


def test_disable() -> None:
    """A disabled default rule no longer applies; the others still do."""
    rules = rules_from(disable=["sql_literals", "bearer"])
    assert rules.scrub_text("SELECT 1", key="db.statement") == "SELECT 1"
    assert rules.scrub_text("Bearer abcdef") == "Bearer abcdef"
    assert rules.scrub_text("x", key="password") == FILTERED


def test_unknown_rule_names_the_path() -> None:
    """An unknown rule name in disable is refused, naming its YAML path and the known rules."""
    with pytest.raises(
        ConfigError,
        match=r"^processors\.scrubber\.disable\[1\]: unknown rule 'nope' \(known: headers, keys",
    ):
        rules_from(disable=["keys", "nope"])


@pytest.mark.parametrize("field", ["filter_keys", "filter_values"])
def test_bad_regex_names_the_path(field: str) -> None:
    """A regex that does not compile is refused at config load, naming its YAML path."""
    with pytest.raises(
        ConfigError, match=rf"^processors\.scrubber\.{field}\[1\]: invalid regular expression"
    ):
        rules_from(**{field: ["ok", "(unclosed"]})


def test_regex_matching_nothing_is_refused() -> None:
    """A regex that matches the empty string would filter everything: refused."""
    with pytest.raises(
        ConfigError,
        match=r"^processors\.scrubber\.filter_values\[0\]: 'x\*' matches the empty string",
    ):
        rules_from(filter_values=["x*"])


# -- the processor ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


def scrubbed_count(rule: str) -> float:
    return REGISTRY.get_sample_value("otelsidecar_scrubbed_values_total", {"rule": rule}) or 0.0


def test_processor_scrubs_in_place_counts_and_hands_on() -> None:
    """consume scrubs the batch itself, adds to the per-rule counter and hands it on."""

    async def scenario() -> Recorder:
        recorder = Recorder()
        scrubber = Scrubber("scrubber", ScrubberSettings(), Signal.LOGS, recorder)
        await scrubber.start()
        await scrubber.consume(batch)
        await scrubber.shutdown()
        return recorder

    batch = ExportLogsServiceRequest()
    record = batch.resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = "login with password=hunter2 ok"
    before = scrubbed_count("keys")
    recorder = asyncio.run(scenario())
    assert recorder.batches == [batch] and recorder.batches[0] is batch
    assert record.body.string_value == f"login with password={FILTERED} ok"
    assert scrubbed_count("keys") == before + 1


# -- properties ---------------------------------------------------------------------------------

PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-._~!$&'()*+,;="
secret_tokens = st.text(alphabet=TOKEN_ALPHABET, min_size=12, max_size=40)
surroundings = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=30)
affixes = st.text(alphabet=string.ascii_letters + string.digits + "_.-", max_size=12)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["4", "51", "55", "2221", "34", "37", "6011", "65"]))
    length = draw(st.integers(min_value=max(13, len(prefix) + 2), max_value=19))
    digits = draw(
        st.text(
            alphabet=string.digits,
            min_size=length - len(prefix) - 1,
            max_size=length - len(prefix) - 1,
        )
    )
    body = prefix + digits
    number = next(body + check for check in string.digits if luhn_ok(body + check))
    separator = draw(st.sampled_from(["", " ", "-"]))
    return (
        separator.join(number[i : i + 4] for i in range(0, len(number), 4)) if separator else number
    )


@st.composite
def embedded_secrets(draw: st.DrawFn) -> tuple[str, str]:
    """A text with a secret in it, and the secret."""
    before, after = draw(surroundings), draw(surroundings)
    secret = draw(secret_tokens)
    assume(secret not in before and secret not in after)  # only the placed one can leak
    kind = draw(st.sampled_from(["bearer", "url", "key", "card"]))
    if kind == "bearer":
        header = draw(st.sampled_from(["Authorization: Bearer ", "bearer ", "BEARER\t"]))
        return f"{before}{header}{secret}{after}", secret
    if kind == "url":  # RFC 3986 userinfo characters; "/" and "@" would be percent-encoded
        password = draw(st.text(alphabet=PASSWORD_ALPHABET, min_size=12, max_size=30))
        assume(password not in before and password not in after)
        return f"{before}https://user:{password}@host.example/x{after}", password
    if kind == "key":
        key = draw(affixes) + draw(st.sampled_from(DENYLIST)) + draw(affixes)
        assume(secret not in key)
        return f"{before} {key}={secret} {after}", secret
    card = draw(card_numbers())
    assume(card not in before and card not in after)
    return f"{before} {card} {after}", card


@settings(max_examples=200, deadline=None)
@given(embedded_secrets())
def test_generated_secrets_never_survive_scrub_text(case: tuple[str, str]) -> None:
    """Generated secrets in random text never survive scrub_text."""
    text, secret = case
    assert secret not in scrub_text(text)


@settings(max_examples=200, deadline=None)
@given(
    key=st.builds(lambda a, w, b: a + w + b, affixes, st.sampled_from(DENYLIST), affixes),
    secret=secret_tokens,
)
def test_generated_denylisted_keys_filter_their_values(key: str, secret: str) -> None:
    """A value under a denylisted key with any prefix and suffix is filtered."""
    assert scrub_text(secret, key=key) == FILTERED
    assert scrub_text(secret, key=key.upper()) == FILTERED


@settings(max_examples=100, deadline=None)
@given(st.lists(embedded_secrets(), min_size=1, max_size=5))
def test_generated_secrets_never_survive_batch_scrubbing(cases: list[tuple[str, str]]) -> None:
    """Generated secrets placed in spans and log records never survive scrub_batch."""
    for index, (_, secret) in enumerate(cases):
        assume(all(secret not in text for other, (text, _) in enumerate(cases) if other != index))
        assume(secret not in "note other m exception.message")  # the keys below are no secret
    span = Span(name=cases[0][0], trace_id=TRACE_ID, span_id=SPAN_ID)
    add(span.attributes, note=[text for text, _ in cases], other={"m": cases[-1][0]})
    span.events.add(name="exception").attributes.append(key_value("exception.message", cases[0][0]))
    logs = ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add(body=any_value([t for t, _ in cases]))
    rules = Rules()
    for batch in (traces_with(span), logs):
        rules.scrub_batch(batch)
        encoded = batch.SerializeToString()
        assert not [s for _, s in cases if s.encode() in encoded]


def test_rules_refuse_unknown_names() -> None:
    """Rules built in code refuse unknown rule names too, not only the config."""
    with pytest.raises(ValueError, match="unknown rules"):
        Rules(disable=frozenset({"nope"}))


@pytest.mark.parametrize(
    "text",
    [
        "auth" * 25_000 + "=x",
        "x=1 " + "token" * 20_000,
        ("://" + "a" * 100) * 1_000,
        "-----BEGIN PRIVATE KEY-----" * 3_000,
        "4111 " * 20_000,
        "Bearer " * 20_000,
    ],
    ids=["keys", "hints", "urls", "pem", "digits", "bearer"],
)
def test_long_hostile_inputs_stay_fast(text: str) -> None:
    """100 kB made to make patterns backtrack is scrubbed in well under a second."""
    started = time.perf_counter()
    scrub_text(text)
    scrub_text(text, key="db.statement")
    assert time.perf_counter() - started < 1.0


# -- the exception chain -------------------------------------------------------------------------


def test_exception_chain_is_scrubbed_as_json_and_stays_json() -> None:
    """Variables are keys (a ``password`` local is filtered, a ``cookie`` one removed), every
    string is scanned, and what is written back still parses."""
    chain = [
        {
            "type": "ValueError",
            "value": "login failed for token=abc123def456",
            "frames": [
                {
                    "function": "login",
                    "pre_context": ['    password = "hunter2-secret"', "    user = 'ann'"],
                    "context_line": "    check(user, password)",
                    "vars": {
                        "password": "'hunter2-secret'",
                        "cookie": "'sid=99'",
                        "user": "'ann'",
                        "header": "'Bearer eyJhbGciOi.payload.sig'",
                        "rows": ["'4111 1111 1111 1111'"],
                    },
                }
            ],
        }
    ]
    batch = ExportTraceServiceRequest()
    span = batch.resource_spans.add().scope_spans.add().spans.add(name="login")
    add(span.events.add(name="exception").attributes,
        otel_sidecar__exception__chain=json.dumps(chain))  # fmt: skip
    counts = scrub_batch(batch)
    ((value,),) = [e.attributes for e in span.events]
    scrubbed = json.loads(value.value.string_value)
    frame = scrubbed[0]["frames"][0]
    assert scrubbed[0]["value"] == "login failed for token=[Filtered]"
    assert frame["pre_context"] == ['    password = "[Filtered]"', "    user = 'ann'"]
    assert frame["vars"] == {
        "password": "[Filtered]",
        "user": "'ann'",
        "header": "'Bearer [Filtered]'",
        "rows": ["'[Filtered]'"],
    }
    assert counts == {"headers": 1, "keys": 3, "bearer": 1, "credit_card": 1}


def test_exception_chain_that_is_not_json_is_scanned_as_text() -> None:
    batch = ExportTraceServiceRequest()
    span = batch.resource_spans.add().scope_spans.add().spans.add(name="x")
    add(span.attributes, otel_sidecar__exception__chain="not json, token=abcdef123456")
    scrub_batch(batch)
    assert span.attributes[0].value.string_value == "not json, token=[Filtered]"


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        # The ASGI scope's headers, as every frame of a request's traceback holds them.
        ("[(b'host', b'api'), (b'authorization', b'Token A1b2'), (b'cookie', b'sid=C9')]",
         "[(b'host', b'api'), (b'authorization', b'[Filtered]'), (b'cookie', b'[Filtered]')]"),
        ("[('api_key', 'sk_live_X1')]", "[('api_key', '[Filtered]')]"),
        ("['--password', 'x9y8', '-v']", "['--password', '[Filtered]', '-v']"),
        ("""[("token", "a'b c")]""", """[("token", "[Filtered]")]"""),
        ("[('name', 'bob'), ('page', '2')]", "[('name', 'bob'), ('page', '2')]"),
        ("f(author, title)", "f(author, title)"),
    ],
)  # fmt: skip
def test_credential_pairs_in_reprs_and_argument_lists(text: str, scrubbed: str) -> None:
    assert scrub_text(text) == scrubbed


@pytest.mark.parametrize(
    "chain",
    [
        "[" * 100_000 + "]" * 100_000,  # json.loads: RecursionError
        json.dumps([{"type": "E", "frames": [{"vars": {"v": [[[]]]}}]}]).replace(
            "[[[]]]", "[" * 5000 + "]" * 5000
        ),
    ],
)
def test_a_chain_too_deep_to_walk_costs_only_itself(chain: str) -> None:
    """Forged input: the batch is scrubbed and sent, the other attributes untouched."""
    batch = ExportTraceServiceRequest()
    span = batch.resource_spans.add().scope_spans.add().spans.add(name="x")
    add(span.events.add(name="exception").attributes, otel_sidecar__exception__chain=chain,
        exception__type="E")  # fmt: skip
    scrub_batch(batch)
    batch.SerializeToString()
    values = {kv.key: kv.value.string_value for kv in span.events[0].attributes}
    assert values["exception.type"] == "E"
    assert len(values["otel_sidecar.exception.chain"]) <= len(chain)


def test_a_scrubbed_chain_with_an_escaped_lone_surrogate_stays_sendable() -> None:
    chain = json.dumps([{"type": "E", "value": "bad \udcff byte",
                         "frames": [{"vars": {"password": "'x'", "s": "'\udcff'"}}]}])  # fmt: skip
    batch = ExportTraceServiceRequest()
    span = batch.resource_spans.add().scope_spans.add().spans.add(name="x")
    add(span.events.add(name="exception").attributes, otel_sidecar__exception__chain=chain)
    scrub_batch(batch)
    batch.SerializeToString()  # valid UTF-8 throughout
    (value,) = json.loads(span.events[0].attributes[0].value.string_value)
    assert value["frames"][0]["vars"]["password"] == "[Filtered]"


def test_array_statements_trace_state_and_severity_text_are_scrubbed() -> None:
    """Fields a client controls outside the attributes' usual shapes."""
    batch = ExportTraceServiceRequest()
    span = batch.resource_spans.add().scope_spans.add().spans.add(name="q")
    span.trace_state = "vendor=1,token=abcdef123456"
    statements = span.attributes.add(key="db.statement").value.array_value.values
    statements.add().string_value = "UPDATE u SET pw = 'hunter2-secret' WHERE id = 7"
    scrub_batch(batch)
    assert "abcdef123456" not in span.trace_state and span.trace_state.startswith("vendor=1")
    assert "hunter2" not in statements[0].string_value
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.severity_text = "ERROR password=hunter2-secret"
    scrub_batch(logs)
    assert "hunter2" not in record.severity_text


def test_the_sampling_threshold_in_the_tracestate_survives_at_every_rate() -> None:
    """``ot=th:`` is 1-14 hex digits: at rate 0.1 they are 14 decimal digits that pass Luhn's
    check, which the card rule would filter. The other fields of the entry are scrubbed."""
    for per_mille in range(1, 1000):
        batch = ExportTraceServiceRequest()
        span = batch.resource_spans.add().scope_spans.add().spans.add(name="q")
        mark = f"ot=th:{sampling.threshold_hex(sampling.threshold(per_mille / 1000))}"
        span.trace_state = mark
        scrub_batch(batch)
        assert span.trace_state == mark
    span.trace_state = "ot=th:e6666666666666;rv:00112233445566;x:token=abc,v=4111111111111111"
    scrub_batch(batch)
    assert (
        span.trace_state == "ot=th:e6666666666666;rv:00112233445566;x:token=[Filtered],v=[Filtered]"
    )


def test_metrics_are_scrubbed_where_requests_put_values_in_process() -> None:
    """Every kind of data point's attributes and exemplars, the metric's metadata, the resource
    and the scope; names, units and descriptions (from code) are left alone."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    secret = "Bearer abcdefghijklmnopqrstuvwxyz0123"

    def put(attributes: Any, key: str = "http.route") -> None:
        attributes.add(key=key).value.string_value = f"/x {secret}"

    batch = ExportMetricsServiceRequest()
    resource_metrics = batch.resource_metrics.add()
    put(resource_metrics.resource.attributes, "service.owner")
    scope_metrics = resource_metrics.scope_metrics.add()
    put(scope_metrics.scope.attributes, "scope.note")
    kinds = ("gauge", "sum", "histogram", "exponential_histogram")
    for kind in kinds:
        metric = scope_metrics.metrics.add(name=f"m.{kind}", unit="s", description="d")
        put(metric.metadata, "origin")
        point = getattr(metric, kind).data_points.add()
        put(point.attributes)
        put(point.exemplars.add().filtered_attributes, "enduser.id")
    summary = scope_metrics.metrics.add(name="m.summary")
    put(summary.summary.data_points.add().attributes)
    counts = scrub_batch(batch)
    text = str(batch)
    assert "abcdefghijklmnopqrstuvwxyz0123" not in text
    assert text.count("/x Bearer [Filtered]") == 2 + 3 * len(kinds) + 1
    assert sum(counts.values()) == 2 + 3 * len(kinds) + 1
    assert [m.name for m in scope_metrics.metrics] == [*(f"m.{k}" for k in kinds), "m.summary"]


def test_scrub_text_under_each_kind_of_key() -> None:
    """As the value of an attribute: a denied key filters (empty stays empty), the statement
    key drops SQL literals, the exception chain is walked as JSON, other text is scanned."""
    from collector.attributes import EXCEPTION_CHAIN

    rules = Rules()
    bearer = "Bearer abcdefghijklmnopqrstuvwxyz0123"
    assert rules.scrub_text("hunter2", key="password") == FILTERED
    assert rules.scrub_text("", key="password") == ""
    assert rules.scrub_text("SELECT 1 WHERE a = 'x'", key="db.statement") == (
        "SELECT ? WHERE a = ?"
    )
    chain = json.dumps([{"type": "E", "value": bearer, "vars": {"token": "t0k3n"}}])
    scrubbed = json.loads(rules.scrub_text(chain, key=EXCEPTION_CHAIN))
    assert scrubbed == [{"type": "E", "value": "Bearer [Filtered]", "vars": {"token": FILTERED}}]
    assert rules.scrub_text("not json " + bearer, key=EXCEPTION_CHAIN) == (
        "not json Bearer [Filtered]"
    )
    assert rules.scrub_text(bearer) == "Bearer [Filtered]"
    compact = '{"a":"' + bearer + '"}'  # only the chain is parsed (and so written anew)
    assert rules.scrub_text(compact) == '{"a":"Bearer [Filtered]"}'
    assert rules.scrub_text(compact, key=EXCEPTION_CHAIN) == '{"a": "Bearer [Filtered]"}'


def test_a_log_record_s_event_name_is_scrubbed() -> None:
    batch = ExportLogsServiceRequest()
    record = batch.resource_logs.add().scope_logs.add().log_records.add()
    record.event_name = "login Bearer abcdefghijklmnopqrstuvwxyz0123"
    record.body.string_value = "ok"
    assert scrub_batch(batch) == {"bearer": 1}
    assert record.event_name == "login Bearer [Filtered]"
