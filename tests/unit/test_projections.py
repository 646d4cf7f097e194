"""Projections are plain SQL: checkpointed, idempotent, skipping foreign events."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime

from domain.event_store import RecordedEvent
from domain.messages import Event
from domain.product import ProductCreated, Restocked
from projections import ProductProjection, all_projections
from projections.base import CHECKPOINT_SCHEMA, Checkpoint, apply_batch, checkpoint, reset
from projections.products import get_product


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(CHECKPOINT_SCHEMA + "".join(p.schema for p in all_projections()))
    return conn


def rec(position: int, event: Event | None = None, type_: str | None = None) -> RecordedEvent:
    return RecordedEvent(
        id=str(uuid.uuid4()),
        stream="product-p",
        revision=position - 1,
        position=position,
        type=type_ or (event.TYPE if event else "x"),
        data=event.model_dump_json().encode() if event else b"{}",
        metadata=b"{}",
        recorded_at=datetime.now(UTC),
    )


def test_apply_is_idempotent_by_position() -> None:
    conn = db()
    projection = ProductProjection()
    created = rec(1, ProductCreated(product_id="p", name="n", price="1.00", stock=1))  # type: ignore[arg-type]
    restocked = rec(2, Restocked(product_id="p", quantity=4, stock=5))
    foreign = rec(3, type_="saga.something")
    assert apply_batch(conn, projection, [created, restocked, foreign], sequence=3) == 2
    assert checkpoint(conn, "products") == Checkpoint(3, 3)
    assert apply_batch(conn, projection, [restocked], sequence=2) == 0
    view = get_product(conn, "p")
    assert view is not None and (view["stock"], view["version"], view["price"]) == (5, 2, "1.00")


def test_reset_empties_model_and_checkpoint() -> None:
    conn = db()
    projection = ProductProjection()
    apply_batch(
        conn,
        projection,
        [rec(1, ProductCreated(product_id="p", name="n", price="1.00", stock=1))],  # type: ignore[arg-type]
    )
    reset(conn, projection)
    assert get_product(conn, "p") is None
    assert checkpoint(conn, "products") == Checkpoint()
