"""What the OTLP exporters (``otlp_http``, ``otlp_grpc``) share: the batch serialised once into
a payload, the bounded sending queue, the one retry loop, and the counts of an answer
(a ``partial_success``'s rejected items are drops, as the OTLP specification says).

A transport implements ``_encode`` (the batch's bytes on the wire), ``_send`` (one attempt:
the answer's body, or :class:`~exporters.retry.Permanent` / ``Retryable`` / ``Throttled``),
``_open`` and ``_close``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from collector.settings import ConfigError
from collector.signals import Batch, Signal, item_count, signal_of
from collector.telemetry import DROPPED, EXPORTED, log
from exporters.queue import sending_queue
from exporters.retry import Permanent, QueueSettings, Retryable, RetrySettings, send_with_retry
from exporters.storage import Codec


@dataclass(frozen=True)
class Payload:
    signal: Signal
    body: bytes
    items: int


def _encode(payload: Payload) -> bytes:
    header = f"{payload.signal.value} {payload.items}\n".encode()
    return header + payload.body


def _decode(stored: bytes) -> Payload:
    header, _, body = stored.partition(b"\n")
    signal, items = header.decode().split()
    return Payload(Signal(signal), body, int(items))


PAYLOAD = Codec(_encode, _decode)  # on disk: "traces 512\n" then the batch as sent


@dataclass(frozen=True)
class TlsSettings:
    insecure: bool = False  # plaintext (a gateway inside the cluster)
    ca_file: str = ""  # the server's CA; empty: the system's roots
    cert_file: str = ""  # a client certificate (mTLS), with key_file
    key_file: str = ""

    def check(self, path: str) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(f"{path}: cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            file = getattr(self, name)
            if file and not Path(file).is_file():
                raise ConfigError(f"{path}.{name}: no such file: {file}")

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTPS: the system's roots or ``ca_file``, and the client certificate if set."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class OtlpSender:
    accepts_unsampled_errors = False  # errors of dropped traces go to error trackers only

    def __init__(self, name: str, where: str, queue: QueueSettings, retry: RetrySettings) -> None:
        self.name = name
        self.durable = queue.storage != "memory"  # a queue on disk
        self.where = where  # scheme, host and port: never a credential
        self._retry = retry
        self._queue = sending_queue(name, queue, self._deliver, lambda p: len(p.body),
                                    self._drop, PAYLOAD)  # fmt: skip
        self.last_error: str | None = None

    def status(self) -> tuple[str, str]:
        if self.last_error:
            return "degraded", f"sending to {self.where}: last send failed ({self.last_error})"
        return "healthy", f"sending to {self.where}"

    async def start(self) -> None:
        await self._open()
        self._queue.start()

    async def shutdown(self) -> None:
        try:
            await self._queue.drain()
        finally:
            await self._queue.stop()
            await self._close()

    def admit(self) -> None:
        """The pipeline's door: Refused("queue_full") while the queue is full and refusing."""
        self._queue.admit()

    async def consume(self, batch: Batch) -> None:
        self._queue.submit(Payload(signal_of(batch), self._encode(batch), item_count(batch)))

    async def _deliver(self, payload: Payload) -> None:
        try:
            answer = await send_with_retry(lambda: self._send(payload), self._retry)
        except Permanent as refused:
            log.warning("otlp_rejected", exporter=self.name, status=str(refused))
            self._drop(payload, "send_error")
        except Retryable:
            self._drop(payload, "network_error")
        else:
            self._delivered(payload, answer)

    def _delivered(self, payload: Payload, answer: bytes) -> None:
        try:
            partial = payload.signal.response_type.FromString(answer).partial_success
            rejected = getattr(partial, f"rejected_{payload.signal.items}", 0)
        except DecodeError:
            rejected = 0
        rejected = min(max(0, rejected), payload.items)
        EXPORTED.labels(self.name, payload.signal.value).inc(payload.items - rejected)
        if rejected:
            DROPPED.labels(self.name, payload.signal.value, "rejected").inc(rejected)
            log.warning("otlp_partial_success", exporter=self.name, rejected=rejected)

    def _drop(self, payload: Payload, reason: str) -> None:
        DROPPED.labels(self.name, payload.signal.value, reason).inc(payload.items)

    # --- the transport ---------------------------------------------------------------------

    def _encode(self, batch: Batch) -> bytes:
        return batch.SerializeToString()

    async def _send(self, payload: Payload) -> bytes:
        raise NotImplementedError

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass
