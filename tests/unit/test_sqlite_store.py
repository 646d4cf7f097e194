"""The SQLite adapter's group commit: one failing append in a group fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest

from domain.event_store import (
    EventStoreUnavailable,
    NewEvent,
    StreamState,
    WrongExpectedRevision,
)
from infra.eventstore import sqlite as sqlite_store
from infra.eventstore.sqlite import SQLiteEventStore, sqlite_path_from_url


async def test_a_failing_append_in_a_group_writes_nothing_and_fails_alone(
    tmp_path: Path,
) -> None:
    store = await SQLiteEventStore.open(tmp_path / "e.db")
    try:
        taken = str(uuid.uuid4())
        await store.append("a", [NewEvent("t", b"{}", id=taken)], StreamState.NO_STREAM)
        duplicate_id = [NewEvent("t", b"{}"), NewEvent("t", b"{}", id=taken)]
        results = await asyncio.gather(
            store.append("b", [NewEvent("t", b"{}")], StreamState.NO_STREAM),
            store.append("c", duplicate_id, StreamState.NO_STREAM),
            store.append("a", [NewEvent("t", b"{}")], StreamState.NO_STREAM),
            store.append("d", [NewEvent("t", b"{}"), NewEvent("t", b"{}")], StreamState.ANY),
            return_exceptions=True,
        )
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert isinstance(results[2], WrongExpectedRevision)
        assert [type(r).__name__ for r in (results[0], results[3])] == ["AppendResult"] * 2
        assert await store.read_stream("c") == []
        assert len(await store.read_stream("d")) == 2
        positions = [e.position for e in await store.read_all(0)]
        assert positions == sorted(positions) and len(positions) == 4
    finally:
        await store.close()


async def test_a_group_reports_where_each_append_landed_and_reads_see_earlier_appends(
    tmp_path: Path,
) -> None:
    """Appends written together by one multi-row INSERT (more rows than one statement takes,
    too) still report each append's own last revision and position."""
    store = await SQLiteEventStore.open(tmp_path / "e.db")
    try:
        await store.append("s0", [NewEvent("t", b"{}")], StreamState.NO_STREAM)
        sizes = [1, 3, 150, 2, 1, 60]
        calls = [
            store.append(f"s{i}", [NewEvent("t", b"{}") for _ in range(n)], StreamState.ANY)
            for i, n in enumerate(sizes)
        ]
        # Queued after the appends: answered in the same group, after them.
        results = await asyncio.gather(*calls, store.read_stream("s2"), store.read_stream("s0"))
        appended, read_s2, read_s0 = results[: len(sizes)], results[-2], results[-1]
        assert len(read_s2) == 150 and len(read_s0) == 2
        for i, result in enumerate(appended):
            last = (await store.read_stream(f"s{i}"))[-1]
            assert (result.revision, result.position) == (last.revision, last.position)
        assert appended[0].revision == 1  # after the event appended before the group
        positions = [e.position for e in await store.read_all(0, limit=1000)]
        assert positions == list(range(1, 1 + 1 + sum(sizes)))
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///tmp/x/e.db", "/tmp/x/e.db"), ("sqlite:///tmp/e.db?synchronous=full", "/tmp/e.db")],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert str(sqlite_path_from_url(url)) == path


async def test_bad_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SQLiteEventStore.open(f"sqlite:///{tmp_path}/e.db?synchronous=sometimes")


async def _append_while_another_connection_writes(store: SQLiteEventStore, path: Path) -> None:
    """Take the write lock from another connection, start an append, let the loop run,
    release the lock: the append must neither fail nor have stopped the loop."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        pending = asyncio.create_task(
            store.append("s", [NewEvent("t", b"{}")], StreamState.NO_STREAM)
        )
        for _ in range(20):  # a loop blocked on the lock would not come back here
            await asyncio.sleep(0)
        assert not pending.done()
        other.execute("COMMIT")
        result = await pending
        assert (result.revision, len(await store.read_stream("s"))) == (0, 1)
    finally:
        other.close()


async def test_a_held_write_lock_sends_the_group_to_the_worker_thread(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "e.db")
    try:
        await _append_while_another_connection_writes(store, tmp_path / "e.db")
        assert store.handed_off == 1
        # The lock is free again: the next group runs on the loop's thread.
        await store.append("s", [NewEvent("t", b"{}")], 0)
        assert store.handed_off == 1
    finally:
        await store.close()


async def test_synchronous_full_writes_only_on_the_worker_thread(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(f"sqlite:///{tmp_path}/e.db?synchronous=full")
    try:
        await _append_while_another_connection_writes(store, tmp_path / "e.db")
        assert store.handed_off == 0, "a syncing commit was tried on the loop's thread"
    finally:
        await store.close()


def _sizes(path: Path) -> tuple[int, int]:
    """The database file's size and its WAL's."""
    return path.stat().st_size, Path(f"{path}-wal").stat().st_size


async def test_the_wal_is_checkpointed_and_starts_over_under_steady_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers that never pause must still let a checkpoint copy the whole WAL, or the
    WAL grows with every append (it did: 1.7 GB after 240 000 appends)."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 50)
    path = tmp_path / "e.db"
    store = await SQLiteEventStore.open(path)
    try:
        payload = b'{"pad": "' + b"x" * 2000 + b'"}'

        async def writer(k: int) -> None:
            for i in range(100):
                await store.append(f"s{k}-{i}", [NewEvent("t", payload)], StreamState.NO_STREAM)

        await asyncio.gather(*(writer(k) for k in range(8)))  # 800 events, 1.6 MB
        assert store.checkpoints >= 10
        # The pages reached the database file, and the WAL holds a few intervals at most.
        database, wal = _sizes(path)
        assert database > 800 * 2000
        assert wal < 800 * 2000 / 3
    finally:
        await store.close()


async def test_a_file_that_cannot_be_opened_is_an_unavailable_store(tmp_path: Path) -> None:
    with pytest.raises(EventStoreUnavailable):
        await SQLiteEventStore.open(tmp_path)  # a directory, not a database file
