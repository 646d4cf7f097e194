"""The command executor over a real SQLite store: idempotency and bounded retries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.cloudevents import decode_context
from domain.errors import ProductAlreadyExists, ProductNotFound
from domain.event_store import (
    AppendResult,
    CommandRecord,
    ExpectedRevision,
    NewEvent,
    StreamState,
)
from domain.metadata import MessageContext
from domain.product import ChangePrice, CreateProduct, Product, Restock
from handlers import CommandExecutor, ConcurrencyConflict
from handlers import product as product_handlers
from handlers.executor import _Turn
from infra.eventstore.sqlite import SQLiteEventStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    s = await SQLiteEventStore.open(tmp_path / "events.db")
    yield s
    await s.close()


def ctx(command_id: str):  # type: ignore[no-untyped-def]
    return decode_context("commands.product.restock", {"ce-id": command_id})


async def test_resend_returns_first_result(store: SQLiteEventStore) -> None:
    ex = CommandExecutor(store)
    create = CreateProduct(product_id="p", name="n", price="1.00", stock=0)  # type: ignore[arg-type]
    await product_handlers.create(ex, create, ctx("c0"))
    first = await product_handlers.restock(ex, Restock(product_id="p", quantity=2), ctx("c1"))
    await product_handlers.restock(ex, Restock(product_id="p", quantity=3), ctx("c2"))
    again = await product_handlers.restock(ex, Restock(product_id="p", quantity=2), ctx("c1"))
    assert again.duplicate and not first.duplicate
    assert again.data == first.data == {"product_id": "p", "name": "n", "price": "1.00", "stock": 2}
    assert len(await store.read_stream("product-p")) == 3


class RacingStore:
    """Lets a competitor append first every time: a real conflict from the real store."""

    def __init__(self, inner: SQLiteEventStore) -> None:
        self.inner = inner
        self.competitors = 0

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_revision: ExpectedRevision,
        command: CommandRecord | None = None,
    ) -> AppendResult:
        await self.inner.append(
            stream, [NewEvent("product.restocked", events[0].data)], StreamState.ANY
        )
        self.competitors += 1
        return await self.inner.append(stream, events, expected_revision, command)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


async def test_conflicts_are_retried_a_bounded_number_of_times(store: SQLiteEventStore) -> None:
    ex = CommandExecutor(store)
    await product_handlers.create(
        ex,
        CreateProduct(product_id="p", name="n", price="1.00", stock=0),
        ctx("c0"),  # type: ignore[arg-type]
    )
    racing = RacingStore(store)
    with pytest.raises(ConcurrencyConflict) as info:
        await product_handlers.restock(
            CommandExecutor(racing, max_attempts=3),  # type: ignore[arg-type]
            Restock(product_id="p", quantity=1),
            ctx("c1"),
        )
    assert info.value.code == "concurrency_conflict"
    assert racing.competitors == 3
    events = await store.read_stream("product-p")
    # Only the competitors' events were written; none of ours.
    assert len(events) == 4
    assert all(json.loads(e.metadata or b"{}").get("causation_id") != "c1" for e in events)


async def two_executors(store: SQLiteEventStore) -> tuple[CommandExecutor, CommandExecutor]:
    """Two command services sharing one store, each with its own cache: two processes."""
    a, b = CommandExecutor(store), CommandExecutor(store)
    await product_handlers.create(
        a,
        CreateProduct(product_id="p", name="n", price="1.00", stock=10),
        ctx("c0"),  # type: ignore[arg-type]
    )
    return a, b


async def test_stale_cache_is_caught_by_the_append(store: SQLiteEventStore) -> None:
    a, b = await two_executors(store)
    await product_handlers.restock(b, Restock(product_id="p", quantity=5), ctx("b1"))
    reply = await product_handlers.restock(a, Restock(product_id="p", quantity=1), ctx("a1"))
    assert reply.data["stock"] == 16
    assert a.conflicts == 1


async def test_refusal_on_a_stale_cache_is_rechecked(store: SQLiteEventStore) -> None:
    a, b = CommandExecutor(store), CommandExecutor(store)
    with pytest.raises(ProductNotFound):
        await product_handlers.restock(a, Restock(product_id="q", quantity=1), ctx("a0"))
    await product_handlers.create(
        b,
        CreateProduct(product_id="q", name="n", price="1.00", stock=0),
        ctx("b0"),  # type: ignore[arg-type]
    )
    reply = await product_handlers.restock(a, Restock(product_id="q", quantity=2), ctx("a1"))
    assert reply.data["stock"] == 2


async def test_no_op_on_a_stale_cache_is_rechecked(store: SQLiteEventStore) -> None:
    a, b = await two_executors(store)
    await product_handlers.change_price(b, ChangePrice(product_id="p", price="2.00"), ctx("b1"))  # type: ignore[arg-type]
    reply = await product_handlers.change_price(
        a,
        ChangePrice(product_id="p", price="1.00"),  # type: ignore[arg-type]
        ctx("a1"),
    )
    assert reply.data["price"] == "1.00" and reply.events
    assert json.loads((await store.read_stream("product-p"))[-1].data)["price"] == "1.00"


async def test_resend_to_another_instance_is_recognised(store: SQLiteEventStore) -> None:
    a, b = await two_executors(store)
    await product_handlers.restock(b, Restock(product_id="p", quantity=1), ctx("warm-b"))
    first = await product_handlers.restock(a, Restock(product_id="p", quantity=3), ctx("x"))
    # b's cache predates "x": its append conflicts, the refresh finds "x" and answers from it.
    again = await product_handlers.restock(b, Restock(product_id="p", quantity=3), ctx("x"))
    cold = await product_handlers.restock(
        CommandExecutor(store), Restock(product_id="p", quantity=3), ctx("x")
    )
    assert again.duplicate and cold.duplicate
    assert again.data == cold.data == first.data
    assert len(await store.read_stream("product-p")) == 3


async def test_first_result_survives_later_changes_and_cache_eviction(
    store: SQLiteEventStore,
) -> None:
    ex = CommandExecutor(store, cache_size=1)
    await product_handlers.create(
        ex,
        CreateProduct(product_id="p", name="n", price="1.00", stock=0),
        ctx("c0"),  # type: ignore[arg-type]
    )
    first = await product_handlers.restock(ex, Restock(product_id="p", quantity=2), ctx("c1"))
    await product_handlers.restock(ex, Restock(product_id="p", quantity=5), ctx("c2"))
    await product_handlers.create(
        ex,
        CreateProduct(product_id="other", name="n", price="1.00", stock=0),
        ctx("c3"),  # type: ignore[arg-type]
    )  # evicts "product-p"
    again = await product_handlers.restock(ex, Restock(product_id="p", quantity=2), ctx("c1"))
    assert again.duplicate and again.data == first.data and again.data["stock"] == 2


async def test_a_forgotten_stream_is_read_again_from_the_store(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path / "events.db")
    try:
        ex = CommandExecutor(store)
        ctx = MessageContext(id="c-1", type="product.create", source="t", correlation_id="c-1")
        body = CreateProduct(product_id="p-1", name="W", price=Decimal("1.00"), stock=1)
        await product_handlers.create(ex, body, ctx)
        ex.forget("product-p-1")
        ex.forget("product-never")  # forgetting what is not cached is harmless
        resend = await product_handlers.create(ex, body, ctx)
        assert resend.duplicate  # still idempotent: the record came back from the store
        assert len(await store.read_stream("product-p-1")) == 1
    finally:
        await store.close()


class CountingStore:
    """The real store, counting reads: what the executor asks for, not what it answers."""

    def __init__(self, inner: SQLiteEventStore) -> None:
        self.inner = inner
        self.reads = 0

    async def read_stream(self, stream: str, from_revision: int = 0):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await self.inner.read_stream(stream, from_revision)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


async def test_a_new_stream_costs_one_append_and_no_read(store: SQLiteEventStore) -> None:
    counting = CountingStore(store)
    ex = CommandExecutor(counting)  # type: ignore[arg-type]
    await product_handlers.create(
        ex,
        CreateProduct(product_id="p", name="n", price="1.00", stock=1),  # type: ignore[arg-type]
        ctx("c0"),
    )
    assert counting.reads == 0
    assert len(await store.read_stream("product-p")) == 1


async def test_an_existing_stream_not_in_the_cache_is_read_before_answering(
    store: SQLiteEventStore,
) -> None:
    a, _ = await two_executors(store)  # product "p" exists, with stock 10
    cold = CountingStore(store)
    b = CommandExecutor(cold, max_attempts=1)  # type: ignore[arg-type]
    # The blind guess (no product) refuses; the refusal is checked against a read, and the
    # one attempt allowed is still there for the real decision.
    reply = await product_handlers.restock(b, Restock(product_id="p", quantity=2), ctx("b1"))
    assert reply.data["stock"] == 12 and cold.reads == 1 and b.conflicts == 0
    # A create of an existing product: the blind append expecting no stream fails, the
    # stream is read, and the refusal stands on what is stored; nothing is written.
    with pytest.raises(ProductAlreadyExists):
        await product_handlers.create(
            CommandExecutor(store),
            CreateProduct(product_id="p", name="other", price="9.00", stock=0),  # type: ignore[arg-type]
            ctx("b2"),
        )
    assert len(await store.read_stream("product-p")) == 2
    assert a.conflicts == 0


async def test_a_recent_state_is_trusted_for_reads_only_within_max_age(
    store: SQLiteEventStore,
) -> None:
    counting = CountingStore(store)
    a = CommandExecutor(counting)  # type: ignore[arg-type]
    b = CommandExecutor(store)
    await product_handlers.create(
        a,
        CreateProduct(product_id="p", name="n", price="1.00", stock=1),  # type: ignore[arg-type]
        ctx("c0"),
    )
    await product_handlers.change_price(b, ChangePrice(product_id="p", price="2.00"), ctx("b1"))  # type: ignore[arg-type]
    # Confirmed by a's own append a moment ago: used as it is, without a read.
    cached = await a.load("product-p", lambda: Product("p"), max_age=60)
    assert cached.price == Decimal("1.00") and counting.reads == 0
    # No age allowed: read, and see b's change.
    current = await a.load("product-p", lambda: Product("p"))
    assert current.price == Decimal("2.00") and counting.reads == 1
    # An unknown stream is always read, whatever the age allowed.
    missing = await a.load("product-q", lambda: Product("q"), max_age=60)
    assert not missing.exists and counting.reads == 2


class GatedStore:
    """Holds every append until the gate opens, recording which ones have started."""

    def __init__(self, inner: SQLiteEventStore) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.started: list[str] = []

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_revision: ExpectedRevision,
        command: CommandRecord | None = None,
    ) -> AppendResult:
        self.started.append(json.loads(events[0].metadata)["causation_id"])
        await self.gate.wait()
        return await self.inner.append(stream, events, expected_revision, command)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


async def _created(store: SQLiteEventStore) -> None:
    create = CreateProduct(product_id="p", name="n", price="1.00", stock=0)  # type: ignore[arg-type]
    await product_handlers.create(CommandExecutor(store), create, ctx("c0"))


async def _restocks_queued(
    ex: CommandExecutor, gated: GatedStore, count: int
) -> list[asyncio.Task[Any]]:
    """``count`` restocks of product p (ids r0, r1, …), started in that order; returns once
    every one has reached the stream's turn and an append has reached the gate."""
    runs = [
        asyncio.create_task(
            product_handlers.restock(ex, Restock(product_id="p", quantity=1), ctx(f"r{i}"))
        )
        for i in range(count)
    ]
    for _ in range(1000):
        turn = ex._turns.get("product-p")
        if turn is not None and turn.users == count and gated.started:
            return runs
        await asyncio.sleep(0)
    raise AssertionError("the restocks never all reached the stream's turn")


