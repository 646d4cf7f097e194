"""The projection contract and the checkpointed apply that makes its effect exactly-once.

Delivery from JetStream is at-least-once. The checkpoint (the last applied global
store position) is written in the same transaction as the read-model change, and an
event at or below it is skipped, so a redelivery after a crash changes nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from domain.catalog import decode_event
from domain.event_store import RecordedEvent
from domain.messages import Event

CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL
);
"""


class Projection(Protocol):
    name: ClassVar[str]
    schema: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    event_types: ClassVar[frozenset[str]]

    def apply(self, db: sqlite3.Connection, event: Event, recorded: RecordedEvent) -> None: ...


def checkpoint(db: sqlite3.Connection, name: str) -> int:
    row = db.execute(
        "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
    ).fetchone()
    return int(row[0]) if row else 0


def _set_checkpoint(db: sqlite3.Connection, name: str, position: int) -> None:
    db.execute(
        "INSERT INTO projection_checkpoints (name, position, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
        " updated_at = excluded.updated_at",
        (name, position, datetime.now(UTC).isoformat()),
    )


def apply_batch(
    db: sqlite3.Connection, projection: Projection, batch: Iterable[RecordedEvent]
) -> int:
    """Apply events above the checkpoint and advance it; call inside one transaction.

    Returns how many events changed the model (skipped duplicates and foreign types
    do not count).
    """
    position = checkpoint(db, projection.name)
    start = position
    applied = 0
    for recorded in batch:
        if recorded.position <= position:
            continue
        position = recorded.position
        if recorded.type in projection.event_types:
            projection.apply(db, decode_event(recorded.type, recorded.data), recorded)
            applied += 1
    if position != start:
        _set_checkpoint(db, projection.name, position)
    return applied


def reset(db: sqlite3.Connection, projection: Projection) -> None:
    """Empty the model and its checkpoint, ready for a replay from position 0."""
    for table in projection.tables:
        db.execute(f"DELETE FROM {table}")
    _set_checkpoint(db, projection.name, 0)
