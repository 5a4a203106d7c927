"""Persistent sending queues: the ``file_storage`` extension and the queue it backs.

With ``extensions: {file_storage: {directory: /var/lib/otel-sidecar}}`` and, on an exporter,
``sending_queue: {storage: file_storage}``, every item the exporter queues is first written to
a SQLite database of its own in that directory (WAL mode: a write survives the process being
killed), and deleted only once delivered or dropped for good. A sidecar that was SIGKILLed,
OOM-killed or drained resumes sending them when it starts again.

Bounded by ``queue_size`` items and ``max_size_mib`` bytes: what does not fit, or cannot be
written (a full disk), is refused upstream (receivers answer 503 / UNAVAILABLE, the client
retries), or dropped and counted with ``when_full: drop``. A store that is not a database is
moved aside with one log line and a fresh one started: a corrupt file must never become a crash
loop. One that cannot be opened (a read-only directory) or is held by another sidecar (a lock
file beside it) fails the start with a message saying so.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from collector.component import Kind, Refused
from collector.memory import HELD
from collector.settings import ConfigError
from collector.telemetry import log
from exporters.retry import WhenFull

T = TypeVar("T")


@dataclass(frozen=True)
class FileStorageSettings:
    directory: str = "/var/lib/otel-sidecar"

    def check(self, path: str) -> None:
        if not self.directory.strip():
            raise ConfigError(f"{path}.directory: must not be empty")


class FileStorage:
    """The extension: a directory the persistent queues keep their databases in."""

    address = None  # listens on nothing

    def __init__(self, name: str, settings: FileStorageSettings, *_: object) -> None:
        self.name = name
        self.directory = Path(settings.directory)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    async def shutdown(self) -> None:
        pass


@dataclass(frozen=True)
class Codec(Generic[T]):
    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


class PersistentQueue(Generic[T]):
    """The :class:`~exporters.queue.SendingQueue` interface, on disk."""

    def __init__(
        self,
        name: str,
        directory: Path,
        limits: tuple[int, int, bool],  # (items, bytes, refuse when full)
        deliver: Callable[[T], Awaitable[None]],
        on_drop: Callable[[T, str], None],
        codec: Codec[T],
        workers: int,
    ) -> None:
        self.name = name
        self.path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.sqlite"
        self._max_items, self._max_bytes, self._refuse = limits
        self._when_full = WhenFull(self._refuse)
        self._deliver, self._on_drop, self._codec = deliver, on_drop, codec
        self._workers_wanted = workers
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._cursor = 0  # the last id handed to a worker
        self._items = self._bytes = 0
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._db = self._open()
        self._items, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM queue"
        ).fetchone()
        if self._items:
            log.info("queue_resumed", exporter=self.name, items=self._items)
        self._update_idle()
        self._workers = [asyncio.create_task(self._work(), name=f"{self.name}-sender-{n}")
                         for n in range(self._workers_wanted)]  # fmt: skip
        self._wake.set()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.path)
        try:
            return _connect(self.path)
        except sqlite3.OperationalError as error:  # cannot open or write: not the file's fault
            raise OSError(f"cannot open the queue store {self.path}: {error}") from None
        except sqlite3.DatabaseError as error:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            log.error("queue_store_moved_aside", exporter=self.name, moved_to=str(aside),
                      error=type(error).__name__)  # fmt: skip
            return _connect(self.path)

    def room(self) -> int:
        """Items that can be submitted now within the limits."""
        return 0 if self._bytes >= self._max_bytes else max(0, self._max_items - self._items)

    def empty(self) -> bool:
        return self._items == 0

    @property
    def running(self) -> bool:
        return bool(self._workers)

    @property
    def capacity(self) -> int:
        return self._max_items

    def depth(self) -> int:
        return self._items

    async def drain(self) -> None:
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop the workers. What is still queued stays on disk for the next start."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._items:
            log.info("queue_kept_on_disk", exporter=self.name, items=self._items)
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)  # closing releases the lock
            self._lock = None

    # --- in and out ------------------------------------------------------------------------

    def admit(self) -> None:
        """As :meth:`SendingQueue.admit <exporters.queue.SendingQueue.admit>`."""
        if self._when_full.door_closed(self.room()):
            raise Refused("queue_full")

    def submit(self, item: T) -> None:
        """As :meth:`SendingQueue.submit <exporters.queue.SendingQueue.submit>`; a store that
        cannot be written refuses (the client sends again) or drops, as ``when_full`` says."""
        body = self._codec.encode(item)
        full = self._items >= self._max_items or self._bytes + len(body) > self._max_bytes
        if full and not self._when_full.keeps():
            self._on_drop(item, "queue_full")
            return
        assert self._db is not None
        try:
            with self._db:
                self._db.execute("INSERT INTO queue (body) VALUES (?)", (body,))
        except sqlite3.Error as error:  # a full disk: never accepted-then-lost
            log.error("queue_write_failed", exporter=self.name, error=type(error).__name__)
            if self._refuse:
                raise Refused("storage_error") from None
            self._on_drop(item, "storage_error")
            return
        self._items += 1
        self._bytes += len(body)
        self._idle.clear()
        self._wake.set()

    async def _work(self) -> None:
        while True:
            try:
                await self._work_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the store failing: pause, never a dead worker
                log.error("queue_failed", exporter=self.name, error=type(error).__name__)
                await asyncio.sleep(1.0)

    async def _work_once(self) -> None:
        taken = self._take()
        if taken is None:
            self._wake.clear()
            await self._wake.wait()
            return
        row_id, body = taken
        self._in_flight += 1
        HELD.hold(len(body))
        try:
            await self._deliver(self._codec.decode(body))
        except asyncio.CancelledError:  # stopped mid-send: it stays queued on disk
            raise
        except Exception as error:  # undecodable or a bug: never a loop on one item
            log.error("export_failed", exporter=self.name, error=type(error).__name__)
        finally:
            self._in_flight -= 1
            HELD.release(len(body))
        self._delete(row_id, len(body))

    def _take(self) -> tuple[int, bytes] | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT id, body FROM queue WHERE id > ? ORDER BY id LIMIT 1", (self._cursor,)
        ).fetchone()
        if row is None:
            return None
        self._cursor = row[0]
        return row[0], row[1]

    def _delete(self, row_id: int, size: int) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute("DELETE FROM queue WHERE id = ?", (row_id,))
        self._items -= 1
        self._bytes -= size
        self._update_idle()

    def _update_idle(self) -> None:
        if self._items == 0 and self._in_flight == 0:
            self._idle.set()


def _lock(path: Path) -> int:
    """An exclusive lock beside the store: two sidecars on one directory would send
    everything twice."""
    handle = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise OSError(f"the queue store {path} is in use by another process") from None
    return handle


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    try:
        # WAL with synchronous=NORMAL: a committed write survives the process being killed.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # AUTOINCREMENT: ids never come back after deletes, so a worker's cursor never skips.
        db.execute(
            "CREATE TABLE IF NOT EXISTS queue"
            " (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)"
        )
        db.execute("SELECT count(*) FROM queue").fetchone()
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


KIND = Kind(FileStorageSettings, FileStorage)  # registered as an entry point (pyproject.toml)
