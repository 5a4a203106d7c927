"""Sentry envelopes, built with ``sentry_sdk.envelope`` so they are exactly what Relay reads.

One transaction or error event per envelope; logs in ``log`` items of at most 100 records;
``client_report`` items for what was dropped. Each envelope header carries ``event_id``,
``sent_at``, ``dsn`` and, for trace data, the dynamic sampling context ``trace``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sentry_sdk.envelope import Envelope, Item, PayloadRef

from collector.sampling import sample_rand
from exporters.storage import Codec

MAX_LOGS_PER_ITEM = 100
LOG_CONTENT_TYPE = "application/vnd.sentry.items.log+json"
# Envelope item type -> the data category Sentry rate-limits and reports on.
_CATEGORIES = {
    "event": "error", "transaction": "transaction", "log": "log_item", "sessions": "session",
}  # fmt: skip


# The fallback for what orjson refuses (lone surrogates, integers past 64 bits): as sentry-sdk's
# own JSON (compact, no NaN), but UTF-8 rather than ASCII escapes.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, check_circular=False, allow_nan=False, separators=(",", ":")
)


def json_bytes(value: Any) -> bytes:
    """JSON as UTF-8: orjson (a 3 KB transaction in a tenth of the stdlib's time); a NaN the
    mapping left becomes null. A lone surrogate stays the JSON escape ASCII escaping would
    have written."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value).encode("utf-8", "backslashreplace")


def json_payload(value: Any) -> PayloadRef:
    """An item's JSON payload (:func:`json_bytes`)."""
    return PayloadRef(bytes=json_bytes(value))


def category(item: Item) -> str:
    return _CATEGORIES.get(item.type or "", "default")


def quantity(item: Item) -> int:
    """Records an item stands for: a log item counts its logs."""
    return int(item.headers.get("item_count", 1))


@dataclass
class Outgoing:
    """An envelope waiting in the queue: its header and items, serialised only when sent."""

    headers: dict[str, Any]
    items: list[Item]
    size: int = field(default=0)

    def __post_init__(self) -> None:
        self.size = sum(len(item.get_bytes()) for item in self.items)

    def categories(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[category(item)] = counts.get(category(item), 0) + quantity(item)
        return counts

    def serialize(self, extra: Iterable[Item] = ()) -> bytes:
        """The envelope as ``Envelope.serialize`` frames it (a header line, then each item's
        header, with its payload's ``length``, and payload), its JSON lines by orjson: the
        same bytes, but for non-ASCII text in a header (a transaction name, a release),
        which is UTF-8 here where sentry_sdk escapes it; the same JSON either way."""
        lines = [json_bytes({**self.headers, "sent_at": _now_iso()})]
        for item in [*self.items, *extra]:
            payload = item.get_bytes()
            lines += (json_bytes({**item.headers, "length": len(payload)}), payload)
        lines.append(b"")
        return b"\n".join(lines)


def _stored(outgoing: Outgoing) -> bytes:
    return Envelope(headers=outgoing.headers, items=outgoing.items).serialize()


def _restored(stored: bytes) -> Outgoing:
    envelope = Envelope.deserialize(stored)
    return Outgoing(dict(envelope.headers), list(envelope.items))


OUTGOING = Codec(_stored, _restored)  # on disk: the envelope, as it would be sent


def trace_header(
    trace_id: str,
    public_key: str,
    sample_rate: float,
    environment: str | None,
    release: str | None,
    transaction: str | None,
) -> dict[str, str]:
    """The dynamic sampling context. ``sampled`` is ``sample_rand < sample_rate``, which is
    exactly the sampler's decision for the trace (see collector.sampling)."""
    rand = sample_rand(bytes.fromhex(trace_id))
    header = {
        "trace_id": trace_id,
        "public_key": public_key,
        "sample_rate": repr(float(sample_rate)),
        "sample_rand": repr(rand),
        "sampled": "true" if rand < sample_rate else "false",
    }
    for key, value in (("environment", environment), ("release", release),
                       ("transaction", transaction)):  # fmt: skip
        if value:
            header[key] = value
    return header


def event_envelope(event: dict[str, Any], dsn: str, trace: dict[str, str] | None) -> Outgoing:
    kind = "transaction" if event.get("type") == "transaction" else "event"
    headers: dict[str, Any] = {"event_id": event["event_id"], "dsn": dsn}
    if trace:
        headers["trace"] = trace
    return Outgoing(headers, [Item(payload=json_payload(event), type=kind)])


def log_envelopes(items: list[dict[str, Any]], dsn: str) -> list[Outgoing]:
    return [
        Outgoing({"dsn": dsn}, [_log_item(items[start : start + MAX_LOGS_PER_ITEM])])
        for start in range(0, len(items), MAX_LOGS_PER_ITEM)
    ]


def _log_item(logs: list[dict[str, Any]]) -> Item:
    return Item(
        payload=json_payload({"items": logs}),
        type="log",
        content_type=LOG_CONTENT_TYPE,
        headers={"item_count": len(logs)},
    )


def client_report(discarded: Mapping[tuple[str, str], int]) -> Item:
    """What was dropped, as sentry-python reports it: (reason, category, quantity)."""
    return Item(
        payload=json_payload(
            {
                "timestamp": datetime.now(UTC).timestamp(),
                "discarded_events": [
                    {"reason": reason, "category": cat, "quantity": count}
                    for (reason, cat), count in sorted(discarded.items())
                ],
            }
        ),
        type="client_report",
    )


_second: tuple[int, str] = (-1, "")


def _now_iso() -> str:
    """Now as sentry-sdk writes ``sent_at`` (``...T12:00:00.123456Z``); the whole seconds are
    formatted once a second (strftime took 1.8 % of the sidecar's CPU, one per envelope)."""
    global _second
    whole, micros = divmod(round(time.time() * 1_000_000), 1_000_000)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{micros:06d}Z"
