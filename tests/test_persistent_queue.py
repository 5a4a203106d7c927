"""The persistent sending queue (file_storage): what was accepted survives a SIGKILL and is sent
when the sidecar starts again; a full queue refuses upstream (HTTP 503) instead of dropping;
a store that cannot be read is moved aside, not a crash loop."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from collector.component import Refused
from collector.settings import ConfigError
from collector.signals import Signal, item_count
from examples.services import free_port
from exporters.otlp_base import PAYLOAD, Payload
from exporters.queue import sending_queue
from exporters.retry import QueueSettings
from tests.otlp_sink import OtlpSink
from tests.sidecar import Sidecar
from tests.test_receivers import post, trace_request

# A batch processor with a long timeout: what it would hold when the process is killed was
# answered success all the same, unless it waits for the queue (it does, the queue being durable).
CONFIG = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
processors:
  batch: {timeout: 30s}
exporters:
  otlp_http:
    endpoint: "ENDPOINT"
    sending_queue: {storage: file_storage, queue_size: SIZE}
    retry_on_failure: {initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 600s}
extensions:
  file_storage: {directory: "STORE"}
service:
  grace_period: 1s
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [otlp_http]}
"""


def config(endpoint: str, store: Path, size: int = 100) -> str:
    return (CONFIG.replace("ENDPOINT", endpoint).replace("STORE", str(store))
            .replace("SIZE", str(size)))  # fmt: skip


def test_what_was_accepted_survives_sigkill_and_is_sent_after_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the backend is down
    batches = [trace_request(spans=n) for n in (3, 4, 5)]
    with Sidecar(tmp_path / "first", config(dead, store)) as sidecar:
        for batch in batches:
            status, _, _ = post(sidecar, "/v1/traces", batch.SerializeToString())
            assert status == 200  # on disk before this answer
        assert sidecar.stop(signal.SIGKILL) == -signal.SIGKILL
    with OtlpSink() as backend, Sidecar(tmp_path / "second", config(backend.endpoint, store)):
        backend.wait_for(lambda: len(backend.accepted(Signal.TRACES)) == 3)
    assert sorted(item_count(b) for b in backend.accepted(Signal.TRACES)) == [3, 4, 5]


