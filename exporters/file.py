"""The ``file`` exporter: one OTLP/JSON export request per line, appended and flushed.

Each line is exactly what the OTLP/HTTP receiver accepts as a JSON body
(``{"resourceSpans": [...]}``, ``{"resourceLogs": [...]}`` or ``{"resourceMetrics": [...]}``),
so a file can be replayed.
Encoding and writing run on one worker thread: lines keep their order and the event loop
keeps serving receivers meanwhile. A write that fails (a full disk) is counted as failed by the
pipeline and turns the exporter's health entry ``unhealthy`` until a write succeeds again.
"""

from __future__ import annotations

import asyncio
import errno
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from collector import otlp_json
from collector.component import Kind
from collector.settings import ConfigError, setting
from collector.signals import Batch, item_count, signal_of
from collector.telemetry import EXPORTED


@dataclass(frozen=True)
class FileSettings:
    path: str = setting("./sidecar-out/telemetry.jsonl")

    def check(self, path: str) -> None:
        if not self.path.strip():
            raise ConfigError(f"{path}.path: must not be empty")


class FileExporter:
    accepts_unsampled_errors = False  # errors of dropped traces go to error trackers only
    durable = False  # a local, debugging output: requests never wait for its writes

    def __init__(self, name: str, settings: FileSettings) -> None:
        self.name = name
        self.path = Path(settings.path)
        self._file: BinaryIO | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"exporter-{name}")
        self._failure: str | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")

    def admit(self) -> None:
        """Nothing queued here: every batch is written as it comes."""

    async def consume(self, batch: Batch) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._write, batch)
        EXPORTED.labels(self.name, signal_of(batch).value).inc(item_count(batch))

    def _write(self, batch: Batch) -> None:
        assert self._file is not None, "exporter used before start()"
        try:
            self._file.write(otlp_json.encode(batch) + b"\n")
            self._file.flush()
        except OSError as error:
            self._failure = errno.errorcode.get(error.errno or 0, type(error).__name__)
            raise
        self._failure = None

    def status(self) -> tuple[str, str]:
        if self._failure:
            return "unhealthy", f"cannot write to {self.path} ({self._failure})"
        return "healthy", f"writing to {self.path}"

    async def shutdown(self) -> None:
        # Waits for the last write off the event loop, so the grace period can bound it.
        await asyncio.get_running_loop().run_in_executor(None, self._worker.shutdown)
        if self._file is not None:
            self._file.close()
            self._file = None


KIND = Kind(FileSettings, FileExporter)  # registered as an entry point (pyproject.toml)
