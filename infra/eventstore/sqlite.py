"""Embedded event store on one SQLite file.

The ``UNIQUE (stream, revision)`` constraint is the concurrency guard: even a
second process appending to the same file cannot write a revision twice. WAL mode
lets relays, projections and query services in other processes read while a command
service writes.

Appends and stream reads run on the event loop's own thread when they can. With
``synchronous=NORMAL`` a WAL commit is a write to the page cache, no sync, and handing
each group to a worker thread cost more than the SQL: the worker and the loop passed
the GIL back and forth and the worker took the second core from nats-server (order.place
at 64 in flight: about 0.17 of raw request/reply through the worker, 0.22 here, in
alternating runs). What could block stays off the loop: a write lock held by another
connection (the group goes to the worker thread, which waits for it), the WAL
checkpoint and its syncs (run by the worker thread), and every commit when
``synchronous`` is ``FULL`` or ``EXTRA`` (all of it on the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

from domain.event_store import (
    DEFAULT_IDEMPOTENCY_WINDOW,
    AppendResult,
    CommandRecord,
    DuplicateCommand,
    EventStoreUnavailable,
    ExpectedRevision,
    NewEvent,
    RecordedEvent,
    StoredCommand,
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
CREATE TABLE IF NOT EXISTS commands (
    command_id  TEXT    NOT NULL UNIQUE,
    digest      TEXT,
    stream      TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    recorded_at REAL    NOT NULL
);
"""

_COLUMNS = "event_id, stream, revision, position, type, data, metadata, recorded_at"

#: How often a subscriber looks for events appended by *other* processes; appends
#: made through this instance wake subscribers at once.
DEFAULT_POLL_INTERVAL = 0.05
_SUBSCRIBE_BATCH = 500
#: Rows per multi-row INSERT: SQLite caps a VALUES list at 500 rows.
_INSERT_ROWS = 100
#: Events written on the loop's thread between two WAL checkpoints (on the worker's).
CHECKPOINT_EVERY = 1000
#: Seconds an append waits for a write lock held by another connection (another process
#: writing, a backup, an operator's open transaction) before it fails as unavailable:
#: shorter than a client's request timeout, so the client hears ``store_unavailable``
#: instead of nothing, and the queue behind it does not grow for long.
LOCK_WAIT = 2.0
#: Commands recorded between two sweeps of the expired ones.
PRUNE_EVERY = 1000
#: Commits that do not sync may run on the loop's thread.
_UNSYNCED = {"OFF", "NORMAL"}


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///abs/path.db`` → ``/abs/path.db``; ``sqlite://rel/path.db`` → ``rel/path.db``."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {url!r}")
    return Path(parsed.netloc + parsed.path)


