"""The order read model: status, lines and total of every order, and where its saga is."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ClassVar

from domain import order as o
from domain.event_store import RecordedEvent
from domain.messages import Event
from sagas import order_fulfillment as f


class OrderProjection:
    name: ClassVar[str] = "orders"
    version: ClassVar[int] = 2
    tables: ClassVar[tuple[str, ...]] = ("orders",)
    # Only the saga transitions that change the row: the rest would count as applied.
    event_types: ClassVar[frozenset[str]] = frozenset(
        {
            o.OrderPlaced.TYPE,
            o.OrderConfirmed.TYPE,
            o.OrderCancelled.TYPE,
            f.SagaStarted.TYPE,
            f.StepStarted.TYPE,
            f.Compensating.TYPE,
            f.SagaCompleted.TYPE,
            f.SagaFailed.TYPE,
        }
    )
    schema: ClassVar[str] = """
    CREATE TABLE IF NOT EXISTS orders (
        order_id         TEXT PRIMARY KEY,
        customer_id      TEXT    NOT NULL,
        status           TEXT    NOT NULL,
        total            TEXT    NOT NULL,
        items            TEXT    NOT NULL,
        payment_method   TEXT    NOT NULL,
        shipping_country TEXT,
        saga_status      TEXT,
        current_step     TEXT,
        cancel_reason    TEXT,
        version          INTEGER NOT NULL,
        created_at       TEXT    NOT NULL,
        updated_at       TEXT    NOT NULL
    );
    CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, created_at);
    CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, created_at);
    """

    def apply(self, db: sqlite3.Connection, event: Event, recorded: RecordedEvent) -> None:
        at = recorded.recorded_at.isoformat()
        match event:
            case o.OrderPlaced():
                items = json.dumps([line.model_dump(mode="json") for line in event.items])
                country = event.shipping_address.country if event.shipping_address else None
                db.execute(
                    "INSERT INTO orders (order_id, customer_id, status, total, items,"
                    " payment_method, shipping_country, version, created_at, updated_at)"
                    " VALUES (?, ?, 'pending', ?, ?, ?, ?, 1, ?, ?)",
                    (
                        event.order_id,
                        event.customer_id,
                        str(event.total),
                        items,
                        event.payment_method,
                        country,
                        at,
                        at,
                    ),
                )
            case o.OrderConfirmed():
                self._update(db, event.order_id, at, "status = 'confirmed'")
            case o.OrderCancelled():
                self._update(
                    db, event.order_id, at, "status = 'cancelled', cancel_reason = ?", event.reason
                )
            # The saga's id is its order's id.
            case f.SagaStarted():
                self._saga(db, event.order_id, at, "running")
            case f.StepStarted():
                self._update(db, event.saga_id, at, "current_step = ?", event.step)
            case f.Compensating():
                self._saga(db, event.saga_id, at, "compensating")
            case f.SagaCompleted():
                self._saga(db, event.order_id, at, "completed")
            case f.SagaFailed():
                self._saga(db, event.order_id, at, "failed")

    @classmethod
    def _saga(cls, db: sqlite3.Connection, order_id: str, at: str, status: str) -> None:
        """Every saga status change leaves any step; the next ``StepStarted`` names the new one."""
        cls._update(db, order_id, at, "saga_status = ?, current_step = NULL", status)

    @staticmethod
    def _update(db: sqlite3.Connection, order_id: str, at: str, change: str, *values: Any) -> None:
        db.execute(
            f"UPDATE orders SET {change}, version = version + 1, updated_at = ? WHERE order_id = ?",
            (*values, at, order_id),
        )


_ORDER_COLUMNS = (
    "order_id, customer_id, status, total, items, payment_method, shipping_country,"
    " saga_status, current_step, cancel_reason, version, created_at, updated_at"
)


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    view = dict(zip(_ORDER_COLUMNS.split(", "), row, strict=True))
    view["items"] = json.loads(view["items"])
    return view


def get_order(db: sqlite3.Connection, order_id: str) -> dict[str, Any] | None:
    row = db.execute(
        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = ?", (order_id,)
    ).fetchone()
    return _row(row) if row else None


def list_orders(
    db: sqlite3.Connection,
    *,
    customer_id: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    where, args = [], []
    if customer_id is not None:
        where.append("customer_id = ?")
        args.append(customer_id)
    if status is not None:
        where.append("status = ?")
        args.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.execute(
        f"SELECT {_ORDER_COLUMNS} FROM orders {clause}"
        " ORDER BY created_at DESC, order_id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    (total,) = db.execute(f"SELECT COUNT(*) FROM orders {clause}", args).fetchone()
    return {"items": [_row(r) for r in rows], "total": total, "limit": limit, "offset": offset}
