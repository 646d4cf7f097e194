"""The saga read model, the order row's saga fields, their queries and schema versioning.

Events go through ``apply_batch`` for every projection, in one transaction per batch,
as the projector applies them, into a real SQLite file.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from domain.errors import SagaNotFound
from domain.event_store import RecordedEvent
from domain.inventory import StockLine
from domain.messages import Event
from domain.order import OrderCancelled, OrderConfirmed, OrderPlaced, PricedLine
from domain.product import ProductCreated
from domain.shipping import ShippingAddress
from ordermesh.read_models import open_read_models, projection_named
from projections import all_projections
from projections.base import (
    CHECKPOINT_SCHEMA,
    Checkpoint,
    apply_batch,
    checkpoint,
    ensure_schema,
)
from projections.orders import get_order, list_orders
from projections.queries import QUERY_HANDLERS, ListSagas
from projections.sagas import get_saga, list_sagas
from sagas.order_fulfillment import (
    STEPS,
    Compensated,
    Compensating,
    SagaCompleted,
    SagaFailed,
    SagaStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
STEP_TIMEOUT = timedelta(seconds=30)


def at(position: int) -> str:
    """When the event at ``position`` was recorded: one second apart, so times pin events."""
    return (T0 + timedelta(seconds=position)).isoformat()


class Feed:
    """Stores events at consecutive positions and applies each call as one batch."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.position = 0

    def __call__(self, *events: Event) -> int:
        batch = []
        for event in events:
            self.position += 1
            batch.append(
                RecordedEvent(
                    id=str(uuid.uuid4()),
                    stream=f"{event.AGGREGATE}-{event.aggregate_id()}",
                    revision=0,
                    position=self.position,
                    type=event.TYPE,
                    data=event.model_dump_json().encode(),
                    metadata=b"{}",
                    recorded_at=T0 + timedelta(seconds=self.position),
                )
            )
        self.conn.execute("BEGIN IMMEDIATE")
        applied = sum(apply_batch(self.conn, p, batch, self.position) for p in all_projections())
        self.conn.execute("COMMIT")
        return applied

    def step_started(self, saga_id: str, step: str) -> StepStarted:
        deadline = T0 + timedelta(seconds=self.position + 1) + STEP_TIMEOUT
        return StepStarted(saga_id=saga_id, step=step, deadline=deadline)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "read-models.db", isolation_level=None)
    ensure_schema(connection, all_projections())
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def feed(conn: sqlite3.Connection) -> Feed:
    return Feed(conn)


def place(feed: Feed, order_id: str, country: str | None = "DE") -> None:
    address = ShippingAddress(country=country) if country else None
    line = PricedLine(
        product_id="p-1", quantity=2, unit_price=Decimal("12.50"), line_total=Decimal("25.00")
    )
    feed(
        OrderPlaced(
            order_id=order_id,
            customer_id="c-1",
            items=[line],
            total=Decimal("25.00"),
            payment_method="invoice",
            shipping_address=address,
        ),
        SagaStarted(
            saga_id=order_id,
            order_id=order_id,
            customer_id="c-1",
            items=[StockLine(product_id="p-1", quantity=2)],
            total=Decimal("25.00"),
            payment_method="invoice",
            shipping_address=address,
        ),
    )


def order(conn: sqlite3.Connection, order_id: str) -> dict[str, Any]:
    view = get_order(conn, order_id)
    assert view is not None
    return view


def saga(conn: sqlite3.Connection, saga_id: str) -> dict[str, Any]:
    view = get_saga(conn, saga_id)
    assert view is not None
    return view


def complete_saga(feed: Feed, order_id: str) -> None:
    for step in STEPS:
        feed(feed.step_started(order_id, step))
        if step == "confirm_order":
            feed(OrderConfirmed(order_id=order_id))
        feed(StepCompleted(saga_id=order_id, step=step, attempts=1))
    feed(SagaCompleted(saga_id=order_id, order_id=order_id))


