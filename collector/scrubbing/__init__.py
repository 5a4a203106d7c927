"""Scrubbing: nothing leaves the sidecar with a secret or personal value in it.

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

from collector.scrubbing.rules import DEFAULT_RULES, Rules, scrub_batch, scrub_text
from collector.scrubbing.text import FILTERED, LABELS, RULE_NAMES

__all__ = [
    "DEFAULT_RULES",
    "FILTERED",
    "LABELS",
    "RULE_NAMES",
    "Rules",
    "scrub_batch",
    "scrub_text",
]
