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


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///tmp/x/e.db", "/tmp/x/e.db"), ("sqlite:///tmp/e.db?synchronous=full", "/tmp/e.db")],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert str(sqlite_path_from_url(url)) == path


async def test_bad_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SQLiteEventStore.open(f"sqlite:///{tmp_path}/e.db?synchronous=sometimes")
