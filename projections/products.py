"""The product read model: catalogue, current price and stock."""

from __future__ import annotations

import sqlite3
from typing import Any, ClassVar

from domain import product as p
from domain.event_store import RecordedEvent
from domain.messages import Event


class ProductProjection:
    name: ClassVar[str] = "products"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("products",)
    event_types: ClassVar[frozenset[str]] = frozenset(
        {
            p.ProductCreated.TYPE,
            p.PriceChanged.TYPE,
            p.Restocked.TYPE,
            p.StockReserved.TYPE,
            p.StockReleased.TYPE,
        }
    )
    schema: ClassVar[str] = """
    CREATE TABLE IF NOT EXISTS products (
        product_id TEXT PRIMARY KEY,
        name       TEXT    NOT NULL,
        price      TEXT    NOT NULL,
        stock      INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        created_at TEXT    NOT NULL,
        updated_at TEXT    NOT NULL
    );
    """

    def apply(self, db: sqlite3.Connection, event: Event, recorded: RecordedEvent) -> None:
        at = recorded.recorded_at.isoformat()
        match event:
            case p.ProductCreated():
                db.execute(
                    "INSERT INTO products VALUES (?, ?, ?, ?, 1, ?, ?)",
                    (event.product_id, event.name, str(event.price), event.stock, at, at),
                )
            case p.PriceChanged():
                self._update(db, event.product_id, at, "price = ?", str(event.price))
            # Stock moves as deltas, so an event applied twice would show in the stock.
            case p.Restocked():
                self._update(db, event.product_id, at, "stock = stock + ?", event.quantity)
            case p.StockReserved():
                self._update(db, event.product_id, at, "stock = stock - ?", event.quantity)
            case p.StockReleased():
                self._update(db, event.product_id, at, "stock = stock + ?", event.quantity)

    @staticmethod
    def _update(db: sqlite3.Connection, product_id: str, at: str, change: str, value: Any) -> None:
        db.execute(
            f"UPDATE products SET {change}, version = version + 1, updated_at = ?"
            " WHERE product_id = ?",
            (value, at, product_id),
        )


_PRODUCT_COLUMNS = "product_id, name, price, stock, version, created_at, updated_at"


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_PRODUCT_COLUMNS.split(", "), row, strict=True))


def get_product(db: sqlite3.Connection, product_id: str) -> dict[str, Any] | None:
    row = db.execute(
        f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE product_id = ?", (product_id,)
    ).fetchone()
    return _row(row) if row else None


def list_products(db: sqlite3.Connection, limit: int, offset: int) -> dict[str, Any]:
    rows = db.execute(
        f"SELECT {_PRODUCT_COLUMNS} FROM products ORDER BY product_id LIMIT ? OFFSET ?",
        (limit, offset),
    ).fetchall()
    (total,) = db.execute("SELECT COUNT(*) FROM products").fetchone()
    return {"items": [_row(r) for r in rows], "total": total, "limit": limit, "offset": offset}
