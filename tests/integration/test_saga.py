"""The order fulfilment saga over a real nats-server: every path, lifecycle messages,
conservation under a mixed load of 500 orders."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from domain.event_store import EventStore
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from ordermesh.child import PartnersProcess
from tests.conftest import FAST, WITHOUT_PARTNERS, eventually, request, settings_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

TERMINAL = {"confirmed", "cancelled"}


async def create_product(nc: NATS, product_id: str, stock: int, price: str = "10.00") -> None:
    reply = await request(
        nc,
        "commands.product.create",
        {"product_id": product_id, "name": product_id, "price": price, "stock": stock},
    )
    assert reply["ok"], reply


async def place(nc: NATS, order_id: str, items: list[tuple[str, int]], **extra: Any) -> None:
    body = {
        "order_id": order_id,
        "customer_id": "c-1",
        "items": [{"product_id": p, "quantity": q} for p, q in items],
        **extra,
    }
    reply = await request(nc, "commands.order.place", body, headers={"traceparent": TRACEPARENT})
    assert reply["ok"], reply


async def settled(nc: NATS, order_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The order once its saga has finished, as the read model shows it."""

    async def done() -> dict[str, Any] | None:
        reply = await request(nc, "queries.order.get", {"order_id": order_id})
        if not reply["ok"]:
            return None
        order: dict[str, Any] = reply["data"]
        ended = order["saga_status"] in ("completed", "failed")
        return order if ended and order["status"] in TERMINAL else None

    result: dict[str, Any] = await eventually(done, timeout=timeout)
    return result


async def saga(nc: NATS, saga_id: str) -> dict[str, Any]:
    reply = await request(nc, "queries.saga.get", {"saga_id": saga_id})
    assert reply["ok"], reply
    data: dict[str, Any] = reply["data"]
    return data


async def types_in(store: EventStore | None, stream: str) -> list[str]:
    assert store is not None
    return [e.type for e in await store.read_stream(stream)]


async def product_stock(store: EventStore | None, product_id: str) -> int:
    """Stock as the product stream itself says (the source of truth, not the read model)."""
    assert store is not None
    stock = 0
    for e in await store.read_stream(f"product-{product_id}"):
        data = json.loads(e.data)
        if "stock" in data:
            stock = data["stock"]
    return stock


async def test_happy_path_confirms_and_keeps_the_stock_reserved(saga_app: App, nc: NATS) -> None:
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 3)], shipping_address={"country": "DE", "city": "Berlin"})

    order = await settled(nc, "o-1")
    assert (order["status"], order["saga_status"], order["current_step"]) == (
        "confirmed",
        "completed",
        None,
    )
    assert order["cancel_reason"] is None
    view = await saga(nc, "o-1")
    assert view["status"] == "completed"
    assert [(s["step"], s["status"], s["attempts"]) for s in view["steps"]] == [
        ("reserve_inventory", "completed", 1),
        ("process_payment", "completed", 1),
        ("arrange_shipping", "completed", 1),
        ("confirm_order", "completed", 1),
    ]
    assert view["compensations"] == []
    assert await product_stock(saga_app.store, "p-1") == 7
    assert await types_in(saga_app.store, "payment-o-1") == ["payment.processed"]
    assert await types_in(saga_app.store, "shipment-o-1") == ["shipment.arranged"]

    async def product_view_updated() -> bool:
        reply = await request(nc, "queries.product.get", {"product_id": "p-1"})
        return bool(reply["data"]["stock"] == 7)

    await eventually(product_view_updated)


async def test_out_of_stock_cancels_without_reserving_anything(saga_app: App, nc: NATS) -> None:
    await create_product(nc, "p-1", 10)
    await create_product(nc, "p-2", 1)
    await place(nc, "o-1", [("p-1", 2), ("p-2", 5)])

    order = await settled(nc, "o-1")
    assert (order["status"], order["cancel_reason"], order["saga_status"]) == (
        "cancelled",
        "insufficient_stock",
        "failed",
    )
    assert await product_stock(saga_app.store, "p-1") == 10
    assert await product_stock(saga_app.store, "p-2") == 1
    # p-1 was held and given back before the refusal was answered.
    assert await types_in(saga_app.store, "product-p-1") == [
        "product.created",
        "product.stock_reserved",
        "product.stock_released",
    ]
    assert await types_in(saga_app.store, "inventory-o-1") == ["inventory.reservation_failed"]
    assert await types_in(saga_app.store, "payment-o-1") == []
    view = await saga(nc, "o-1")
    assert view["error"]["code"] == "insufficient_stock"
    assert [c["action"] for c in view["compensations"]] == ["cancel_order"]


