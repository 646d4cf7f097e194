"""A partner's own record: what it charged or booked, under the id ordermesh sent.

A real gateway keeps the result of every idempotency key; this one keeps it in a SQLite
file, so a charge retried after the gateway (or ordermesh) restarted gets the first
answer, and the flaky card's failure count survives a restart as well. Each call is one
transaction in the worker's thread: two retries racing on one id cannot both charge.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from infra.sqlite_worker import SQLiteWorker

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    payment_id TEXT PRIMARY KEY,
    order_id   TEXT NOT NULL,
    status     TEXT NOT NULL,   -- pending | approved | declined | refunded | voided
    amount     TEXT,
    failures   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bookings (
    shipment_id     TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    status          TEXT NOT NULL,   -- booked | refused | cancelled
    tracking_number TEXT,
    reason          TEXT
);
"""


def transaction(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """Read and decide in one write transaction: another gateway process on the same
    ledger waits instead of deciding the same payment twice."""

    def run(conn: sqlite3.Connection) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    return run


@dataclass(frozen=True, slots=True)
class Charge:
    payment_id: str
    order_id: str
    status: str
    amount: str | None
    failures: int


@dataclass(frozen=True, slots=True)
class Booking:
    shipment_id: str
    order_id: str
    status: str
    tracking_number: str | None
    reason: str | None


def open_ledger(path: Path, name: str) -> SQLiteWorker:
    """WAL with ``synchronous=NORMAL``, as the embedded event store: a decision survives
    the process's death (what the tests kill), not a power cut, and a charge costs no
    fsync. A real gateway is someone else's database; this one only has to be honest
    about what it answered."""
    return SQLiteWorker(path, SCHEMA, synchronous="NORMAL", name=name)


def charge_of(conn: sqlite3.Connection, payment_id: str) -> Charge | None:
    row = conn.execute(
        "SELECT payment_id, order_id, status, amount, failures FROM charges WHERE payment_id = ?",
        (payment_id,),
    ).fetchone()
    return Charge(*row) if row else None


def put_charge(conn: sqlite3.Connection, charge: Charge) -> None:
    conn.execute(
        "INSERT INTO charges (payment_id, order_id, status, amount, failures)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (payment_id) DO UPDATE SET"
        " status = excluded.status, amount = excluded.amount, failures = excluded.failures",
        (charge.payment_id, charge.order_id, charge.status, charge.amount, charge.failures),
    )


def booking_of(conn: sqlite3.Connection, shipment_id: str) -> Booking | None:
    row = conn.execute(
        "SELECT shipment_id, order_id, status, tracking_number, reason FROM bookings"
        " WHERE shipment_id = ?",
        (shipment_id,),
    ).fetchone()
    return Booking(*row) if row else None


def put_booking(conn: sqlite3.Connection, booking: Booking) -> None:
    conn.execute(
        "INSERT INTO bookings (shipment_id, order_id, status, tracking_number, reason)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (shipment_id) DO UPDATE SET"
        " status = excluded.status, tracking_number = excluded.tracking_number,"
        " reason = excluded.reason",
        (
            booking.shipment_id,
            booking.order_id,
            booking.status,
            booking.tracking_number,
            booking.reason,
        ),
    )