def _row_to_event(row: tuple[str, str, int, int, str, str, str, str]) -> RecordedEvent:
    event_id, stream, revision, position, type_, data, metadata, recorded_at = row
    return RecordedEvent(
        id=event_id,
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

    def __init__(
        self,
        worker: SQLiteWorker,
        poll_interval: float,
        idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> None:
        self._worker = worker
        self._poll_interval = poll_interval
        #: How long a command id stays recorded (seconds).
        self.idempotency_window = idempotency_window
        #: Commands recorded since expired ones were last swept.
        self._unpruned = 0
        #: (time, newest rowid of ``commands``) at each sweep, oldest first.
        self._marks: deque[tuple[float, int]] = deque()
        #: The loop thread's connection, when commits do not sync: it never waits for a
        #: lock and never checkpoints.
        self._here: sqlite3.Connection | None = None
        self._appended = asyncio.Event()
        #: Called after each group commit that appended: how other processes are told
        #: (``broker.append_notices``); their subscribers then need not wait for a poll.
        self.on_append: Callable[[], None] | None = None
        #: Names this opening of the store in those notices: a store is woken by its own
        #: appends already, not by a notice of them.
        self.instance = uuid.uuid4().hex
        self._queue: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Events written on this thread since the last checkpoint.
        self._unchecked = 0
        #: Groups that found the write lock taken and went to the worker thread.
        self.handed_off = 0
        #: WAL checkpoints run for the loop thread's writes.
        self.checkpoints = 0

    @classmethod
    async def open(
        cls,
        url_or_path: str | Path,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
    ) -> SQLiteEventStore:
        """Open (creating if needed); ``?synchronous=full`` buys power-loss safety with speed,
        and ``?poll_interval=<seconds>`` sets how often a subscriber looks for other
        processes' appends when nobody tells it of them."""
        synchronous = "NORMAL"
        if isinstance(url_or_path, Path):
            path = url_or_path
        else:
            query = parse_qs(urlparse(url_or_path).query)
            synchronous = query.get("synchronous", ["normal"])[0].upper()
            if "poll_interval" in query:
                poll_interval = float(query["poll_interval"][0])
                if not 0 < poll_interval <= 60:
                    raise ValueError(f"poll_interval must be within (0, 60] s: {poll_interval}")
            path = sqlite_path_from_url(url_or_path)
        if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        worker = SQLiteWorker(
            path, _SCHEMA, synchronous=synchronous, name="event-store", busy_timeout=LOCK_WAIT
        )
        store = cls(worker, poll_interval, idempotency_window)
        await store._run(lambda _db: None)  # creates the file, WAL mode and the schema
        if synchronous in _UNSYNCED:
            here = sqlite3.connect(path, isolation_level=None)
            here.execute("PRAGMA busy_timeout=0")
            here.execute("PRAGMA wal_autocheckpoint=0")
            here.execute(f"PRAGMA synchronous={synchronous}")
            store._here = here
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
        command: CommandRecord | None = None,
    ) -> AppendResult:
        if not events:
            raise ValueError("append needs at least one event")
        with timed("append"):
            result: AppendResult = await self._enqueue(
                None, _Append(stream, list(events), expected_revision, command)
            )
        return result

    async def stored_command(self, command_id: str) -> StoredCommand | None:
        horizon = time.time() - self.idempotency_window
        found = await self._enqueue(lambda db: _stored_commands(db, [command_id], horizon))
        command: StoredCommand | None = found.get(command_id)
        return command

    def _enqueue(
        self, run: Callable[[sqlite3.Connection], Any] | None, append: _Append | None = None
    ) -> asyncio.Future[Any]:
        """Queue a job for the next group; its outcome arrives on the returned future.
        A function, not a coroutine: awaited from ``append``, it is one frame fewer on
        the command path's chain."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(run, append, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        """Group commit: everything queued while the worker was busy shares one hop.

        Appends share one transaction; one append's conflict fails only that append
        (it wrote nothing); one commit (one thread hop, one WAL sync) serves the whole
        group, and stream reads queued meanwhile ride along.
        """
        try:
            while self._queue:
                if self._unchecked >= CHECKPOINT_EVERY:
                    await self._checkpoint()
                if self._unpruned >= PRUNE_EVERY:
                    await self._prune()
                group, self._queue = self._queue, []
                horizon = time.time() - self.idempotency_window
                self._unpruned += sum(1 for job in group if job.append and job.append.command)
                try:
                    outcomes = self._run_here(group, horizon)
                    if outcomes is None:
                        outcomes = await self._run(
                            functools.partial(_run_group, group=group, horizon=horizon)
                        )
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
                if any(job.append is not None for job in group):
                    self._wake_subscribers()
        finally:
            self._flusher = None

    def _run_here(self, group: list[_Job], horizon: float) -> list[Any] | None:
        """Run a group on this thread; ``None`` when it must go to the worker instead."""
        here = self._here
        if here is None:
            return None
        try:
            outcomes = _run_group(here, group, horizon)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                # Another connection is writing: the group was rolled back, and the worker
                # waits for the lock (``busy_timeout``) where the loop must not.
                self.handed_off += 1
                return None
            raise EventStoreUnavailable(str(exc)) from exc
        except sqlite3.ProgrammingError as exc:
            raise EventStoreUnavailable(str(exc)) from exc
        self._unchecked += sum(len(job.append.events) for job in group if job.append)
        return outcomes

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database file on the worker thread, while this thread
        writes nothing (the flusher waits for it, appends queue meanwhile). PASSIVE waits
        for no reader; with no writer it copies the whole WAL, so the next write starts
        the WAL over. Run beside the writes, it never caught up, and the WAL grew without
        end (1.7 GB after 240 000 appends)."""
        self._unchecked = 0
        try:
            await self._worker.run(
                lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            )
        except sqlite3.Error:
            return  # the next one will do it; writes never depend on a checkpoint
        self.checkpoints += 1

    async def _prune(self) -> None:
        """Forget the commands older than the window, on the worker thread (it may wait
        for another process's write lock; this thread must not).

        Rows are found by rowid, which grows with time: each sweep notes the newest rowid
        and when, and deletes up to the newest note older than the window. An index on
        the time would be a third B-tree written by every command (measured: about a
        tenth of a restock's instructions). After a restart nothing is deleted until
        the notes are a window old; a stale record is ignored by the lookup anyway.
        """
        self._unpruned = 0
        now = time.time()
        horizon = now - self.idempotency_window
        marks = self._marks

        def sweep(db: sqlite3.Connection) -> None:
            (newest,) = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM commands").fetchone()
            marks.append((now, newest))
            upto = 0
            while marks and marks[0][0] <= horizon:
                upto = marks.popleft()[1]
            if upto:
                db.execute("DELETE FROM commands WHERE rowid <= ?", (upto,))

        try:
            await self._worker.run(sweep)
        except sqlite3.Error:
            return  # the next sweep will do it

    # -- reads ----------------------------------------------------------------------------

    async def read_stream(self, stream: str, from_revision: int = 0) -> list[RecordedEvent]:
        with timed("read_stream"):
            rows = await self._enqueue(
                lambda db: db.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND revision >= ?"
                    " ORDER BY revision",
                    (stream, from_revision),
                ).fetchall()
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
        if self.on_append is not None:
            self.on_append()

    def wake(self) -> None:
        """Another process appended: subscribers read now instead of at their next poll."""
        appended, self._appended = self._appended, asyncio.Event()
        appended.set()

    async def close(self) -> None:
        if self._here is not None:
            self._here.close()
        await self._worker.close()


@dataclass(slots=True)
class _Append:
    stream: str
    events: list[NewEvent]
    expected: ExpectedRevision
    command: CommandRecord | None = None


@dataclass(slots=True)
class _Job:
    """An append (``append``) or any other statement (``run``), and who awaits it."""

    run: Callable[[sqlite3.Connection], Any] | None
    append: _Append | None
    future: asyncio.Future[Any]


def _run_group(db: sqlite3.Connection, group: list[_Job], horizon: float) -> list[Any]:
    """Run a group in the worker thread, in order; an append's conflict is its outcome.

    Consecutive appends are written together: one query reads every stream's revision,
    one INSERT writes every accepted event. Each statement lets go of the GIL while
    SQLite works and must take it back afterwards, and the event loop holds it most of
    the time: with a statement or two per append, the worker spent more time waiting
    for the GIL than writing. A read queued after an append still sees it.
    Commands recorded before ``horizon`` (a ``time.time()``) have left the idempotency
    window.
    """
    writes = any(job.append is not None for job in group)
    if writes:
        db.execute("BEGIN IMMEDIATE")
    outcomes: list[Any] = [None] * len(group)
    appends: list[int] = []
    try:
        for i, job in enumerate(group):
            if job.append is not None:
                appends.append(i)
                continue
            _write_appends(db, group, appends, outcomes, horizon)
            assert job.run is not None
            outcomes[i] = job.run(db)
        _write_appends(db, group, appends, outcomes, horizon)
    except BaseException:
        if writes:
            db.execute("ROLLBACK")
        raise
    if writes:
        db.execute("COMMIT")
    return outcomes


def _write_appends(
    db: sqlite3.Connection,
    group: list[_Job],
    indexes: list[int],
    outcomes: list[Any],
    horizon: float,
) -> None:
    """Check and write the appends ``group[i] for i in indexes``; empties ``indexes``."""
    if not indexes:
        return
    appends = [a for i in indexes if (a := group[i].append) is not None]
    revisions = _current_revisions(db, {a.stream for a in appends})
    command_ids = [a.command.id for a in appends if a.command is not None]
    known = _stored_commands(db, command_ids, horizon) if command_ids else {}
    now = time.time()
    recorded_at = datetime.fromtimestamp(now, UTC).isoformat()
    accepted: list[tuple[int, _Append, int]] = []  # (index, append, first revision)
    for i, append in zip(indexes, appends, strict=True):
        command = append.command
        if command is not None and command.id in known:
            outcomes[i] = DuplicateCommand(known[command.id])
            continue
        current = revisions.get(append.stream)
        try:
            _check_expected(append.stream, append.expected, current)
        except WrongExpectedRevision as exc:
            outcomes[i] = exc
            continue
        first = 0 if current is None else current + 1
        last_revision = first + len(append.events) - 1
        revisions[append.stream] = last_revision
        if command is not None:  # a resend later in the same group is a duplicate
            known[command.id] = StoredCommand(
                command.id, command.digest, append.stream, last_revision
            )
        accepted.append((i, append, first))
    indexes.clear()
    if not accepted:
        return
    rows = [row for _, append, first in accepted for row in _rows(append, first, recorded_at)]
    try:
        last = _insert(db, rows)
    except sqlite3.IntegrityError:
        # An event id already stored (a resend with the same ids): the statement wrote
        # nothing. Write append by append, so only the offending append fails.
        for i, append, first in accepted:
            outcomes[i] = _append_alone(db, append, first, recorded_at, now)
        return
    _record_commands(db, [(append, first) for _, append, first in accepted], now)
    # One INSERT gives its rows consecutive positions, in order (an AUTOINCREMENT key,
    # inside a transaction nobody else can write in): count back from the last.
    position = last - len(rows)
    for i, append, first in accepted:
        position += len(append.events)
        outcomes[i] = AppendResult(revision=first + len(append.events) - 1, position=position)


def _stored_commands(
    db: sqlite3.Connection, command_ids: list[str], horizon: float
) -> dict[str, StoredCommand]:
    """The records, still within the window, of any of these commands: one query."""
    rows = db.execute(
        "SELECT command_id, digest, stream, revision FROM commands"
        " WHERE command_id IN (SELECT value FROM json_each(?)) AND recorded_at >= ?",
        (json.dumps(command_ids), horizon),
    ).fetchall()
    return {row[0]: StoredCommand(*row) for row in rows}


def _record_commands(
    db: sqlite3.Connection, written: list[tuple[_Append, int]], now: float
) -> None:
    """Record the commands of appends just written (``first`` revision each), in the same
    transaction; a record past the window is replaced."""
    rows = [
        (append.command.id, append.command.digest, append.stream, first + len(append.events) - 1)
        for append, first in written
        if append.command is not None
    ]
    for start in range(0, len(rows), _INSERT_ROWS):
        chunk = rows[start : start + _INSERT_ROWS]
        db.execute(
            "INSERT OR REPLACE INTO commands (command_id, digest, stream, revision, recorded_at)"
            " VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
            [value for row in chunk for value in (*row, now)],
        )


def _rows(append: _Append, first: int, recorded_at: str) -> list[tuple[object, ...]]:
    """The ``events`` rows of an append whose first event takes revision ``first``."""
    return [
        (e.id, append.stream, first + n, e.type, e.data.decode(), e.metadata.decode(), recorded_at)
        for n, e in enumerate(append.events)
    ]


def _current_revisions(db: sqlite3.Connection, streams: set[str]) -> dict[str, int]:
    """Each stream's last revision (streams without events are left out), in one row: a
    row per stream would take the GIL back once per stream. One ``MAX`` per stream, so
    that each is a single step down the ``(stream, revision)`` index; ``GROUP BY`` over
    ``IN (…)`` read every revision of every stream instead."""
    (doc,) = db.execute(
        "SELECT json_group_object(s.value,"
        " (SELECT MAX(revision) FROM events WHERE stream = s.value)) FROM json_each(?) AS s",
        (json.dumps(list(streams)),),
    ).fetchone()
    return {
        stream: revision for stream, revision in json.loads(doc).items() if revision is not None
    }


def _insert(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> int:
    """Insert rows, all or none; the position of the last one.

    One statement is applied whole or not at all. More rows than one statement takes
    are written under a savepoint, rolled back if any statement fails.
    """
    if len(rows) <= _INSERT_ROWS:
        return _insert_statement(db, rows)
    db.execute("SAVEPOINT ordermesh_insert")
    try:
        for start in range(0, len(rows), _INSERT_ROWS):
            last = _insert_statement(db, rows[start : start + _INSERT_ROWS])
    except BaseException:
        db.execute("ROLLBACK TO ordermesh_insert")
        db.execute("RELEASE ordermesh_insert")
        raise
    db.execute("RELEASE ordermesh_insert")
    return last


def _insert_statement(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> int:
    cursor = db.execute(
        "INSERT INTO events (event_id, stream, revision, type, data, metadata, recorded_at)"
        " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows)),
        [value for row in rows for value in row],
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _append_alone(
    db: sqlite3.Connection, append: _Append, first: int, recorded_at: str, now: float
) -> AppendResult | sqlite3.IntegrityError:
    rows = _rows(append, first, recorded_at)
    try:
        last = _insert(db, rows)
    except sqlite3.IntegrityError as exc:
        return exc
    _record_commands(db, [(append, first)], now)
    return AppendResult(revision=first + len(rows) - 1, position=last)


def _check_expected(stream: str, expected: ExpectedRevision, current: int | None) -> None:
    ok = (
        expected is StreamState.ANY
        or (expected is StreamState.NO_STREAM and current is None)
        or (expected is StreamState.EXISTS and current is not None)
        or (isinstance(expected, int) and expected == current)
    )
    if not ok:
        raise WrongExpectedRevision(stream, expected, current)
