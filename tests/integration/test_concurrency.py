"""Concurrent and repeated commands over a real nats-server: no lost update, no double write."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from tests.conftest import events_in_stream, eventually, request, settings_for

WIDGET = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10}


async def product_stream(app: App) -> list[Any]:
    assert app.store is not None
    return await app.store.read_stream("product-p-1")


async def test_fifty_concurrent_restocks_lose_nothing(app: App, nc: NATS) -> None:
    await request(nc, "commands.product.create", WIDGET)
    quantities = [random.Random(7).randint(1, 9) for _ in range(50)]
    replies = await asyncio.gather(
        *(
            request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": q})
            for q in quantities
        )
    )
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]]
    expected = 10 + sum(quantities)
    events = await product_stream(app)
    assert [e.revision for e in events] == list(range(51))
    assert json.loads(events[-1].data)["stock"] == expected
    # Every reply saw a distinct stock level: each restock applied on top of the last.
    assert sorted(r["data"]["stock"] for r in replies)[-1] == expected
    assert len({r["data"]["stock"] for r in replies}) == 50

    async def projected() -> bool:
        reply = await request(nc, "queries.product.get", {"product_id": "p-1"})
        return bool(reply["ok"] and reply["data"]["stock"] == expected)

    await eventually(projected)


async def test_competing_instances_resolve_conflicts(
    app: App, nc: NATS, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """Four command services, each with its own store connection, race on one stream."""
    others = [App(settings_for(nats_server, tmp_path / "data"), ("command",)) for _ in range(3)]
    for other in others:
        await other.start()
    try:
        await request(nc, "commands.product.create", WIDGET)
        replies = await asyncio.gather(
            *(
                request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": 1})
                for _ in range(50)
            )
        )
        conflicts = sum(a.executor.conflicts for a in [app, *others] if a.executor)
    finally:
        for other in others:
            await other.stop()
    assert conflicts > 0, "the instances never raced: this test proved nothing"
    failed = [r for r in replies if not r["ok"]]
    # A bounded retry may give up under extreme contention; it must say so, and write nothing.
    assert all(r["error"]["code"] == "concurrency_conflict" for r in failed), failed
    events = await product_stream(app)
    assert len(events) == 1 + 50 - len(failed)
    assert json.loads(events[-1].data)["stock"] == 10 + 50 - len(failed)
    assert len(failed) <= 5


async def test_same_order_placed_concurrently_exists_once(app: App, nc: NATS) -> None:
    await request(nc, "commands.product.create", WIDGET)
    body = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "items": [{"product_id": "p-1", "quantity": 1}],
    }
    replies = await asyncio.gather(*(request(nc, "commands.order.place", body) for _ in range(20)))
    assert sum(r["ok"] for r in replies) == 1
    assert {r["error"]["code"] for r in replies if not r["ok"]} == {"order_already_exists"}
    assert app.store is not None
    assert len(await app.store.read_stream("order-o-1")) == 1


async def test_resent_command_id_appends_once_and_returns_first_result(app: App, nc: NATS) -> None:
    await request(nc, "commands.product.create", WIDGET)
    restock_a = {"product_id": "p-1", "quantity": 5}
    first = await request(nc, "commands.product.restock", restock_a, headers={"ce-id": "cmd-a"})
    assert first["data"]["stock"] == 15
    other = await request(
        nc, "commands.product.restock", {"product_id": "p-1", "quantity": 1}, headers={"ce-id": "b"}
    )
    assert other["data"]["stock"] == 16
    again = await request(nc, "commands.product.restock", restock_a, headers={"ce-id": "cmd-a"})
    assert again == first
    events = await product_stream(app)
    assert len(events) == 3
    assert json.loads(events[-1].data)["stock"] == 16


async def test_resent_command_id_concurrently(app: App, nc: NATS) -> None:
    await request(nc, "commands.product.create", WIDGET)
    body = {
        "order_id": "o-9",
        "customer_id": "c-1",
        "items": [{"product_id": "p-1", "quantity": 3}],
    }
    replies = await asyncio.gather(
        *(
            request(nc, "commands.order.place", body, headers={"ce-id": "place-9"})
            for _ in range(10)
        )
    )
    assert all(r == replies[0] for r in replies)
    assert replies[0]["ok"] and replies[0]["data"]["total"] == "37.50"
    assert app.store is not None
    assert len(await app.store.read_stream("order-o-9")) == 1

    async def one_in_events() -> bool:
        return await events_in_stream(nc) == 2

    await eventually(one_in_events)
