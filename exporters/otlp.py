"""The ``otlp_http`` exporter: batches to any OTLP/HTTP backend, as protobuf, vendor-neutrally.

``POST {endpoint}/v1/traces`` or ``/v1/logs`` with ``application/x-protobuf`` (gzip by
default) and the configured headers. The batch is serialised once, straight from the protobuf
the receivers parsed. Answers, as the OTLP specification defines them: 2xx delivered (a
``partial_success`` with rejected items is counted); 429, 502, 503, 504 and network errors are
retried, after ``Retry-After`` when the server gives one, else with backoff and jitter; other
4xx are dropped. Header values and the URL's credentials never appear in logs or status.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from dataclasses import dataclass
from itertools import chain
from urllib.parse import urlsplit

import aiohttp
from google.protobuf.message import DecodeError

from collector.settings import ConfigError, Duration, setting
from collector.signals import Batch, Signal, item_count, signal_of
from collector.telemetry import DROPPED, EXPORTED, log
from exporters.queue import SendingQueue
from exporters.retry import QueueSettings, RetrySettings

_RETRYABLE = frozenset({429, 502, 503, 504})
_PATHS = {Signal.TRACES: "/v1/traces", Signal.LOGS: "/v1/logs"}
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class OtlpHttpSettings:
    endpoint: str = setting("", secret=True)  # base URL; may carry credentials
    headers: dict[str, str] = setting(factory=dict, secret=True)
    compression: str = setting("gzip", choices=("gzip", "none"))
    timeout: Duration = setting(Duration(10), minimum=0.1, maximum=300)
    sending_queue: QueueSettings = setting(factory=QueueSettings)
    retry_on_failure: RetrySettings = setting(factory=RetrySettings)

    def check(self, path: str) -> None:
        try:
            parts = urlsplit(self.endpoint)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            valid = valid and (parts.port is None or parts.port > 0)  # reading it validates it
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(f"{path}.endpoint: expected an http(s) URL such as "
                              "https://otlp.example:4318")  # fmt: skip
        for name, value in self.headers.items():
            if any(ch in name + value for ch in "\r\n\0"):
                raise ConfigError(f"{path}.headers.{name}: must not contain line breaks")


@dataclass(frozen=True)
class _Payload:
    signal: Signal
    body: bytes
    items: int


class OtlpHttpExporter:
    def __init__(self, name: str, settings: OtlpHttpSettings) -> None:
        self.name = name
        self._settings = settings
        parts = urlsplit(settings.endpoint)
        self.where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        base = settings.endpoint.rstrip("/")
        self._urls = {signal: base + path for signal, path in _PATHS.items()}
        self._headers = {**settings.headers, "Content-Type": "application/x-protobuf"}
        if settings.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._queue = SendingQueue(name, settings.sending_queue, self._deliver,
                                   lambda p: len(p.body), self._drop)  # fmt: skip
        self._session: aiohttp.ClientSession | None = None
        self.last_error: str | None = None

    def status(self) -> tuple[str, str]:
        if self.last_error:
            return "degraded", f"sending to {self.where}: last send failed ({self.last_error})"
        return "healthy", f"sending to {self.where}"

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=float(self._settings.timeout))
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._queue.start()

    async def shutdown(self) -> None:
        try:
            await self._queue.drain()
        finally:
            await self._queue.stop()
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def consume(self, batch: Batch) -> None:
        body = batch.SerializeToString()
        if self._settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
        self._queue.submit(_Payload(signal_of(batch), body, item_count(batch)))

    async def _deliver(self, payload: _Payload) -> None:
        retry = self._settings.retry_on_failure
        budget_ends = time.monotonic() + retry.max_elapsed_time
        wait_next = 0.0
        for delay in chain([0.0], retry.delays()):
            wait = max(delay, wait_next)
            if wait and time.monotonic() + wait > budget_ends:
                break  # a server's Retry-After counts against max_elapsed_time too
            await asyncio.sleep(wait)
            status, retry_after, body = await self._post(payload)
            if status is not None and 200 <= status < 300:
                self._delivered(payload, body)
                return
            if status is not None and status not in _RETRYABLE and status < 500:
                log.warning("otlp_rejected", exporter=self.name, status=status)
                self._drop(payload, "send_error")
                return
            wait_next = retry_after
        self._drop(payload, "network_error")

    def _delivered(self, payload: _Payload, body: bytes) -> None:
        """Count what arrived; a partial_success's rejected items are drops, as OTLP says."""
        try:
            partial = payload.signal.response_type.FromString(body).partial_success
            rejected = getattr(partial, f"rejected_{payload.signal.items}", 0)
        except DecodeError:
            rejected = 0
        rejected = min(max(0, rejected), payload.items)
        EXPORTED.labels(self.name, payload.signal.value).inc(payload.items - rejected)
        if rejected:
            DROPPED.labels(self.name, payload.signal.value, "rejected").inc(rejected)
            log.warning("otlp_partial_success", exporter=self.name, rejected=rejected)

    async def _post(self, payload: _Payload) -> tuple[int | None, float, bytes]:
        """(HTTP status or None on a network error, Retry-After seconds or 0, the body)."""
        assert self._session is not None
        try:
            async with self._session.post(
                self._urls[payload.signal],
                data=payload.body,
                headers=self._headers,
                allow_redirects=False,  # a redirected POST would arrive as a bodiless GET
            ) as response:
                body = await response.read()
                self.last_error = None if response.status < 300 else f"HTTP {response.status}"
                return response.status, _retry_after(response.headers.get("Retry-After")), body
        except (aiohttp.ClientError, TimeoutError) as error:
            self.last_error = type(error).__name__  # the type only: no URL, no header
            return None, 0.0, b""

    def _drop(self, payload: _Payload, reason: str) -> None:
        DROPPED.labels(self.name, payload.signal.value, reason).inc(payload.items)


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value else 0.0
    except ValueError:
        return 0.0
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S) if seconds == seconds else 0.0
