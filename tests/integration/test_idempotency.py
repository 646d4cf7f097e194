"""One command id means one command, system-wide, for the store's idempotency window."""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from domain.event_store import CommandRecord, DuplicateCommand, NewEvent, StreamState
from domain.metadata import MessageContext
from domain.product import CreateProduct, Restock
from handlers import CommandExecutor
from handlers import product as product_handlers
from handlers.executor import CAUSED_KEEP
from infra.eventstore.sqlite import PRUNE_EVERY, SQLiteEventStore
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from tests.conftest import CORE_SERVICES, request, settings_for

WIDGET = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10}


async def stored(app: App) -> int:
    assert app.store is not None
    return len(await app.store.read_all(0, 100_000))


async def send(nc: NATS, type_: str, body: object, command_id: str) -> dict[str, object]:
    return await request(nc, f"commands.{type_}", body, headers={"ce-id": command_id})


async def test_a_resend_naming_no_order_id_places_one_order_and_answers_the_first(
    app: App, nc: NATS
) -> None:
    assert (await request(nc, "commands.product.create", WIDGET))["ok"]
    # No order_id: the service generates one, so the resend would name another stream.
    body = {"customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 2}]}
    first = await send(nc, "order.place", body, "place-1")
    count = await stored(app)
    again = await send(nc, "order.place", body, "place-1")
    assert first["ok"] and again == first
    assert await stored(app) == count


async def test_the_same_id_for_another_body_is_refused_and_writes_nothing(
    app: App, nc: NATS
) -> None:
    assert (await request(nc, "commands.product.create", WIDGET))["ok"]
    gadget = WIDGET | {"product_id": "p-2", "name": "Gadget"}
    assert (await request(nc, "commands.product.create", gadget))["ok"]
    first = await send(nc, "product.restock", {"product_id": "p-1", "quantity": 1}, "r-1")
    assert first["ok"]
    count = await stored(app)
    # Another body on the same stream, then on another stream: one id, one command.
    same_stream = await send(nc, "product.restock", {"product_id": "p-1", "quantity": 5}, "r-1")
    other_stream = await send(nc, "product.restock", {"product_id": "p-2", "quantity": 1}, "r-1")
    for reply in (same_stream, other_stream):
        assert not reply["ok"]
        assert reply["error"]["code"] == "idempotency_conflict"  # type: ignore[index]
        assert reply["error"]["details"] == {"id": "r-1", "stream": "product-p-1"}  # type: ignore[index]
    assert await stored(app) == count
    # The first body again is still the first command, answered as it was.
    assert await send(nc, "product.restock", {"product_id": "p-1", "quantity": 1}, "r-1") == first


async def test_the_record_survives_a_restart(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    settings = settings_for(nats_server, tmp_path / "data")
    body = {"customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 1}]}
    app = App(settings, CORE_SERVICES)
    await app.start()
    try:
        assert (await request(nc, "commands.product.create", WIDGET))["ok"]
        first = await send(nc, "order.place", body, "place-r")
        assert first["ok"]
    finally:
        await app.stop()
    app = App(settings, CORE_SERVICES)  # a new process would start with an empty cache
    await app.start()
    try:
        count = await stored(app)
        assert await send(nc, "order.place", body, "place-r") == first
        conflict = await send(nc, "order.place", body | {"customer_id": "c-2"}, "place-r")
        assert conflict["error"]["code"] == "idempotency_conflict"  # type: ignore[index]
        assert await stored(app) == count
    finally:
        await app.stop()


def ctx(command_id: str, command: Restock | CreateProduct) -> MessageContext:
    return MessageContext(command_id, command.TYPE, "test", command_id, digest=command.digest())


async def test_memory_stays_bounded_on_a_hot_stream(tmp_path: Path) -> None:
    """Every restock of one product is a new command: the stream's cached record of
    command ids keeps the latest ``CAUSED_KEEP``, and an older resend is still caught
    (by the store's record)."""
    store = await SQLiteEventStore.open(tmp_path / "events.db")
    try:
        ex = CommandExecutor(store)
        create = CreateProduct(product_id="p", name="n", price="1.00", stock=0)  # type: ignore[arg-type]
        await product_handlers.create(ex, create, ctx("c", create))
        restock = Restock(product_id="p", quantity=1)
        n = CAUSED_KEEP * 8
        for i in range(n):
            await product_handlers.restock(ex, restock, ctx(f"r{i}", restock))
        snapshot = ex._cache["product-p"]
        assert len(snapshot.caused) == CAUSED_KEEP
        oldest = await product_handlers.restock(ex, restock, ctx("r0", restock))
        assert oldest.duplicate and oldest.data["stock"] == 1
        assert len(await store.read_stream("product-p")) == n + 1
    finally:
        await store.close()


async def test_records_leave_the_window_and_are_swept(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "events.db", idempotency_window=3600)
    try:
        event = NewEvent("product.restocked", b"{}")
        await store.append("s-1", [event], StreamState.ANY, CommandRecord("x", "d1"))
        with pytest.raises(DuplicateCommand) as info:
            await store.append(
                "s-2", [NewEvent("product.restocked", b"{}")], StreamState.ANY, CommandRecord("x")
            )
        assert (info.value.first.stream, info.value.first.revision) == ("s-1", 0)
        assert (await store.stored_command("x")) == info.value.first

        store.idempotency_window = 0.0  # every record is now past the window
        assert await store.stored_command("x") is None
        again = NewEvent("product.restocked", b"{}")
        await store.append("s-2", [again], StreamState.ANY, CommandRecord("x", "d2"))
        first = await store.stored_command("x")
        assert first is None or first.stream == "s-2"  # replaced, then past the window too

        # Past the window, records are also swept (every PRUNE_EVERY commands).
        for i in range(PRUNE_EVERY + 1):
            await store.append(
                "s-3",
                [NewEvent("product.restocked", b"{}")],
                StreamState.ANY,
                CommandRecord(f"y{i}"),
            )
        with sqlite3.connect(tmp_path / "events.db") as db:
            ids = [row[0] for row in db.execute("SELECT command_id FROM commands")]
        assert "x" not in ids and len(ids) < PRUNE_EVERY
    finally:
        await store.close()


@pytest.mark.chaos
@pytest.mark.timeout(300)
async def test_memory_after_100k_commands_on_one_hot_product(tmp_path: Path) -> None:
    """The long version (``make chaos``): 100 000 restocks of one product, each a new
    command id. What the executor keeps for that stream stays at ``CAUSED_KEEP`` ids; the
    memory the run leaves allocated is printed and bounded."""
    store = await SQLiteEventStore.open(tmp_path / "events.db")
    try:
        ex = CommandExecutor(store)
        create = CreateProduct(product_id="p", name="n", price="1.00", stock=0)  # type: ignore[arg-type]
        await product_handlers.create(ex, create, ctx("c", create))
        restock = Restock(product_id="p", quantity=1)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(100_000):
                await product_handlers.restock(ex, restock, ctx(f"r{i}", restock))
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        print(f"\n100 000 commands on one stream: {grown / 1024:.0f} KiB still allocated")
        assert len(ex._cache["product-p"].caused) == CAUSED_KEEP
        assert grown < 1024 * 1024  # one id per command would be ~10 MiB
    finally:
        await store.close()
