"""The projection contract and the checkpointed apply that makes its effect exactly-once.

The checkpoint — the last applied global store position, and the ``EVENTS`` sequence
it arrived with — is written in the same transaction as the read-model change. A
feeder resumes after that sequence, and an event at or below the position is skipped,
so neither a crash nor a replay can apply an event twice or skip one.

Each projection also declares a schema ``version``: ``CREATE TABLE IF NOT EXISTS``
keeps a table of an older shape, so :func:`ensure_schema` replaces a projection whose
stored version differs and zeroes its checkpoint, and the projector replays it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from domain.catalog import decode_event
from domain.event_store import RecordedEvent
from domain.messages import Event

CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    sequence   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);
"""

VERSION_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_versions (
    name    TEXT    PRIMARY KEY,
    version INTEGER NOT NULL
);
"""


class Projection(Protocol):
    name: ClassVar[str]
    version: ClassVar[int]
    """Bump whenever ``schema`` changes, so existing read-model files get rebuilt."""
    schema: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    event_types: ClassVar[frozenset[str]]

    def apply(self, db: sqlite3.Connection, event: Event, recorded: RecordedEvent) -> None: ...


@dataclass(frozen=True, slots=True, order=True)
class Checkpoint:
    position: int = 0
    """Global store position of the last event applied."""
    sequence: int = 0
    """``EVENTS`` stream sequence it arrived with; 0 when it came from the store."""


def checkpoint(db: sqlite3.Connection, name: str) -> Checkpoint:
    row = db.execute(
        "SELECT position, sequence FROM projection_checkpoints WHERE name = ?", (name,)
    ).fetchone()
    return Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint()


def _set_checkpoint(db: sqlite3.Connection, name: str, cp: Checkpoint) -> None:
    db.execute(
        "INSERT INTO projection_checkpoints (name, position, sequence, updated_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
        " sequence = excluded.sequence, updated_at = excluded.updated_at",
        (name, cp.position, cp.sequence, datetime.now(UTC).isoformat()),
    )


def apply_batch(
    db: sqlite3.Connection,
    projection: Projection,
    batch: Iterable[RecordedEvent],
    sequence: int = 0,
) -> int:
    """Apply events above the checkpoint and advance it; call inside one transaction.

    ``sequence`` is the ``EVENTS`` sequence of the batch's last message. Returns how
    many events changed the model (duplicates and foreign types do not count).
    """
    start = checkpoint(db, projection.name)
    position = start.position
    applied = 0
    for recorded in batch:
        if recorded.position <= position:
            continue
        position = recorded.position
        if recorded.type in projection.event_types:
            projection.apply(db, decode_event(recorded.type, recorded.data), recorded)
            applied += 1
    end = Checkpoint(position, max(sequence, start.sequence))
    if end != start:
        _set_checkpoint(db, projection.name, end)
    return applied


def advance(db: sqlite3.Connection, projection: Projection, cp: Checkpoint) -> None:
    """Move the checkpoint past an event without applying it (it went to the DLQ)."""
    if checkpoint(db, projection.name) < cp:
        _set_checkpoint(db, projection.name, cp)


def reset(db: sqlite3.Connection, projection: Projection) -> None:
    """Empty the model and its checkpoint, ready for a replay from position 0."""
    for table in projection.tables:
        db.execute(f"DELETE FROM {table}")
    _set_checkpoint(db, projection.name, Checkpoint())


def ensure_schema(db: sqlite3.Connection, projections: Iterable[Projection]) -> list[str]:
    """Create every projection's tables, replacing any left by another version.

    A projection is replaced when its stored version differs or, in a file from before
    versions were kept, when its existing tables differ from its schema: its tables are
    dropped and recreated and its checkpoint zeroed, so the projector replays it from
    the start of ``EVENTS``. One IMMEDIATE transaction, so processes opening the same
    file at once replace it once. Returns the names whose existing tables were dropped.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(CHECKPOINT_SCHEMA + VERSION_SCHEMA):
            db.execute(statement)
        replaced: list[str] = []
        for projection in projections:
            row = db.execute(
                "SELECT version FROM projection_versions WHERE name = ?", (projection.name,)
            ).fetchone()
            stored = None if row is None else int(row[0])
            if stored != projection.version:
                existing = _shape(db, projection.tables)
                if stored is not None or existing != _declared_shape(projection):
                    for table in projection.tables:
                        db.execute(f"DROP TABLE IF EXISTS {table}")
                    _set_checkpoint(db, projection.name, Checkpoint())
                    if existing:
                        replaced.append(projection.name)
            # Always: an added index needs no version bump, as before versions were kept.
            for statement in _statements(projection.schema):
                db.execute(statement)
            db.execute(
                "INSERT INTO projection_versions (name, version) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                (projection.name, projection.version),
            )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return replaced


def _shape(db: sqlite3.Connection, tables: Iterable[str]) -> dict[str, list[Any]]:
    """The columns (name, type, constraints) of those of ``tables`` that exist."""
    shape = {t: db.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
    return {table: columns for table, columns in shape.items() if columns}


def _declared_shape(projection: Projection) -> dict[str, list[Any]]:
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.executescript(projection.schema)
        return _shape(scratch, projection.tables)
    finally:
        scratch.close()


def _statements(script: str) -> Iterator[str]:
    """Split a schema script: ``executescript`` would commit the open transaction."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                yield pending
            pending = ""
