"""The projection contract and the checkpointed apply that makes its effect exactly-once.

The checkpoint — the last applied global store position, and the ``EVENTS`` sequence
it arrived with — is written in the same transaction as the read-model change. A
feeder resumes after that sequence, and an event at or below the position is skipped,
so neither a crash nor a replay can apply an event twice or skip one.

Each projection also declares a schema ``version``: ``CREATE TABLE IF NOT EXISTS``
keeps a table of an older shape, so :func:`ensure_schema` replaces a projection whose
stored version differs and zeroes its checkpoint, and the projector replays it.

An event a projection could not apply is set aside (the broker puts it in ``DLQ``): its
checkpoint moves past it, and a row in ``projection_dead_letters``, written in the same
transaction, says so. A retry applies the event out of order, bypassing the position
check, so that row is what keeps it exactly-once: a retry applies only an event set
aside and not applied since, and marks it applied in its own transaction. A rebuild
(:func:`reset`, then a replay of the whole store) applies every event, so it marks the
projection's rows applied too; a replacement (:func:`ensure_schema`) deletes them, and
the replay sets aside again whatever still fails.
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
CREATE TABLE IF NOT EXISTS projection_dead_letters (
    projection   TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    sequence     INTEGER NOT NULL,
    dlq_sequence INTEGER NOT NULL,
    set_aside_at TEXT    NOT NULL,
    applied_from INTEGER,
    applied_at   TEXT,
    PRIMARY KEY (projection, event_id)
);
"""
"""``projection_dead_letters``: the events each projection's feed set aside. ``position`` and
``sequence`` are the event's in the store and ``EVENTS``, ``dlq_sequence`` its copy's in
``DLQ``; ``applied_from`` is the ``DLQ`` message a retry applied it from (0: a rebuild) and
``applied_at`` when, both ``NULL`` while it is missing from the model."""

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
    """Move the checkpoint forward without applying anything."""
    if checkpoint(db, projection.name) < cp:
        _set_checkpoint(db, projection.name, cp)


def set_aside(
    db: sqlite3.Connection,
    projection: Projection,
    recorded: RecordedEvent,
    sequence: int,
    dlq_sequence: int,
) -> None:
    """Move the checkpoint past an event that went to ``DLQ``, and note it; call in one
    transaction with the other projections fed with it.

    Only the ``EVENTS`` sequence moves, not the store position, which nothing vouches for
    (a later real event may carry it). Set aside again (a replay), the event is missing
    from the model again, whatever a retry did before.
    """
    cp = checkpoint(db, projection.name)
    advance(db, projection, Checkpoint(cp.position, max(cp.sequence, sequence)))
    if recorded.type not in projection.event_types:
        return  # the event misses nothing here: only the projections that take it note it
    db.execute(
        "INSERT INTO projection_dead_letters (projection, event_id, position, sequence,"
        " dlq_sequence, set_aside_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (projection, event_id) DO UPDATE SET position = excluded.position,"
        " sequence = excluded.sequence, dlq_sequence = excluded.dlq_sequence,"
        " set_aside_at = excluded.set_aside_at, applied_from = NULL, applied_at = NULL",
        (
            projection.name,
            str(recorded.id),
            recorded.position,
            sequence,
            dlq_sequence,
            datetime.now(UTC).isoformat(),
        ),
    )


@dataclass(frozen=True, slots=True)
class SetAside:
    """A projection's record of an event it set aside."""

    projection: str
    applied: bool
    """Applied since, by a retry or a rebuild."""


def set_aside_records(
    db: sqlite3.Connection, projections: Iterable[Projection], event_id: str
) -> list[SetAside]:
    """Which of ``projections`` set the event aside, and whether it was applied since."""
    names = [p.name for p in projections]
    marks = ", ".join("?" * len(names))
    rows = db.execute(
        "SELECT projection, applied_at IS NOT NULL FROM projection_dead_letters"
        f" WHERE event_id = ? AND projection IN ({marks})",
        (event_id, *names),
    ).fetchall()
    return [SetAside(str(name), bool(applied)) for name, applied in rows]


def applied_from(
    db: sqlite3.Connection, projections: Iterable[Projection], dlq_sequence: int
) -> str | None:
    """The event a retry of that ``DLQ`` message applied to one of ``projections``, if
    one did: the answer to a retry asked again after the message left ``DLQ``."""
    names = [p.name for p in projections]
    marks = ", ".join("?" * len(names))
    row = db.execute(
        "SELECT event_id FROM projection_dead_letters"
        f" WHERE applied_from = ? AND projection IN ({marks})",
        (dlq_sequence, *names),
    ).fetchone()
    return str(row[0]) if row else None


def apply_set_aside(
    db: sqlite3.Connection,
    projection: Projection,
    event: Event,
    recorded: RecordedEvent,
    dlq_sequence: int,
) -> None:
    """Apply an event the projection set aside, out of order, and mark it applied; call
    in one transaction, after :func:`set_aside_records` said it is not applied yet.

    The checkpoint's position moves up to the event's if it was lower (nothing after it
    was applied yet), so a replay of a recreated ``EVENTS`` skips it too.
    """
    projection.apply(db, event, recorded)
    cp = checkpoint(db, projection.name)
    advance(db, projection, Checkpoint(max(cp.position, recorded.position), cp.sequence))
    db.execute(
        "UPDATE projection_dead_letters SET applied_from = ?, applied_at = ?"
        " WHERE projection = ? AND event_id = ?",
        (dlq_sequence, datetime.now(UTC).isoformat(), projection.name, str(recorded.id)),
    )


def reset(db: sqlite3.Connection, projection: Projection) -> None:
    """Empty the model and its checkpoint, ready for a replay from position 0.

    The replay (a rebuild, in the same transaction) applies every stored event or fails
    and rolls this back: the events the projection had set aside count as applied.
    """
    for table in projection.tables:
        db.execute(f"DELETE FROM {table}")
    _set_checkpoint(db, projection.name, Checkpoint())
    db.execute(
        "UPDATE projection_dead_letters SET applied_from = 0, applied_at = ?"
        " WHERE projection = ? AND applied_at IS NULL",
        (datetime.now(UTC).isoformat(), projection.name),
    )


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
                    # The replay from EVENTS applies what now applies, sets aside the rest.
                    db.execute(
                        "DELETE FROM projection_dead_letters WHERE projection = ?",
                        (projection.name,),
                    )
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
