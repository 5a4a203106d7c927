"""Sentry's own data scrubbing, done before sending: what Sentry would filter is filtered here,
so that Sentry finds nothing left to scrub and what it shows is what the sidecar sent.

Sentry (Relay's ``@password`` rule) filters whole string values that look like credentials in
every field but a few typed ones; this is a different rule from the scrubber's (which filters
the secret inside a value), applied on top of it to the JSON the Sentry exporter builds.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from collector.scrubbing import FILTERED

_SENTRY_SENSITIVE = re.compile(
    r"passw(?:or)?d|secret|api[-_]?key|auth|credentials|mysql_pwd|private[-_]?key"
    r"|token[^\s:=]{0,64}[:=]",  # bounded: a long run of "token" stays linear
    re.IGNORECASE,
)
_SENTRY_SAFE_KEYS = frozenset({"http.route", "route"})


def sentry_safe(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of free-form data with credential-looking strings filtered, as Sentry would."""
    return {
        key: value if key in _SENTRY_SAFE_KEYS else _safe_value(value)
        for key, value in data.items()
    }


_verdicts: dict[str, bool] = {}  # string -> sensitive; values repeat a lot across spans


def _safe_value(value: Any) -> Any:
    if isinstance(value, str):
        if not sensitive(value):
            return value
        return _safe_url(value) or FILTERED
    if isinstance(value, list):
        return [_safe_value(item) for item in value]
    if isinstance(value, dict):
        return sentry_safe(value)
    return value


def sensitive(text: str) -> bool:
    sensitive = _verdicts.get(text)
    if sensitive is None:
        sensitive = _SENTRY_SENSITIVE.search(text) is not None
        if len(text) <= 256:  # bounded memory: long strings are checked, not remembered
            if len(_verdicts) >= 10_000:
                _verdicts.clear()
            _verdicts[text] = sensitive
    return sensitive


def _safe_url(text: str) -> dict[str, Any] | None:
    """A URL (or a bare query string) whose query names a credential, with that one value
    filtered: ``{"url": ..., "query": {name: value}}``. Sentry filters any string that so much as
    names one, so the query leaves as an object, where it judges each value by its name.
    None when the text is not such a URL, or is sensitive elsewhere."""
    base, separator, query = text.partition("?")
    if not separator:
        base, query = "", text
    if " " in query or "=" not in query or (base and "://" not in base) or sensitive(base):
        return None
    pairs = parse_qsl(query.partition("#")[0], keep_blank_values=True)
    if not pairs:
        return None
    filtered = {
        name: FILTERED if sensitive(name) or sensitive(value) else value for name, value in pairs
    }
    return {"url": base, "query": filtered} if base else {"query": filtered}
