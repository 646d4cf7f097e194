"""The command executor over a real SQLite store: idempotency and bounded retries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from broker.cloudevents import decode_context
from domain.event_store import AppendResult, ExpectedRevision, NewEvent, StreamState
from domain.product import CreateProduct, Restock
from handlers import CommandExecutor, ConcurrencyConflict
from handlers import product as product_handlers
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
        self, stream: str, events: Sequence[NewEvent], expected_revision: ExpectedRevision
    ) -> AppendResult:
        await self.inner.append(
            stream, [NewEvent("product.restocked", events[0].data)], StreamState.ANY
        )
        self.competitors += 1
        return await self.inner.append(stream, events, expected_revision)

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