def test_happy_path_completes_every_step(conn: sqlite3.Connection, feed: Feed) -> None:
    place(feed, "o-1")
    view = order(conn, "o-1")
    assert (view["saga_status"], view["current_step"], view["version"]) == ("running", None, 2)
    assert (view["payment_method"], view["shipping_country"], view["total"]) == (
        "invoice",
        "DE",
        "25.00",
    )
    started = saga(conn, "o-1")
    assert started["saga_type"] == "order_fulfillment"
    assert (started["order_id"], started["status"], started["current_step"]) == (
        "o-1",
        "running",
        None,
    )
    assert (started["steps"], started["compensations"], started["error"]) == ([], [], None)
    assert (started["started_at"], started["finished_at"], started["version"]) == (at(2), None, 1)

    # StepStarted changes both rows; StepCompleted only the saga's.
    assert feed(feed.step_started("o-1", "reserve_inventory")) == 2
    assert order(conn, "o-1")["current_step"] == "reserve_inventory"
    assert saga(conn, "o-1")["current_step"] == "reserve_inventory"
    assert feed(StepCompleted(saga_id="o-1", step="reserve_inventory", attempts=1)) == 1

    for step in STEPS[1:]:
        feed(feed.step_started("o-1", step))
        assert order(conn, "o-1")["current_step"] == step
        if step == "confirm_order":
            feed(OrderConfirmed(order_id="o-1"))
        feed(StepCompleted(saga_id="o-1", step=step, attempts=1))
    feed(SagaCompleted(saga_id="o-1", order_id="o-1"))

    done = saga(conn, "o-1")
    assert (done["status"], done["current_step"], done["error"]) == ("completed", None, None)
    assert (done["finished_at"], done["updated_at"], done["version"]) == (at(12), at(12), 10)
    assert [s["step"] for s in done["steps"]] == list(STEPS)
    assert done["steps"][0] == {
        "step": "reserve_inventory",
        "status": "completed",
        "started_at": at(3),
        "finished_at": at(4),
        "deadline": (T0 + timedelta(seconds=3) + STEP_TIMEOUT).isoformat(),
        "attempts": 1,
        "error": None,
    }
    assert all(s["status"] == "completed" and s["attempts"] == 1 for s in done["steps"])
    assert (done["steps"][3]["started_at"], done["steps"][3]["finished_at"]) == (at(9), at(11))

    view = order(conn, "o-1")
    assert (view["status"], view["saga_status"], view["current_step"]) == (
        "confirmed",
        "completed",
        None,
    )
    # placed, saga started, 4 steps started, confirmed, saga completed
    assert (view["version"], view["updated_at"], view["created_at"]) == (8, at(12), at(1))


def test_retries_count_attempts_and_keep_the_last_error(
    conn: sqlite3.Connection, feed: Feed
) -> None:
    place(feed, "o-2", country=None)
    feed(feed.step_started("o-2", "reserve_inventory"))
    feed(StepCompleted(saga_id="o-2", step="reserve_inventory", attempts=1))
    feed(feed.step_started("o-2", "process_payment"))
    assert saga(conn, "o-2")["steps"][1]["attempts"] == 1

    feed(
        StepFailed(
            saga_id="o-2",
            step="process_payment",
            attempt=1,
            code="payment_unavailable",
            message="provider busy",
            will_retry=True,
        )
    )
    retrying = saga(conn, "o-2")
    payment = retrying["steps"][1]
    assert (retrying["status"], retrying["current_step"]) == ("running", "process_payment")
    assert (payment["status"], payment["attempts"], payment["finished_at"]) == ("running", 2, None)
    assert payment["error"] == {"code": "payment_unavailable", "message": "provider busy"}
    assert order(conn, "o-2")["current_step"] == "process_payment"

    feed(
        StepFailed(
            saga_id="o-2",
            step="process_payment",
            attempt=2,
            code="timeout",
            message="no reply",
            will_retry=True,
        )
    )
    assert saga(conn, "o-2")["steps"][1]["attempts"] == 3
    feed(StepCompleted(saga_id="o-2", step="process_payment", attempts=3))

    payment = saga(conn, "o-2")["steps"][1]
    assert (payment["status"], payment["attempts"], payment["finished_at"]) == (
        "completed",
        3,
        at(8),
    )
    assert payment["error"] == {"code": "timeout", "message": "no reply"}
    view = order(conn, "o-2")
    assert (view["shipping_country"], view["saga_status"]) == (None, "running")