async def test_commands_on_one_stream_take_turns_in_arrival_order(
    store: SQLiteEventStore,
) -> None:
    await _created(store)
    gated = GatedStore(store)
    ex = CommandExecutor(gated)  # type: ignore[arg-type]
    runs = await _restocks_queued(ex, gated, 5)
    assert gated.started == ["r0"]  # the others wait for their turn, not for the store
    gated.gate.set()
    outcomes = await asyncio.gather(*runs)
    assert gated.started == [f"r{i}" for i in range(5)]
    assert [o.data["stock"] for o in outcomes] == [1, 2, 3, 4, 5]
    assert ex.conflicts == 0 and not ex._turns


async def test_a_cancelled_command_waiting_its_turn_does_not_hold_up_the_stream(
    store: SQLiteEventStore,
) -> None:
    await _created(store)
    gated = GatedStore(store)
    ex = CommandExecutor(gated)  # type: ignore[arg-type]
    first, second, third = await _restocks_queued(ex, gated, 3)
    second.cancel()
    gated.gate.set()
    assert (await first).data["stock"] == 1
    assert (await third).data["stock"] == 2
    with pytest.raises(asyncio.CancelledError):
        await second
    assert gated.started == ["r0", "r2"] and not ex._turns


async def test_a_turn_handed_to_a_cancelled_waiter_goes_on_to_the_next() -> None:
    turn = _Turn()
    assert turn.take() and not turn.take()
    first = asyncio.create_task(turn.wait())
    second = asyncio.create_task(turn.wait())
    await asyncio.sleep(0)  # one turn of the loop: each task runs to its wait
    assert turn._waiters is not None and len(turn._waiters) == 2
    turn.give_back()  # handed to the first...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(5):  # not passed on, it would wait for ever
        await second  # the first passed it on
    assert turn.taken
    turn.give_back()
    assert not turn.taken
