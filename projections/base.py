"""The projection contract and the checkpointed apply that makes its effect exactly-once.

The checkpoint — the last applied global store position, and the ``EVENTS`` sequence
it arrived with — is written in the same transaction as the read-model change. A
feeder resumes after that sequence, and an event at or below the position is skipped,
so neither a crash nor a replay can apply an event twice or skip one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol

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


class Projection(Protocol):
    name: ClassVar[str]
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


def reset(db: sqlite3.Connection, projection: Projection) -> None:
    """Empty the model and its checkpoint, ready for a replay from position 0."""
    for table in projection.tables:
        db.execute(f"DELETE FROM {table}")
    _set_checkpoint(db, projection.name, Checkpoint())