def test_failure_compensates_in_order_and_fails(conn: sqlite3.Connection, feed: Feed) -> None:
    place(feed, "o-3")
    feed(feed.step_started("o-3", "reserve_inventory"))
    feed(StepCompleted(saga_id="o-3", step="reserve_inventory", attempts=1))
    feed(feed.step_started("o-3", "process_payment"))
    applied = feed(
        StepFailed(
            saga_id="o-3",
            step="process_payment",
            attempt=2,
            code="timeout",
            message="process_payment did not finish",
            will_retry=False,
        ),
        Compensating(
            saga_id="o-3",
            failed_step="process_payment",
            code="timeout",
            message="process_payment did not finish",
            actions=["refund_payment", "release_inventory", "cancel_order"],
        ),
    )
    assert applied == 3  # saga: both; order: Compensating only

    error = {
        "step": "process_payment",
        "code": "timeout",
        "message": "process_payment did not finish",
    }
    compensating = saga(conn, "o-3")
    assert (compensating["status"], compensating["current_step"]) == ("compensating", None)
    assert compensating["error"] == error
    payment = compensating["steps"][1]
    assert (payment["status"], payment["attempts"], payment["finished_at"]) == ("failed", 2, at(6))
    assert payment["error"] == {"code": "timeout", "message": "process_payment did not finish"}
    assert compensating["compensations"] == [
        {"action": "refund_payment", "status": "pending", "finished_at": None},
        {"action": "release_inventory", "status": "pending", "finished_at": None},
        {"action": "cancel_order", "status": "pending", "finished_at": None},
    ]
    view = order(conn, "o-3")
    assert (view["status"], view["saga_status"], view["current_step"]) == (
        "pending",
        "compensating",
        None,
    )

    feed(Compensated(saga_id="o-3", action="refund_payment", outcome="payment_not_found"))
    feed(Compensated(saga_id="o-3", action="release_inventory"))
    partway = saga(conn, "o-3")["compensations"]
    assert [(c["status"], c["finished_at"]) for c in partway] == [
        ("payment_not_found", at(8)),
        ("done", at(9)),
        ("pending", None),
    ]

    feed(OrderCancelled(order_id="o-3", reason="timeout"))
    feed(
        Compensated(saga_id="o-3", action="cancel_order"),
        SagaFailed(
            saga_id="o-3",
            order_id="o-3",
            failed_step="process_payment",
            code="timeout",
            message="process_payment did not finish",
        ),
    )
    failed = saga(conn, "o-3")
    assert (failed["status"], failed["current_step"], failed["finished_at"]) == (
        "failed",
        None,
        at(12),
    )
    assert failed["error"] == error
    assert [c["status"] for c in failed["compensations"]] == ["payment_not_found", "done", "done"]
    assert [s["status"] for s in failed["steps"]] == ["completed", "failed"]
    # started + 2 step started + 1 completed + failed + compensating + 3 compensated + failed
    assert failed["version"] == 10

    view = order(conn, "o-3")
    assert (view["status"], view["cancel_reason"]) == ("cancelled", "timeout")
    assert (view["saga_status"], view["current_step"], view["version"]) == ("failed", None, 7)


def query(conn: sqlite3.Connection, type_: str, body: dict[str, Any]) -> dict[str, Any]:
    model, handler = QUERY_HANDLERS[type_]
    return handler(conn, model.model_validate(body))


def test_saga_queries(conn: sqlite3.Connection, feed: Feed) -> None:
    place(feed, "o-a")
    complete_saga(feed, "o-a")
    place(feed, "o-b")
    place(feed, "o-c")
    feed(feed.step_started("o-c", "reserve_inventory"))
    feed(
        StepFailed(
            saga_id="o-c",
            step="reserve_inventory",
            attempt=1,
            code="insufficient_stock",
            message="p-1: 0 left",
            will_retry=False,
        ),
        Compensating(
            saga_id="o-c",
            failed_step="reserve_inventory",
            code="insufficient_stock",
            message="p-1: 0 left",
            actions=["cancel_order"],
        ),
    )

    got = query(conn, "saga.get", {"saga_id": "o-c"})
    assert got == saga(conn, "o-c")
    assert (got["status"], got["error"]["code"]) == ("compensating", "insufficient_stock")
    with pytest.raises(SagaNotFound) as missing:
        query(conn, "saga.get", {"saga_id": "nope"})
    assert missing.value.code == "saga_not_found"
    assert missing.value.details == {"saga_id": "nope"}

    everything = query(conn, "saga.list", {})
    assert [s["saga_id"] for s in everything["items"]] == ["o-c", "o-b", "o-a"]
    assert (everything["total"], everything["limit"], everything["offset"]) == (3, 100, 0)
    running = query(conn, "saga.list", {"status": "running"})
    assert ([s["saga_id"] for s in running["items"]], running["total"]) == (["o-b"], 1)
    completed = list_sagas(conn, status="completed", limit=10, offset=0)
    assert [s["saga_id"] for s in completed["items"]] == ["o-a"]
    assert completed["items"][0]["steps"][0]["step"] == "reserve_inventory"
    page = query(conn, "saga.list", {"limit": 1, "offset": 1})
    assert ([s["saga_id"] for s in page["items"]], page["total"]) == (["o-b"], 3)
    assert query(conn, "saga.list", {"status": "failed"}) == {
        "items": [],
        "total": 0,
        "limit": 100,
        "offset": 0,
    }
    with pytest.raises(ValidationError):
        ListSagas.model_validate({"status": "stuck"})
    with pytest.raises(ValidationError):
        ListSagas.model_validate({"limit": 0})

    orders = list_orders(conn, customer_id="c-1", status=None, limit=10, offset=0)
    assert [(o["order_id"], o["saga_status"], o["current_step"]) for o in orders["items"]] == [
        ("o-c", "compensating", None),
        ("o-b", "running", None),
        ("o-a", "completed", None),
    ]
    assert query(conn, "order.get", {"order_id": "o-a"})["status"] == "confirmed"


