"""Embedded event store on one SQLite file.

The ``UNIQUE (stream, revision)`` constraint is the concurrency guard: even a
second process appending to the same file cannot write a revision twice. WAL mode
lets relays, projections and query services in other processes read while a command
service writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

from domain.event_store import (
    AppendResult,
    EventStoreUnavailable,
    ExpectedRevision,
    NewEvent,
    RecordedEvent,
    StreamState,
    WrongExpectedRevision,
)
from infra.sqlite_worker import SQLiteWorker
from telemetry.metrics import timed

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    stream      TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    UNIQUE (stream, revision)
);
"""

_COLUMNS = "event_id, stream, revision, position, type, data, metadata, recorded_at"

#: How often a subscriber looks for events appended by *other* processes; appends
#: made through this instance wake subscribers at once.
DEFAULT_POLL_INTERVAL = 0.05
_SUBSCRIBE_BATCH = 500


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///abs/path.db`` → ``/abs/path.db``; ``sqlite://rel/path.db`` → ``rel/path.db``."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {url!r}")
    return Path(parsed.netloc + parsed.path)


def _row_to_event(row: tuple[str, str, int, int, str, str, str, str]) -> RecordedEvent:
    event_id, stream, revision, position, type_, data, metadata, recorded_at = row
    return RecordedEvent(
        id=uuid.UUID(event_id),
        stream=stream,
        revision=revision,
        position=position,
        type=type_,
        data=data.encode(),
        metadata=metadata.encode(),
        recorded_at=datetime.fromisoformat(recorded_at),
    )


class SQLiteEventStore:
    """The embedded adapter; open it with :meth:`open`."""

    system = "sqlite"

    def __init__(self, worker: SQLiteWorker, poll_interval: float) -> None:
        self._worker = worker
        self._poll_interval = poll_interval
        self._appended = asyncio.Event()
        self._queue: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        url_or_path: str | Path,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> SQLiteEventStore:
        """Open (creating if needed); ``?synchronous=full`` buys power-loss safety with speed."""
        synchronous = "NORMAL"
        if isinstance(url_or_path, Path):
            path = url_or_path
        else:
            query = parse_qs(urlparse(url_or_path).query)
            synchronous = query.get("synchronous", ["normal"])[0].upper()
            path = sqlite_path_from_url(url_or_path)
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        worker = SQLiteWorker(path, _SCHEMA, synchronous=synchronous, name="event-store")
        store = cls(worker, poll_interval)
        await store._run(lambda _db: None)
        return store

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._worker.run(fn)
        except (sqlite3.OperationalError, sqlite3.ProgrammingError) as exc:
            raise EventStoreUnavailable(str(exc)) from exc

    # -- append ---------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_revision: ExpectedRevision,
    ) -> AppendResult:
        if not events:
            raise ValueError("append needs at least one event")
        batch = list(events)
        with timed("append"):
            result: AppendResult = await self._submit(
                lambda db: _append(db, stream, batch, expected_revision), writes=True
            )
        return result

    async def _submit(self, run: Callable[[sqlite3.Connection], Any], *, writes: bool) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(run, writes, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Group commit: everything queued while the worker was busy shares one hop.

        Appends share one transaction; one append's conflict fails only that append
        (it wrote nothing); one commit (one thread hop, one WAL sync) serves the whole
        group, and stream reads queued meanwhile ride along.
        """
        try:
            while self._queue:
                group, self._queue = self._queue, []
                try:
                    outcomes = await self._run(functools.partial(_run_group, group=group))
                except BaseException as exc:
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for job, outcome in zip(group, outcomes, strict=True):
                    if job.future.done():
                        continue
                    if isinstance(outcome, Exception):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)
                if any(job.writes for job in group):
                    self._wake_subscribers()
        finally:
            self._flusher = None

    # -- reads ----------------------------------------------------------------------------

    async def read_stream(self, stream: str, from_revision: int = 0) -> list[RecordedEvent]:
        with timed("read_stream"):
            rows = await self._submit(
                lambda db: db.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND revision >= ?"
                    " ORDER BY revision",
                    (stream, from_revision),
                ).fetchall(),
                writes=False,
            )
        return [_row_to_event(r) for r in rows]

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        with timed("read_all"):
            return await self._read_all(after, limit)

    async def _read_all(self, after: int, limit: int) -> list[RecordedEvent]:
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after, limit),
            ).fetchall()
        )
        return [_row_to_event(r) for r in rows]

    async def subscribe_all(self, after: int = 0) -> AsyncIterator[RecordedEvent]:
        position = after
        while True:
            # Take the wake-up event *before* reading so that an append landing between
            # the read and the wait still wakes us.
            appended = self._appended
            with timed("subscribe"):
                batch = await self._read_all(position, _SUBSCRIBE_BATCH)
            for event in batch:
                position = event.position
                yield event
            if len(batch) < _SUBSCRIBE_BATCH:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await appended.wait()

    def _wake_subscribers(self) -> None:
        appended, self._appended = self._appended, asyncio.Event()
        appended.set()

    async def close(self) -> None:
        await self._worker.close()


@dataclass(slots=True)
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    writes: bool
    future: asyncio.Future[Any]


def _run_group(db: sqlite3.Connection, group: list[_Job]) -> list[Any]:
    """Run a group in the worker thread; an append's conflict is its outcome, not an abort."""
    writes = any(job.writes for job in group)
    if writes:
        db.execute("BEGIN IMMEDIATE")
    outcomes: list[Any] = []
    try:
        for job in group:
            try:
                outcomes.append(job.run(db))
            except (WrongExpectedRevision, sqlite3.IntegrityError) as exc:
                # Nothing of this job was written: the check comes first, and an append
                # is one INSERT statement, which SQLite applies whole or not at all.
                outcomes.append(exc)
    except BaseException:
        if writes:
            db.execute("ROLLBACK")
        raise
    if writes:
        db.execute("COMMIT")
    return outcomes


def _append(
    db: sqlite3.Connection, stream: str, events: list[NewEvent], expected: ExpectedRevision
) -> AppendResult:
    (current,) = db.execute(
        "SELECT MAX(revision) FROM events WHERE stream = ?", (stream,)
    ).fetchone()
    _check_expected(stream, expected, current)
    recorded_at = datetime.now(UTC).isoformat()
    first = 0 if current is None else current + 1
    values: list[object] = []
    for i, e in enumerate(events):
        values += (str(e.id), stream, first + i, e.type, e.data.decode(), e.metadata.decode())
        values.append(recorded_at)
    # One statement for all the events: atomic without a savepoint.
    cursor = db.execute(
        "INSERT INTO events (event_id, stream, revision, type, data, metadata, recorded_at)"
        " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(events)),
        values,
    )
    assert cursor.lastrowid is not None
    return AppendResult(revision=first + len(events) - 1, position=cursor.lastrowid)


def _check_expected(stream: str, expected: ExpectedRevision, current: int | None) -> None:
    ok = (
        expected is StreamState.ANY
        or (expected is StreamState.NO_STREAM and current is None)
        or (expected is StreamState.EXISTS and current is not None)
        or (isinstance(expected, int) and expected == current)
    )
    if not ok:
        raise WrongExpectedRevision(stream, expected, current)