def test_a_full_queue_refuses_upstream_instead_of_dropping(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with Sidecar(tmp_path, config(dead, tmp_path / "store", size=2)) as sidecar:
        answers = [post(sidecar, "/v1/traces", trace_request().SerializeToString())[0]
                   for _ in range(4)]  # fmt: skip
    assert answers[:2] == [200, 200]  # one in flight, one waiting: the queue holds 2
    assert 503 in answers[2:]


def test_an_unreadable_store_is_moved_aside_and_a_fresh_one_used(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "otlp_http.sqlite").write_bytes(b"this is not a database" * 100)
    with OtlpSink() as backend, Sidecar(tmp_path, config(backend.endpoint, store)) as sidecar:
        assert post(sidecar, "/v1/traces", trace_request(spans=2).SerializeToString())[0] == 200
        backend.wait_for(lambda: backend.accepted(Signal.TRACES))
    (moved,) = store.glob("otlp_http.sqlite.unreadable-*")
    assert moved.read_bytes().startswith(b"this is not a database")
    assert [e for e in sidecar.events if e.get("event") == "queue_store_moved_aside"]


def test_the_storage_must_be_a_configured_file_storage(tmp_path: Path) -> None:
    from collector.config import parse_yaml

    text = config("http://127.0.0.1:9", tmp_path).replace("file_storage: {directory", "x: {d")
    with pytest.raises(ConfigError):
        parse_yaml(text)
    wrong = config("http://127.0.0.1:9", tmp_path).replace("storage: file_storage", "storage: disk")
    with pytest.raises(ConfigError, match=r"sending_queue\.storage: 'disk' is not a configured"):
        parse_yaml(wrong)


def test_an_item_stays_queued_until_delivered_or_dropped(tmp_path: Path) -> None:
    """In the queue itself: a stop mid-delivery keeps the item; a delivered one is gone."""
    settings = QueueSettings(storage="file_storage", directory=str(tmp_path), queue_size=10)
    delivered: list[Payload] = []

    async def hang(item: Payload) -> None:
        await asyncio.sleep(3600)

    async def take(item: Payload) -> None:
        delivered.append(item)

    async def main() -> None:
        payload = Payload(Signal.TRACES, trace_request(spans=2).SerializeToString(), 2)
        first = sending_queue("q", settings, hang, lambda p: len(p.body), lambda *_: None, PAYLOAD)
        first.start()
        first.submit(payload)
        await asyncio.sleep(0.1)  # taken, being delivered
        await first.stop()
        second = sending_queue("q", settings, take, lambda p: len(p.body), lambda *_: None, PAYLOAD)
        second.start()
        await asyncio.wait_for(second.drain(), 5)
        assert second.empty()
        await second.stop()
        assert delivered == [payload]
        rows = sqlite3.connect(tmp_path / "q.sqlite").execute("SELECT count(*) FROM queue")
        assert rows.fetchone() == (0,)

    asyncio.run(main())


def test_in_memory_the_full_queue_refuses_unless_dropping_was_chosen() -> None:
    async def main() -> None:
        refusing = QueueSettings(queue_size=1)  # the default
        kept: list[str] = []
        queue = sending_queue("m", refusing, lambda _: asyncio.sleep(3600), len,
                              lambda _, reason: kept.append(reason), PAYLOAD)  # fmt: skip
        queue.admit()
        queue.submit(b"a")
        with pytest.raises(Refused):
            queue.admit()  # the pipeline's door
        queue.submit(b"b")  # let in before the door closed: kept, past queue_size
        assert kept == [] and queue.room() == 0
        dropped: list[str] = []
        full = QueueSettings(queue_size=1, when_full="drop")
        dropping = sending_queue("m", full, lambda _: asyncio.sleep(3600), len,
                                 lambda _, reason: dropped.append(reason), PAYLOAD)  # fmt: skip
        dropping.submit(b"a")
        dropping.submit(b"b")
        assert dropped == ["queue_full"]
        for stopped in (queue, dropping):
            await stopped.stop()  # what they held is released

    asyncio.run(main())


SENTRY = """
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:0"}}}
exporters:
  sentry:
    dsn: "DSN"
    transaction_wait: 50ms
    sending_queue: {storage: file_storage}
    retry_on_failure: {initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 600s}
extensions:
  file_storage: {directory: "STORE"}
service:
  grace_period: 1s
  pipelines:
    traces: {receivers: [otlp], exporters: [sentry]}
"""


def test_sentry_envelopes_survive_sigkill_too(tmp_path: Path) -> None:
    from tests.sentry_sink import PROJECT, PUBLIC_KEY, SentrySink

    store = tmp_path / "store"
    dead = f"http://{PUBLIC_KEY}@127.0.0.1:{free_port()}/{PROJECT}"
    first = SENTRY.replace("DSN", dead).replace("STORE", str(store))
    with Sidecar(tmp_path / "first", first) as sidecar:
        assert post(sidecar, "/v1/traces", trace_request(spans=3).SerializeToString())[0] == 200
        database = store / "sentry.sqlite"
        deadline = time.monotonic() + 10
        while _queued(database) < 3:
            assert time.monotonic() < deadline, "the transaction never reached the queue"
            time.sleep(0.05)
        assert sidecar.stop(signal.SIGKILL) == -signal.SIGKILL
    with SentrySink() as sink:
        second = SENTRY.replace("DSN", sink.dsn).replace("STORE", str(store))
        with Sidecar(tmp_path / "second", second):
            sink.wait_for(lambda: len(sink.events("transaction")) == 3)  # 3 parentless spans
        assert sink.referee_errors == []
    assert {t["transaction"] for t in sink.events("transaction")} == {"/"}


def _queued(database: Path) -> int:
    if not database.exists():
        return 0
    with sqlite3.connect(database) as db:
        return db.execute("SELECT count(*) FROM queue").fetchone()[0]


def _queue(directory: Path, deliver: object, **settings: object) -> object:
    queue_settings = QueueSettings(storage="file_storage", directory=str(directory), **settings)
    return sending_queue("q", queue_settings, deliver, lambda p: len(p.body), lambda *_: None,
                         PAYLOAD)  # fmt: skip


def _payload(spans: int = 1) -> Payload:
    return Payload(Signal.TRACES, trace_request(spans=spans).SerializeToString(), spans)


def test_items_queued_after_it_emptied_are_sent_too(tmp_path: Path) -> None:
    """Ids are never reused: a queue that drained and filled again sends everything."""
    delivered: list[Payload] = []

    async def take(item: Payload) -> None:
        delivered.append(item)

    async def main() -> None:
        queue = _queue(tmp_path, take)
        queue.start()
        for round_ in range(3):
            for _ in range(3):
                queue.submit(_payload())
            await asyncio.wait_for(queue.drain(), 5)
            assert len(delivered) == 3 * (round_ + 1)
        await queue.stop()

    asyncio.run(main())


def test_one_store_one_sidecar(tmp_path: Path) -> None:
    async def main() -> None:
        first = _queue(tmp_path, lambda _: asyncio.sleep(0))
        first.start()
        with pytest.raises(OSError, match="in use by another process"):
            _queue(tmp_path, lambda _: asyncio.sleep(0)).start()
        await first.stop()
        again = _queue(tmp_path, lambda _: asyncio.sleep(0))  # released at stop
        again.start()
        await again.stop()

    asyncio.run(main())


def test_a_store_that_cannot_be_written_refuses_instead_of_losing(tmp_path: Path) -> None:
    """A full disk (here: the database opened read-only under the queue) answers 503, never an
    accepted-then-lost batch."""

    async def main() -> None:
        queue = _queue(tmp_path, lambda _: asyncio.sleep(3600))
        queue.start()
        queue._db = sqlite3.connect(f"file:{tmp_path / 'q.sqlite'}?mode=ro", uri=True)
        with pytest.raises(Refused, match="storage_error"):
            queue.submit(_payload())
        assert queue.empty()
        await queue.stop()

    asyncio.run(main())


def test_an_unopenable_store_fails_the_start_clearly_and_moves_nothing(tmp_path: Path) -> None:
    (tmp_path / "q.sqlite").mkdir()  # a directory where the database should be

    async def main() -> None:
        with pytest.raises(OSError, match="cannot open the queue store"):
            _queue(tmp_path, lambda _: asyncio.sleep(0)).start()

    asyncio.run(main())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.sqlite", "q.sqlite.lock"]


def test_on_disk_the_byte_bound_is_max_size_mib(tmp_path: Path) -> None:
    """``max_size_mib`` bounds the store in MiB: 1 MiB takes a few 300 KB payloads, not more;
    with ``when_full: drop`` what finds it full is dropped and reported as ``queue_full``."""
    dropped: list[str] = []
    settings = QueueSettings(storage="file_storage", directory=str(tmp_path), max_size_mib=1,
                             when_full="drop")  # fmt: skip

    async def main() -> None:
        queue = sending_queue("q", settings, lambda _: asyncio.sleep(3600),
                              lambda p: len(p.body), lambda _, reason: dropped.append(reason),
                              PAYLOAD)  # fmt: skip
        queue.start()
        big = Payload(Signal.TRACES, b"x" * 300_000, 1)
        for _ in range(5):
            queue.submit(big)
        await queue.stop()

    asyncio.run(main())
    assert dropped == ["queue_full", "queue_full"]  # 3 of 300 KB fit in 1 MiB, not 4