# -- schema versioning --------------------------------------------------------------------

OLD_ORDERS_SCHEMA = """
CREATE TABLE orders (
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
CREATE INDEX orders_by_status ON orders (status, created_at);
"""


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


async def test_old_orders_table_is_replaced_and_its_checkpoint_zeroed(tmp_path: Path) -> None:
    path = tmp_path / "read-models.db"
    old = sqlite3.connect(path, isolation_level=None)
    products_schema = next(p.schema for p in all_projections() if p.name == "products")
    old.executescript(CHECKPOINT_SCHEMA + OLD_ORDERS_SCHEMA + products_schema)
    old.execute(
        "INSERT INTO orders VALUES ('o-1', 'c-1', 'pending', '1.00', '[]', NULL, 1, ?, ?)",
        (at(1), at(1)),
    )
    old.execute("INSERT INTO products VALUES ('p-1', 'n', '1.00', 5, 1, ?, ?)", (at(1), at(1)))
    old.execute(
        "INSERT INTO projection_checkpoints VALUES ('orders', 7, 7, ?), ('products', 7, 7, ?)",
        (at(7), at(7)),
    )
    old.close()

    def inspect(conn: sqlite3.Connection) -> dict[str, Any]:
        return {
            "orders": columns(conn, "orders"),
            "rows": conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0],
            "products": conn.execute("SELECT COUNT(*) FROM products").fetchone()[0],
            "sagas": columns(conn, "sagas"),
            "checkpoints": {n: checkpoint(conn, n) for n in ("orders", "products", "sagas")},
            "versions": dict(conn.execute("SELECT name, version FROM projection_versions")),
        }

    db = open_read_models(path)
    try:
        opened = await db.run(inspect)
        await db.run(lambda c: apply_batch(c, projection_named("orders"), [], sequence=9))
    finally:
        await db.close()

    assert {"payment_method", "shipping_country", "saga_status", "current_step"} <= set(
        opened["orders"]
    )
    assert opened["rows"] == 0
    assert opened["checkpoints"]["orders"] == Checkpoint()
    # Products kept its shape, so neither its rows nor its checkpoint were touched.
    assert (opened["products"], opened["checkpoints"]["products"]) == (1, Checkpoint(7, 7))
    assert "steps" in opened["sagas"] and opened["checkpoints"]["sagas"] == Checkpoint()
    assert opened["versions"] == {"products": 1, "orders": 2, "sagas": 1}

    # Reopening at the same versions replaces nothing.
    again = open_read_models(path)
    try:
        reopened = await again.run(inspect)
    finally:
        await again.close()
    assert reopened["checkpoints"]["orders"] == Checkpoint(0, 9)
    assert reopened["products"] == 1


def test_a_version_change_replaces_tables_of_the_same_shape(conn: sqlite3.Connection) -> None:
    feed = Feed(conn)
    feed(ProductCreated(product_id="p-1", name="n", price=Decimal("1.00"), stock=5))
    assert checkpoint(conn, "products") == Checkpoint(1, 1)
    conn.execute("UPDATE projection_versions SET version = 0 WHERE name = 'products'")

    assert ensure_schema(conn, all_projections()) == ["products"]
    assert conn.execute("SELECT COUNT(*) FROM products").fetchone()[0] == 0
    assert checkpoint(conn, "products") == Checkpoint()
    assert ensure_schema(conn, all_projections()) == []