async def test_declined_card_releases_the_stock_and_cancels(saga_app: App, nc: NATS) -> None:
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 4)], payment_method="declined-card")

    order = await settled(nc, "o-1")
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "payment_declined")
    assert await product_stock(saga_app.store, "p-1") == 10
    assert await types_in(saga_app.store, "payment-o-1") == ["payment.declined"]
    assert await types_in(saga_app.store, "inventory-o-1") == [
        "inventory.reserved",
        "inventory.released",
    ]
    view = await saga(nc, "o-1")
    assert [(c["action"], c["status"]) for c in view["compensations"]] == [
        ("release_inventory", "done"),
        ("cancel_order", "done"),
    ]


async def test_restricted_area_refunds_releases_and_cancels(saga_app: App, nc: NATS) -> None:
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 2)], shipping_address={"country": "XX"})

    order = await settled(nc, "o-1")
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "restricted_area")
    assert await product_stock(saga_app.store, "p-1") == 10
    assert await types_in(saga_app.store, "payment-o-1") == [
        "payment.processed",
        "payment.refunded",
    ]
    assert await types_in(saga_app.store, "shipment-o-1") == ["shipment.failed"]
    view = await saga(nc, "o-1")
    assert [c["action"] for c in view["compensations"]] == [
        "refund_payment",
        "release_inventory",
        "cancel_order",
    ]


async def test_slow_card_times_out_and_compensates(saga_app: App, nc: NATS) -> None:
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 1)], payment_method="slow-card")

    order = await settled(nc, "o-1")
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "timeout")
    assert await product_stock(saga_app.store, "p-1") == 10
    # The payment never answered: its refund leaves a tombstone so a late charge is refused.
    assert await types_in(saga_app.store, "payment-o-1") == ["payment.voided"]
    view = await saga(nc, "o-1")
    payment = view["steps"][1]
    assert (payment["step"], payment["status"]) == ("process_payment", "failed")
    assert payment["error"]["code"] == "timeout"
    # attempt_timeout 0.5 s within a 1.5 s step: retried before giving up.
    assert payment["attempts"] >= 2
    late = await request(
        nc,
        "commands.payment.process",
        {"order_id": "o-1", "amount": "10.00", "method": "card"},
    )
    assert late["ok"] is False and late["error"]["code"] == "invalid_state"


async def test_flaky_card_is_confirmed_after_retries(saga_app: App, nc: NATS) -> None:
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 1)], payment_method="flaky-card")

    order = await settled(nc, "o-1")
    assert order["status"] == "confirmed"
    view = await saga(nc, "o-1")
    payment = view["steps"][1]
    assert (payment["step"], payment["status"], payment["attempts"]) == (
        "process_payment",
        "completed",
        3,
    )
    assert payment["error"]["code"] == "payment_unavailable"
    assert await types_in(saga_app.store, "payment-o-1") == ["payment.processed"]


async def test_lifecycle_messages_carry_cloudevents_headers_and_the_trace(
    saga_app: App, nc: NATS
) -> None:
    seen: list[Msg] = []
    finished = asyncio.Event()

    async def collect(msg: Msg) -> None:
        seen.append(msg)
        if msg.subject == "sagas.order_fulfillment.completed":
            finished.set()

    sub = await nc.subscribe("sagas.>", cb=collect)
    await nc.flush()
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 1)])
    async with asyncio.timeout(20):
        await finished.wait()
    await sub.unsubscribe()

    transitions = [m.subject.removeprefix("sagas.order_fulfillment.") for m in seen]
    assert transitions == [
        "started",
        "step_started",
        *(["step_completed", "step_started"] * 3),
        "step_completed",
        "completed",
    ]
    placed_correlation = None
    for msg in seen:
        h = msg.headers or {}
        assert h["ce-specversion"] == "1.0"
        assert h["ce-type"] == "order_fulfillment." + msg.subject.rsplit(".", 1)[-1]
        assert h["ce-source"] == "ordermesh.saga"
        assert h["ce-subject"] == "o-1"
        assert h["ce-stream"] == "saga-order_fulfillment-o-1"
        assert h["traceparent"].split("-")[1] == TRACE_ID
        placed_correlation = placed_correlation or h["ce-correlationid"]
        assert h["ce-correlationid"] == placed_correlation
    assert json.loads(seen[0].data)["order_id"] == "o-1"


