"""The ``otlp_grpc`` exporter: batches to any OTLP/gRPC backend (an OpenTelemetry Collector
gateway, a vendor's endpoint), as the OTLP specification describes the exchange.

The batch goes as the bytes the receivers parsed, serialised once (no per-span objects), to
``TraceService/Export`` or ``LogsService/Export`` with the configured headers as metadata
(vendor API keys: never logged), gzip by default, within ``timeout``. Answers: OK delivered (a
``partial_success`` with rejected items is counted and logged, not retried); UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED, ABORTED, OUT_OF_RANGE and DATA_LOSS retried with backoff;
RESOURCE_EXHAUSTED retried only when the server sends ``RetryInfo``, whose delay is honoured
whatever the code; everything else dropped and counted.

TLS unless ``tls.insecure`` or an ``http://`` endpoint: the system's roots or ``tls.ca_file``,
and a client certificate with ``tls.cert_file`` and ``tls.key_file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from collector.component import Kind
from collector.settings import ConfigError, Duration, setting
from collector.signals import Signal
from exporters.otlp_base import OtlpSender, Payload, TlsSettings
from exporters.retry import Permanent, QueueSettings, Retryable, RetrySettings, Throttled

_RETRYABLE = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})  # fmt: skip
_STATUS_DETAILS = "grpc-status-details-bin"
MAX_RETRY_DELAY_S = 300.0


@dataclass(frozen=True)
class OtlpGrpcSettings:
    # host:port, http(s)://host:port, or a gRPC target naming several addresses:
    # dns:///host:port (every address the name resolves to), ipv4:a:port,b:port
    endpoint: str = ""
    # round_robin: spread calls over every address of the target (a headless Service's pods);
    # pick_first: one connection.
    balancer_name: str = setting("pick_first", choices=("pick_first", "round_robin"))
    headers: dict[str, str] = setting(factory=dict, secret=True)
    compression: str = setting("gzip", choices=("gzip", "none"))
    timeout: Duration = setting(Duration(10), minimum=0.1, maximum=300)
    tls: TlsSettings = setting(factory=TlsSettings)
    sending_queue: QueueSettings = setting(factory=QueueSettings)
    retry_on_failure: RetrySettings = setting(factory=RetrySettings)

    def check(self, path: str) -> None:
        self.tls.check(f"{path}.tls")
        addresses = self.target.removeprefix("dns:///").removeprefix("ipv4:").split(",")
        if not all(_host_port(address) for address in addresses):
            raise ConfigError(f"{path}.endpoint: expected host:port such as otel-gateway:4317 "
                              "(or http(s)://host:port, dns:///host:port)")  # fmt: skip
        for name, value in self.headers.items():
            if name != name.lower() or any(ch in name + value for ch in "\r\n\0"):
                raise ConfigError(
                    f"{path}.headers.{name}: gRPC metadata names are lower case, "
                    "and neither names nor values may hold line breaks"
                )

    @property
    def target(self) -> str:
        return self.endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")

    @property
    def plaintext(self) -> bool:
        return self.tls.insecure or self.endpoint.startswith("http://")


class OtlpGrpcExporter(OtlpSender):
    def __init__(self, name: str, settings: OtlpGrpcSettings) -> None:
        super().__init__(name, settings.target, settings.sending_queue, settings.retry_on_failure)
        self._settings = settings
        self._metadata = tuple(settings.headers.items())
        gzip = settings.compression == "gzip"
        self._compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[Signal, grpc.aio.UnaryUnaryMultiCallable] = {}

    async def _open(self) -> None:
        self._channel = self._open_channel()
        # Bytes in, bytes out: the batch is already serialised, the answer parsed on need.
        self._calls = {signal: self._channel.unary_unary(f"/{signal.grpc_service}/Export")
                       for signal in Signal}  # fmt: skip

    def _open_channel(self) -> grpc.aio.Channel:
        options = [
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.lb_policy_name", self._settings.balancer_name),
        ]
        if self._settings.plaintext:
            return grpc.aio.insecure_channel(self._settings.target, options=options)
        tls = self._settings.tls
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(tls.ca_file).read_bytes() if tls.ca_file else None,
            private_key=Path(tls.key_file).read_bytes() if tls.key_file else None,
            certificate_chain=Path(tls.cert_file).read_bytes() if tls.cert_file else None,
        )
        return grpc.aio.secure_channel(self._settings.target, credentials, options=options)

    async def _close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _send(self, payload: Payload) -> bytes:
        try:
            answer = await self._calls[payload.signal](
                payload.body,
                timeout=float(self._settings.timeout),
                metadata=self._metadata,
                compression=self._compression,
            )
        except grpc.aio.AioRpcError as error:
            self.last_error = error.code().name  # the code only: no metadata, no message
            raise _classify(error) from None
        self.last_error = None
        return answer


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and "/" not in host and port.isdigit() and 0 < int(port) < 65536


def _classify(error: grpc.aio.AioRpcError) -> Exception:
    """What the OTLP specification says to do with a failed call."""
    code = error.code()
    delay = _retry_delay(error)
    if delay is not None and (code in _RETRYABLE or code == grpc.StatusCode.RESOURCE_EXHAUSTED):
        return Throttled(delay)
    if code in _RETRYABLE:
        return Retryable(code.name)
    return Permanent(code.name)  # RESOURCE_EXHAUSTED without RetryInfo included


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The server's ``RetryInfo.retry_delay`` in seconds, if it sent one (bounded)."""
    for key, value in error.trailing_metadata() or ():
        if key != _STATUS_DETAILS or not isinstance(value, bytes):
            continue
        try:
            details = status_pb2.Status.FromString(value).details
        except DecodeError:
            return None
        for detail in details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                seconds = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
                return min(max(0.0, seconds), MAX_RETRY_DELAY_S)
    return None


KIND = Kind(OtlpGrpcSettings, OtlpGrpcExporter)  # registered as an entry point (pyproject.toml)
