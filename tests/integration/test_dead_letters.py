"""A poison message goes to the DLQ with its reason and never blocks the read models.

More (deliveries, retries, the CLI): ``test_dlq``."""

from __future__ import annotations

import json
import uuid

from nats.aio.client import Client as NATS

from broker.projector import DEFAULT_MAX_DELIVERIES
from ordermesh.app import App
from tests.conftest import eventually, request


async def dlq_messages(nc: NATS) -> list[tuple[str, dict[str, str], bytes]]:
    js = nc.jetstream()
    info = await js.stream_info("DLQ")
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg("DLQ", seq)
        out.append((msg.subject, dict(msg.headers or {}), msg.data or b""))
    return out


async def test_an_event_that_does_not_decode_is_set_aside_and_the_feed_goes_on(
    app: App, nc: NATS
) -> None:
    widget = {"product_id": "p-1", "name": "W", "price": "1.00", "stock": 1}
    assert (await request(nc, "commands.product.create", widget))["ok"]

    async def created() -> bool:
        reply = await request(nc, "queries.product.get", {"product_id": "p-1"})
        return bool(reply["ok"])

    await eventually(created)
    # Our headers, a body that no longer fits the schema (as after a careless change).
    poison_id = str(uuid.uuid4())
    await nc.jetstream().publish(
        "events.product.created",
        json.dumps({"product_id": "p-2", "name": "broken"}).encode(),
        headers={
            "ce-id": poison_id,
            "ce-type": "product.created",
            "ce-time": "2026-11-29T12:00:00Z",
            "ce-stream": "product-p-2",
            "ce-revision": "0",
            "ce-position": "2",
        },
    )
    # A real event after it is still applied, although it carries the same position.
    gadget = {"product_id": "p-3", "name": "G", "price": "2.00", "stock": 1}
    assert (await request(nc, "commands.product.create", gadget))["ok"]

    async def gadget_visible() -> bool:
        reply = await request(nc, "queries.product.get", {"product_id": "p-3"})
        return bool(reply["ok"])

    await eventually(gadget_visible)
    dead = await dlq_messages(nc)
    assert len(dead) == 1
    subject, headers, data = dead[0]
    assert subject == "dlq.events.product.created"
    assert headers["ce-id"] == poison_id
    assert headers["ordermesh-dlq-consumer"] == "products+orders+sagas"
    assert headers["ordermesh-dlq-reason"].startswith("cannot apply")
    assert "price" in headers["ordermesh-dlq-reason"]
    # Delivered again and again in case the cause passes: it did not.
    assert headers["ordermesh-dlq-deliveries"] == str(DEFAULT_MAX_DELIVERIES)
    assert headers["ordermesh-dlq-subject"] == "events.product.created"
    assert json.loads(data)["name"] == "broken"
    missing = await request(nc, "queries.product.get", {"product_id": "p-2"})
    assert missing["error"]["code"] == "product_not_found"


async def test_a_foreign_message_on_events_is_set_aside(app: App, nc: NATS) -> None:
    await nc.jetstream().publish("events.somebody.else", b"not json at all")

    async def dead_lettered() -> list[tuple[str, dict[str, str], bytes]]:
        try:
            return await dlq_messages(nc)
        except Exception:
            return []

    [(subject, headers, data)] = await eventually(dead_lettered)
    assert subject == "dlq.events.somebody.else"
    assert headers["ordermesh-dlq-reason"].startswith("no ordermesh event headers")
    assert headers["ordermesh-dlq-deliveries"] == "1"  # not an event: no delivery can help
    assert data == b"not json at all"
