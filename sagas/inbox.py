"""The saga service's own record of which sagas it owes work to.

Fed by a projector from ``EVENTS`` (so the checkpoint is written in the same
transaction): an ``order.placed`` inserts a row, the end of its saga deletes it. On
start, every row is resumed; the saga's stream, not this table, says where it was.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from domain.event_store import RecordedEvent
from domain.messages import Event
from domain.order import OrderPlaced
from sagas.order_fulfillment import SAGA_TYPE


@dataclass(frozen=True, slots=True)
class Pending:
    saga_id: str
    event: OrderPlaced
    event_id: str
    metadata: bytes


class SagaInbox:
    name: ClassVar[str] = "saga_inbox"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("saga_inbox",)
    event_types: ClassVar[frozenset[str]] = frozenset({OrderPlaced.TYPE})
    schema: ClassVar[str] = """
    CREATE TABLE IF NOT EXISTS saga_inbox (
        saga_id     TEXT PRIMARY KEY,
        saga_type   TEXT NOT NULL,
        event_id    TEXT NOT NULL,
        event       TEXT NOT NULL,
        metadata    TEXT NOT NULL,
        position    INTEGER NOT NULL,
        received_at TEXT NOT NULL
    );
    """

    def apply(self, db: sqlite3.Connection, event: Event, recorded: RecordedEvent) -> None:
        assert isinstance(event, OrderPlaced)
        db.execute(
            "INSERT OR IGNORE INTO saga_inbox VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                event.order_id,
                SAGA_TYPE,
                str(recorded.id),
                recorded.data.decode(),
                recorded.metadata.decode(),
                recorded.position,
                datetime.now(UTC).isoformat(),
            ),
        )


def pending(db: sqlite3.Connection) -> list[Pending]:
    rows = db.execute(
        "SELECT saga_id, event, event_id, metadata FROM saga_inbox ORDER BY position"
    ).fetchall()
    return [
        Pending(saga_id, OrderPlaced.model_validate_json(event), event_id, metadata.encode())
        for saga_id, event, event_id, metadata in rows
    ]


def done(db: sqlite3.Connection, saga_id: str) -> None:
    db.execute("DELETE FROM saga_inbox WHERE saga_id = ?", (saga_id,))
