"""Bad input over a real nats-server: a clear ``ok: false`` reply, a log line, no write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from nats.aio.client import Client as NATS

from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from tests.conftest import CORE_SERVICES, events_in_stream, eventually, request, settings_for
from tests.integration.test_order_flow import stream_messages

WIDGET = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10}


def order(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "items": [{"product_id": "p-1", "quantity": 2}],
    }
    body.update(overrides)
    return body


async def stored_count(app: App) -> int:
    assert app.store is not None
    return len(await app.store.read_all(0, 10_000))


CASES: list[tuple[str, str, Any, str]] = [
    ("malformed json", "commands.order.place", b'{"order_id": "o-1", ', "malformed_json"),
    ("not an object", "commands.order.place", [1, 2], "validation_error"),
    ("missing field", "commands.order.place", {"order_id": "o-1", "items": []}, "validation_error"),
    ("wrong type", "commands.order.place", order(customer_id=42), "validation_error"),
    (
        "quantity as string",
        "commands.order.place",
        order(items=[{"product_id": "p-1", "quantity": "2"}]),
        "validation_error",
    ),
    (
        "negative quantity",
        "commands.order.place",
        order(items=[{"product_id": "p-1", "quantity": -1}]),
        "validation_error",
    ),
    (
        "zero quantity",
        "commands.order.place",
        order(items=[{"product_id": "p-1", "quantity": 0}]),
        "validation_error",
    ),
    ("no items", "commands.order.place", order(items=[]), "validation_error"),
    ("extra field", "commands.order.place", order(coupon="FREE"), "validation_error"),
    ("bad id alphabet", "commands.order.place", order(order_id="o 1/../x"), "validation_error"),
    (
        "unknown product",
        "commands.order.place",
        order(items=[{"product_id": "nope", "quantity": 1}]),
        "product_not_found",
    ),
    (
        "one product past a line's limit",
        "commands.order.place",
        order(items=[{"product_id": "p-1", "quantity": 1_000_000}] * 100),
        "validation_error",  # one product's lines add up past a line's limit
    ),
    (
        "total past the money limit",
        "commands.order.place",
        order(items=[{"product_id": f"p-{i}", "quantity": 1_000_000} for i in range(1, 82)]),
        "amount_too_large",
    ),
    ("unknown command", "commands.order.teleport", order(), "unknown_command"),
    (
        "price as float",
        "commands.product.create",
        {**WIDGET, "product_id": "p-2", "price": 12.5},
        "validation_error",
    ),
    (
        "price with 3 places",
        "commands.product.create",
        {**WIDGET, "product_id": "p-2", "price": "1.005"},
        "validation_error",
    ),
    (
        "negative price",
        "commands.product.change_price",
        {"product_id": "p-1", "price": "-1.00"},
        "validation_error",
    ),
    ("duplicate product", "commands.product.create", WIDGET, "product_already_exists"),
    (
        "restock unknown product",
        "commands.product.restock",
        {"product_id": "ghost", "quantity": 1},
        "product_not_found",
    ),
    ("cancel unknown order", "commands.order.cancel", {"order_id": "ghost"}, "order_not_found"),
    ("unknown query", "queries.order.teleport", {}, "unknown_query"),
    ("query unknown id", "queries.order.get", {"order_id": "ghost"}, "order_not_found"),
    ("query bad schema", "queries.product.list", {"limit": 0}, "validation_error"),
    ("query malformed", "queries.product.get", b"{{", "malformed_json"),
]


@pytest.mark.parametrize(
    ("subject", "body", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_input_is_refused_and_writes_nothing(
    app: App, nc: NATS, subject: str, body: Any, code: str
) -> None:
    # The catalogue: every p-<n> the body names, priced 12.50 (81 lines of a million pass
    # the money limit); "nope" stays unknown.
    items = body.get("items", []) if isinstance(body, dict) else []
    named = {
        i["product_id"]
        for i in items
        if isinstance(i, dict) and str(i.get("product_id", "")).startswith("p-")
    }
    for product_id in sorted(named | {"p-1"}):
        product = WIDGET | {"product_id": product_id}
        assert (await request(nc, "commands.product.create", product))["ok"]
    before = await stored_count(app)
    reply = await request(nc, subject, body)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    assert "details" in reply["error"]
    assert await stored_count(app) == before


async def test_validation_details_name_the_field(app: App, nc: NATS) -> None:
    reply = await request(
        nc, "commands.order.place", order(items=[{"product_id": "p-1", "quantity": -1}])
    )
    assert reply["error"]["details"][0]["loc"] == ["items", 0, "quantity"]


async def test_oversized_body_is_refused(app: App, nc: NATS) -> None:
    body = order(customer_id="c" * 100, padding="x" * (300 * 1024))
    reply = await request(nc, "commands.order.place", body)
    assert reply["error"]["code"] == "payload_too_large"
    assert reply["error"]["details"]["limit"] == 256 * 1024
    assert await stored_count(app) == 0


async def test_payload_limit_is_configurable(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    application = App(settings_for(nats_server, tmp_path, max_payload_bytes=200), CORE_SERVICES)
    await application.start()
    try:
        ok = await request(nc, "commands.product.create", WIDGET)
        assert ok["ok"], ok
        big = {**WIDGET, "product_id": "p-2", "name": "W" * 190}
        reply = await request(nc, "commands.product.create", big)
        assert reply["error"]["code"] == "payload_too_large"
        assert reply["error"]["details"] == {"size": len(json.dumps(big)), "limit": 200}
    finally:
        await application.stop()


async def test_refusal_is_logged_with_the_trace_id(app: App, nc: NATS) -> None:
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda m: records.append(m.record), level="WARNING")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        await request(
            nc,
            "commands.order.place",
            b"not json",
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "ce-id": "bad-1"},
        )
    finally:
        logger.remove(sink)
    refusals = [r for r in records if "malformed_json" in r["message"]]
    assert refusals, records
    assert refusals[0]["extra"]["trace_id"] == trace_id
    assert refusals[0]["extra"]["correlation_id"] == "bad-1"


async def test_a_reply_subject_in_the_system_namespace_gets_no_reply(app: App, nc: NATS) -> None:
    """A requester chooses its reply subject: one naming ``events.…`` must not make the
    service publish into EVENTS (nor ``$SRV.PING`` make the ping responder do so)."""
    await nc.publish(
        "commands.product.create", json.dumps(WIDGET).encode(), reply="events.product.created"
    )
    await nc.publish("$SRV.PING", b"", reply="events.product.created")
    gadget = WIDGET | {"product_id": "p-2"}
    assert (await request(nc, "commands.product.create", gadget))["ok"]

    async def two_events() -> list[Any]:
        if await events_in_stream(nc) < 2:  # EVENTS may not even exist yet
            return []
        msgs = await stream_messages(nc)
        return msgs if len(msgs) >= 2 else []

    msgs = await eventually(two_events)
    # Both creates were stored and relayed; nothing else reached EVENTS.
    assert [m.headers["ce-position"] for m in msgs] == ["1", "2"]
