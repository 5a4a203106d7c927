"""The ``otlp`` receiver: OTLP over gRPC (:mod:`.otlp_grpc`) and HTTP (:mod:`.otlp_http`) on
one asyncio loop, each with its :class:`~collector.receivers.intake.Intake`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from collector.component import Entrance, Kind
from collector.receivers.intake import GrpcSettings, HttpSettings, Intake
from collector.settings import ConfigError, setting
from collector.signals import Signal


@dataclass(frozen=True)
class Protocols:
    grpc: GrpcSettings | None = None
    http: HttpSettings | None = None


@dataclass(frozen=True)
class OtlpReceiverSettings:
    protocols: Protocols = setting(factory=Protocols)

    def check(self, path: str) -> None:
        if self.protocols.grpc is None and self.protocols.http is None:
            raise ConfigError(f"{path}.protocols: enable at least one of grpc, http")


class OtlpReceiver:
    """One component, up to two listening transports sharing the pipelines' consumers."""

    def __init__(
        self, name: str, settings: OtlpReceiverSettings, consumers: Mapping[Signal, Entrance]
    ) -> None:
        # Imported here so `otel-sidecar validate` does not load grpc (nor aiohttp's server).
        from collector.receivers.otlp_grpc import OtlpGrpcServer
        from collector.receivers.otlp_http import OtlpHttpServer

        self.name = name
        self.servers: list[OtlpGrpcServer | OtlpHttpServer] = []
        if settings.protocols.grpc is not None:
            intake = Intake(f"{name}_grpc", consumers)
            self.servers.append(OtlpGrpcServer(settings.protocols.grpc, intake))
        if settings.protocols.http is not None:
            intake = Intake(f"{name}_http", consumers)
            self.servers.append(OtlpHttpServer(settings.protocols.http, intake))

    @property
    def endpoints(self) -> dict[str, str]:
        """Transport name → the address actually listened on (port 0 resolved)."""
        return {server.intake.transport: server.address for server in self.servers}

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def set_ready(self, ready: bool) -> None:
        """What its gRPC health service answers (the HTTP transport has no such service)."""
        for server in self.servers:
            await server.set_ready(ready)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        for server in self.servers:
            await server.shutdown(grace_s)


KIND = Kind(OtlpReceiverSettings, OtlpReceiver)  # registered as an entry point (pyproject.toml)
