"""The order read model: status, lines and total of every order."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ClassVar

from domain import order as o
from domain.event_store import RecordedEvent
from domain.messages import Event


class OrderProjection:
    name: ClassVar[str] = "orders"
    tables: ClassVar[tuple[str, ...]] = ("orders",)
    event_types: ClassVar[frozenset[str]] = frozenset(
        {o.OrderPlaced.TYPE, o.OrderConfirmed.TYPE, o.OrderCancelled.TYPE}
    )
    schema: ClassVar[str] = """
    CREATE TABLE IF NOT EXISTS orders (
        order_id      TEXT PRIMARY KEY,
        customer_id   TEXT    NOT NULL,
        status        TEXT    NOT NULL,
        total         TEXT    NOT NULL,
        items         TEXT    NOT NULL,
        cancel_reason TEXT,
        version       INTEGER NOT NULL,
        created_at    TEXT    NOT NULL,
        updated_at    TEXT    NOT NULL
    );
    CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, created_at);
    CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status, created_at);
    """

    def apply(self, db: sqlite3.Connection, event: Event, recorded: RecordedEvent) -> None:
        at = recorded.recorded_at.isoformat()
        match event:
            case o.OrderPlaced():
                items = json.dumps([line.model_dump(mode="json") for line in event.items])
                db.execute(
                    "INSERT INTO orders VALUES (?, ?, 'pending', ?, ?, NULL, 1, ?, ?)",
                    (event.order_id, event.customer_id, str(event.total), items, at, at),
                )
            case o.OrderConfirmed():
                db.execute(
                    "UPDATE orders SET status = 'confirmed', version = version + 1,"
                    " updated_at = ? WHERE order_id = ?",
                    (at, event.order_id),
                )
            case o.OrderCancelled():
                db.execute(
                    "UPDATE orders SET status = 'cancelled', cancel_reason = ?,"
                    " version = version + 1, updated_at = ? WHERE order_id = ?",
                    (event.reason, at, event.order_id),
                )


_ORDER_COLUMNS = (
    "order_id, customer_id, status, total, items, cancel_reason, version, created_at, updated_at"
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
