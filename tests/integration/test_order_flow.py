"""The core path over a real nats-server: command → store → relay → EVENTS → read model."""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from ordermesh.app import App
from tests.conftest import eventually, request

WIDGET = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10}
ORDER = {"order_id": "o-1", "customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 2}]}


async def stream_messages(nc: NATS, subject: str = "events.>") -> list[Any]:
    """Every message in EVENTS, read with an ephemeral ordered consumer."""
    js = nc.jetstream()
    info = await js.stream_info("EVENTS")
    total = info.state.messages
    if total == 0:
        return []
    sub = await js.subscribe(
        subject, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    try:
        msgs = []
        while len(msgs) < total:
            try:
                msgs.append(await sub.next_msg(timeout=2))
            except TimeoutError:
                break
        return msgs
    finally:
        await sub.unsubscribe()


async def query_order(nc: NATS, order_id: str) -> dict[str, Any]:
    return await request(nc, "queries.order.get", {"order_id": order_id})


async def test_plain_json_order_is_stored_relayed_and_queryable(app: App, nc: NATS) -> None:
    created = await request(nc, "commands.product.create", WIDGET)
    assert created == {
        "ok": True,
        "data": {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10},
    }
    placed = await request(nc, "commands.order.place", ORDER)
    assert placed["ok"] is True, placed
    assert placed["data"]["order_id"] == "o-1"
    assert placed["data"]["total"] == "25.00"
    assert placed["data"]["status"] == "pending"

    async def visible() -> dict[str, Any] | None:
        reply = await query_order(nc, "o-1")
        return reply["data"] if reply["ok"] else None

    order = await eventually(visible)
    assert order["order_id"] == "o-1"
    assert order["customer_id"] == "c-1"
    assert order["status"] == "pending"
    assert order["total"] == "25.00"
    assert order["items"] == [
        {"product_id": "p-1", "quantity": 2, "unit_price": "12.50", "line_total": "25.00"}
    ]
    product = await request(nc, "queries.product.get", {"product_id": "p-1"})
    assert product["ok"] and product["data"]["price"] == "12.50" and product["data"]["stock"] == 10

    msgs = await eventually(lambda: _at_least(nc, 2))
    subjects = [m.subject for m in msgs]
    assert subjects == ["events.product.created", "events.order.placed"]
    placed_msg = msgs[1]
    h = placed_msg.headers
    for header in (
        "ce-id",
        "ce-type",
        "ce-source",
        "ce-subject",
        "ce-stream",
        "ce-revision",
        "ce-position",
        "ce-correlationid",
        "ce-causationid",
        "ce-specversion",
        "ce-time",
    ):
        assert h.get(header), f"missing {header}: {h}"
    assert h["ce-type"] == "order.placed"
    assert h["ce-subject"] == "o-1"
    assert h["ce-stream"] == "order-o-1"
    assert h["ce-revision"] == "0"
    assert int(h["ce-position"]) > int(msgs[0].headers["ce-position"])
    assert h["Nats-Msg-Id"] == h["ce-id"]
    body = json.loads(placed_msg.data)
    assert body["total"] == "25.00" and body["order_id"] == "o-1"


async def _at_least(nc: NATS, n: int) -> list[Any] | None:
    msgs = await stream_messages(nc)
    return msgs if len(msgs) >= n else None


async def test_cloudevents_headers_are_carried_through(app: App, nc: NATS) -> None:
    await request(nc, "commands.product.create", WIDGET)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "cmd-123",
        "ce-type": "order.place",
        "ce-source": "test-client",
        "ce-correlationid": "corr-9",
        "traceparent": traceparent,
    }
    msg = await nc.request(
        "commands.order.place", json.dumps(ORDER).encode(), timeout=10, headers=headers
    )
    assert json.loads(msg.data)["ok"] is True
    assert not msg.headers  # replies are bare: the requester knows its own ids
    msgs = await eventually(lambda: _at_least(nc, 2))
    placed = msgs[1].headers
    assert placed["ce-causationid"] == "cmd-123"
    assert placed["ce-correlationid"] == "corr-9"
    assert placed["traceparent"] == traceparent


async def test_cancel_order(app: App, nc: NATS) -> None:
    await request(nc, "commands.product.create", WIDGET)
    await request(nc, "commands.order.place", ORDER)
    cancelled = await request(
        nc, "commands.order.cancel", {"order_id": "o-1", "reason": "changed my mind"}
    )
    assert cancelled["ok"] and cancelled["data"]["status"] == "cancelled"

    async def cancelled_in_model() -> bool:
        data = (await query_order(nc, "o-1")).get("data") or {}
        return data.get("status") == "cancelled" and data["cancel_reason"] == "changed my mind"

    await eventually(cancelled_in_model)


async def test_list_queries(app: App, nc: NATS) -> None:
    for i in range(3):
        await request(
            nc,
            "commands.product.create",
            {"product_id": f"p-{i}", "name": f"P{i}", "price": "1.00", "stock": 1},
        )
    await request(
        nc,
        "commands.order.place",
        {"order_id": "o-a", "customer_id": "c-1", "items": [{"product_id": "p-0", "quantity": 1}]},
    )
    await request(
        nc,
        "commands.order.place",
        {"order_id": "o-b", "customer_id": "c-2", "items": [{"product_id": "p-1", "quantity": 3}]},
    )

    async def listed() -> dict[str, Any] | None:
        reply = await request(nc, "queries.order.list", {})
        return reply["data"] if reply["data"]["total"] == 2 else None

    await eventually(listed)
    products = await request(nc, "queries.product.list", {"limit": 2})
    assert products["data"]["total"] == 3
    assert [p["product_id"] for p in products["data"]["items"]] == ["p-0", "p-1"]
    mine = await request(nc, "queries.order.list", {"customer_id": "c-2"})
    assert [o["order_id"] for o in mine["data"]["items"]] == ["o-b"]
    assert mine["data"]["items"][0]["total"] == "3.00"
    # An empty body is an empty query, as `nats req queries.order.list ''` sends.
    everything = await request(nc, "queries.order.list", b"")
    assert everything["ok"] and everything["data"]["total"] == 2
