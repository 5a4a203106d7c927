"""The ``otlp_http`` exporter: batches to any OTLP/HTTP backend, as protobuf, vendor-neutrally.

``POST {endpoint}/v1/traces``, ``/v1/logs`` or ``/v1/metrics`` with ``application/x-protobuf``
(gzip by default) and the configured headers; over HTTPS, the system's roots or
``tls.ca_file``, and a client certificate with ``tls.cert_file`` and ``tls.key_file``. The
batch is serialised once, straight from the protobuf the receivers parsed. Answers, as the
OTLP specification defines them: 2xx delivered (a ``partial_success`` with rejected items is
counted); 429, 502, 503, 504 and network errors are retried, after ``Retry-After`` when the
server gives one, else with backoff and jitter; other 4xx are dropped. Header values and the
URL's credentials never appear in logs or status.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from collector.component import Kind
from collector.settings import ConfigError, Duration, setting
from collector.signals import Batch, Signal
from exporters.compression import gzip_compress
from exporters.otlp_base import OtlpSender, Payload, TlsSettings
from exporters.retry import (
    Permanent,
    QueueSettings,
    Retryable,
    RetrySettings,
    Throttled,
    retry_after_s,
)

_RETRYABLE = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class OtlpHttpSettings:
    endpoint: str = setting("", secret=True)  # base URL; may carry credentials
    headers: dict[str, str] = setting(factory=dict, secret=True)
    compression: str = setting("gzip", choices=("gzip", "none"))
    timeout: Duration = setting(Duration(10), minimum=0.1, maximum=300)
    tls: TlsSettings = setting(factory=TlsSettings)  # for an https:// endpoint
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
        self.tls.check(f"{path}.tls")
        if self.tls.insecure:
            raise ConfigError(f"{path}.tls.insecure: plaintext is an http:// endpoint")
        tls_set = self.tls != TlsSettings()
        if tls_set and parts.scheme != "https":
            raise ConfigError(f"{path}.tls: set for an endpoint that is not https://")
        for name, value in self.headers.items():
            if any(ch in name + value for ch in "\r\n\0"):
                raise ConfigError(f"{path}.headers.{name}: must not contain line breaks")


class OtlpHttpExporter(OtlpSender):
    def __init__(self, name: str, settings: OtlpHttpSettings) -> None:
        parts = urlsplit(settings.endpoint)
        where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        super().__init__(name, where, settings.sending_queue, settings.retry_on_failure)
        self._settings = settings
        base = settings.endpoint.rstrip("/")
        self._urls = {signal: base + signal.http_path for signal in Signal}
        self._headers = {**settings.headers, "Content-Type": "application/x-protobuf"}
        if settings.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._session: aiohttp.ClientSession | None = None

    async def _open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=float(self._settings.timeout))
        tls = self._settings.tls
        connector = aiohttp.TCPConnector(ssl=tls.ssl_context()) if tls != TlsSettings() else None
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _encode(self, batch: Batch) -> bytes:
        body = batch.SerializeToString()
        if self._settings.compression == "gzip":
            body = gzip_compress(body)
        return body

    async def _send(self, payload: Payload) -> bytes:
        status, retry_after, body = await self._post(payload)
        if status is not None and 200 <= status < 300:
            return body
        if status is not None and status not in _RETRYABLE and status < 500:
            raise Permanent(f"HTTP {status}")
        if retry_after:
            raise Throttled(retry_after)
        raise Retryable(f"HTTP {status}" if status else "network error")

    async def _post(self, payload: Payload) -> tuple[int | None, float, bytes]:
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
                asked = retry_after_s(response.headers.get("Retry-After"), MAX_RETRY_AFTER_S)
                return response.status, asked or 0.0, body
        except (aiohttp.ClientError, TimeoutError) as error:
            self.last_error = type(error).__name__  # the type only: no URL, no header
            return None, 0.0, b""


KIND = Kind(OtlpHttpSettings, OtlpHttpExporter)  # registered as an entry point (pyproject.toml)