async def test_compensating_transitions_are_published(saga_app: App, nc: NATS) -> None:
    seen: list[str] = []
    failed = asyncio.Event()

    async def collect(msg: Msg) -> None:
        seen.append(msg.subject.removeprefix("sagas.order_fulfillment."))
        if msg.subject.endswith(".failed"):
            failed.set()

    sub = await nc.subscribe("sagas.order_fulfillment.>", cb=collect)
    await nc.flush()
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 1)], payment_method="declined-card")
    async with asyncio.timeout(20):
        await failed.wait()
    await sub.unsubscribe()
    assert seen[-5:] == ["step_failed", "compensating", "compensated", "compensated", "failed"]


# -- conservation under load -----------------------------------------------------------------


PATHS = (
    ("card", None),
    ("card", None),
    ("card", None),
    ("declined-card", None),
    ("flaky-card", None),
    ("card", "XX"),
)


async def check_conservation(
    nc: NATS, store: EventStore | None, initial: dict[str, int], orders: dict[str, list[Any]]
) -> Counter[str]:
    """Stock = initial - confirmed quantities; no cancelled order keeps a charge."""
    outcomes: Counter[str] = Counter()
    confirmed: Counter[str] = Counter()
    for order_id, items in orders.items():
        reply = await request(nc, "queries.order.get", {"order_id": order_id})
        status = reply["data"]["status"]
        outcomes[reply["data"]["cancel_reason"] or status] += 1
        payments = await types_in(store, f"payment-{order_id}")
        if status == "confirmed":
            for product_id, quantity in items:
                confirmed[product_id] += quantity
            assert payments == ["payment.processed"], order_id
        else:
            assert status == "cancelled", order_id
            charged = payments.count("payment.processed")
            assert charged == payments.count("payment.refunded"), (order_id, payments)
    for product_id, stock in initial.items():
        assert await product_stock(store, product_id) == stock - confirmed[product_id], product_id
    return outcomes


async def test_500_mixed_orders_all_end_and_conserve_stock(saga_app: App, nc: NATS) -> None:
    rng = random.Random(7)
    initial = {"p-1": 300, "p-2": 120, "p-3": 40}
    for product_id, stock in initial.items():
        await create_product(nc, product_id, stock)
    orders: dict[str, list[Any]] = {}
    slots = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        order_id = f"o-{i}"
        method, country = PATHS[i % len(PATHS)]
        if i % 50 == 7:
            method = "slow-card"  # a few time out, under load, and compensate
        items = [(p, rng.randint(1, 3)) for p in rng.sample(sorted(initial), rng.randint(1, 2))]
        orders[order_id] = items
        extra: dict[str, Any] = {"payment_method": method}
        if country:
            extra["shipping_address"] = {"country": country}
        async with slots:
            await place(nc, order_id, items, **extra)

    await asyncio.gather(*(one(i) for i in range(500)))

    async def all_ended() -> bool:
        reply = await request(nc, "queries.saga.list", {"status": "completed", "limit": 1})
        done = reply["data"]["total"]
        reply = await request(nc, "queries.saga.list", {"status": "failed", "limit": 1})
        return bool(done + reply["data"]["total"] == 500)

    await eventually(all_ended, timeout=90, interval=0.2)
    for status in ("running", "compensating"):
        reply = await request(nc, "queries.saga.list", {"status": status})
        assert reply["data"]["total"] == 0, reply["data"]["items"][:3]

    outcomes = await check_conservation(nc, saga_app.store, initial, orders)
    # Every path ran: stock ran out part-way, so insufficient_stock is among them too.
    assert set(outcomes) == {
        "confirmed",
        "payment_declined",
        "restricted_area",
        "insufficient_stock",
        "timeout",
    }, outcomes
    assert sum(outcomes.values()) == 500
    assert saga_app.sagas is not None and saga_app.sagas.active == 0


async def test_seeded_failure_rate_declines_card_payments(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    """The failure rate is the gateway's setting: its process is given it."""
    settings = settings_for(nats_server, tmp_path / "data", saga=FAST, sim_failure_rate=1.0)
    application = App(settings, WITHOUT_PARTNERS)
    partners = PartnersProcess(nats_server.url, settings)
    await asyncio.gather(application.start(), partners.start())
    try:
        await create_product(nc, "p-1", 10)
        await place(nc, "o-1", [("p-1", 1)])
        order = await settled(nc, "o-1")
        assert (order["status"], order["cancel_reason"]) == ("cancelled", "payment_declined")
        assert await product_stock(application.store, "p-1") == 10
    finally:
        await application.stop()
        await partners.stop()
