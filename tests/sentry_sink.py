"""A capturing Sentry server for tests: a real HTTP server on 127.0.0.1 that decompresses and parses
envelopes with ``sentry_sdk.envelope.Envelope``, answers what the test scripts (429s, 413s,
500s), and has Sentry Relay's own normaliser referee every event it receives.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import sentry_relay
from aiohttp import web
from sentry_sdk.envelope import Envelope, Item

from tests.http_server import Handler, ThreadedServer

PUBLIC_KEY = "0123456789abcdef0123456789abcdef"
# Sentry's default data scrubbing ("Data Scrubber" and "Use Default Scrubbers" on).
RELAY_DEFAULT_SCRUBBING = sentry_relay.convert_datascrubbing_config(
    {
        "scrubData": True,
        "scrubDefaults": True,
        "sensitiveFields": [],
        "excludeFields": [],
        "scrubIpAddresses": False,
    }
)
PROJECT = 42


def payload(item: Item) -> Any:
    """An item's JSON, whatever its content type (log items are not application/json)."""
    return json.loads(item.payload.get_bytes())


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    envelope: Envelope
    status: int

    def items(self, kind: str) -> list[Any]:
        return [item for item in self.envelope.items if item.type == kind]


@dataclass
class SentrySink(ThreadedServer):
    """Run with ``with SentrySink() as sink:``; ``sink.dsn`` points a sidecar at it."""

    answers: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    referee_errors: list[tuple[str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def dsn(self) -> str:
        return f"http://{PUBLIC_KEY}@127.0.0.1:{self.port}/{PROJECT}"

    def answer(self, status: int, times: int = 1, **headers: str) -> None:
        """Answer the next ``times`` requests with ``status`` and these headers."""
        for _ in range(times):
            self.answers.append((status, {k.replace("_", "-"): v for k, v in headers.items()}))

    # --- what arrived ------------------------------------------------------------------------

    def events(self, kind: str = "event") -> list[dict[str, Any]]:
        """Payloads of accepted items of this type ("event", "transaction")."""
        return [
            payload(item)
            for request in self.received
            if request.status == 200
            for item in request.items(kind)
        ]

    def logs(self) -> list[dict[str, Any]]:
        return [log for item in self._accepted_items("log") for log in payload(item)["items"]]

    def client_reports(self) -> list[dict[str, Any]]:
        return [
            entry
            for request in self.received
            for item in request.items("client_report")
            for entry in payload(item)["discarded_events"]
        ]

    def wait_for(self, condition: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {len(self.received)} envelopes")
            time.sleep(0.05)

    def _accepted_items(self, kind: str) -> list[Any]:
        return [i for r in self.received if r.status == 200 for i in r.items(kind)]

    # --- the server --------------------------------------------------------------------------

    def routes(self) -> dict[str, Handler]:
        return {f"/api/{PROJECT}/envelope/": self._envelope}

    async def _envelope(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":  # sentry-sdk's choice when brotli is installed
            import brotli

            body = brotli.decompress(body)
        envelope = Envelope.deserialize(body)
        status, headers = self.answers.popleft() if self.answers else (200, {})
        self.received.append(Received(request.path, dict(request.headers), envelope, status))
        if status == 200:
            self._referee(envelope)
        return web.Response(status=status, headers=headers, text="{}")

    def _referee(self, envelope: Envelope) -> None:
        """Relay's normaliser must find nothing wrong, and its default data scrubbing nothing
        left to scrub (it marks what it scrubs in ``_meta``)."""
        normalizer = sentry_relay.StoreNormalizer()
        for item in envelope.items:
            if item.type in ("event", "transaction"):
                event = payload(item)
                normalized = normalizer.normalize_event(event)
                if normalized.get("errors"):
                    self.referee_errors.append((item.type, normalized["errors"]))
                scrubbed = sentry_relay.pii_strip_event(RELAY_DEFAULT_SCRUBBING, event)
                if "_meta" in scrubbed:
                    self.referee_errors.append((item.type, scrubbed["_meta"]))
