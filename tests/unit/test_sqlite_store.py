"""The SQLite adapter's group commit: one failing append in a group fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest

from domain.event_store import NewEvent, StreamState, WrongExpectedRevision
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
