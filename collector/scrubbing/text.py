"""What the rules do to one string: their patterns, their replacements, and :func:`scan`, which
applies the enabled value rules to a text and counts what each changed. Pure functions; where
the rules apply, and the caches, are :mod:`collector.scrubbing.rules`'.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from typing import Final

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

Replacement = str | Callable[[re.Match[str]], str]
MIN_SECRET_LEN: Final = 6  # "auth=x" is the shortest text a default rule changes

# Relay's denylist; separators inside api_key and friends may be -, _, . or nothing.
DENY: Final = (
    r"passw(?:or)?d|secret|api[-_.]?key|auth|credentials?|mysql[-_.]?pwd"
    r"|private[-_.]?key|token|session|csrf"
)
# Substrings one of which every match of DENY and of _HEADER_LINE contains (the header
# names other than cookie contain "auth" or "key"); testing them costs far less than a search.
KEY_HINTS: Final = (
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
    rf"""(?<![\w.\-])(?P<q>["'])?(?P<key>[\w.\-]*?(?:{DENY})[\w.\-]{{0,64}})"""
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
    rf"""(?P<head>[(\[][ \t]*b?(?P<q>["'])-{{0,2}}[\w.\-]*?(?:{DENY}|cookie)[\w.\-]{{0,64}}"""
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


def scan(text: str, on: Sequence[bool], filter_values: Sequence[re.Pattern[str]],
         counts: list[int]) -> str:  # fmt: skip
    """``text`` with each enabled value rule applied (``on``, indexed like :data:`RULE_NAMES`)
    whose substring test says it might match, then the configured ``filter_values``; the very
    same object when nothing changed. The tests are necessary conditions of the rules'
    patterns, so skipping a rule on them never misses a match."""
    headers, keys, bearer, card, pem, url, _ = on
    new = text
    if pem and "-----BEGIN" in new:
        new = apply(_PEM_KEY, FILTERED, new, PEM_KEY, counts)
    if url and "://" in new and "@" in new:
        new = apply(_URL_USERINFO, f"://{FILTERED}@", new, URL_CREDENTIALS, counts)
    pairs = "=" in new or ":" in new
    spaced = " " in new or "\t" in new
    listed = "," in new
    if pairs or spaced or listed:
        low = new.lower()
        # Bearer before keys: in "token=Bearer abc" the keys rule would take "Bearer" for
        # the value and leave "abc" to a bearer rule that no longer sees its scheme.
        hinted = pairs and (headers or keys) and any_in(low, KEY_HINTS)
        if hinted and headers:
            new = apply(_HEADER_LINE, _replace_value, new, HEADERS, counts)
        if bearer and spaced and ("bearer" in low or "basic" in low):
            new = apply(_CREDENTIAL, _replace_credential, new, BEARER, counts)
        if hinted and keys:
            new = apply(_KEY_VALUE, _replace_value, new, KEYS, counts)
        if keys and listed and any_in(low, KEY_HINTS):
            new = apply(_PAIR, _replace_pair, new, KEYS, counts)
    if card and len(new) >= 13:
        # 13 digits at least; bytes.translate counts them in C, ten times faster than
        # a loop or a regex over the text.
        raw = new.encode("utf-8", "surrogatepass")
        if len(raw) - len(raw.translate(None, _DIGITS)) >= 13:
            new = apply(_DIGIT_RUN, _replace_cards, new, CREDIT_CARD, counts)
    for pattern in filter_values:
        new = apply(pattern, FILTERED, new, FILTER_VALUES, counts)
    return new


def sql_literals(text: str, counts: list[int]) -> str:
    """``text`` with its SQL literals replaced by ``?``; the very same object if it has none."""
    if '"' in text or "`" in text:
        new, found = _SQL_TOKEN.subn(_sql_replace, text)
    else:  # no quoted names to keep: a plain replacement, done in C without callbacks
        new, found = _SQL_LITERAL.subn("?", text)
    if found and new != text:
        counts[SQL_LITERALS] += 1
        return new
    return text


def apply(
    pattern: re.Pattern[str], replace: Replacement, text: str, rule: int, counts: list[int]
) -> str:
    """``pattern.sub`` that counts one for ``rule`` and returns ``text`` itself if unchanged."""
    new, found = pattern.subn(replace, text)
    if found and new != text:
        counts[rule] += 1
        return new
    return text


def any_in(low: str, hints: tuple[str, ...]) -> bool:
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
