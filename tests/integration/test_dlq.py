"""Poison events: delivered N times with a growing pause, then set aside in ``DLQ`` with
who, why and how often; the read model goes on; ``ordermesh dlq`` lists, shows, retries
(once, through the consumer that failed and no other) and purges them."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

import broker.projector
from broker import dlq
from broker.dlq import DeadLetter, Outcome
from broker.projector import DEFAULT_BACKOFF, DEFAULT_MAX_DELIVERIES, MAX_BACKOFF, Projector
from domain.event_store import NewEvent, RecordedEvent, StreamState
from domain.messages import Event
from domain.order import OrderPlaced
from domain.product import Restocked
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from ordermesh.read_models import rebuild
from projections.products import ProductProjection
from sagas.inbox import SagaInbox
from tests.conftest import eventually, request
from tests.integration.test_cli import cli_env, run_cli
from tests.integration.test_saga import create_product, place, settled

READ_MODELS = "products+orders+sagas"
N = DEFAULT_MAX_DELIVERIES


def projector_of(app: App) -> Projector:
    return app.component(Projector)


def dlq_count() -> float:
    return REGISTRY.get_sample_value("ordermesh_dlq_messages_total", LABEL) or 0.0


LABEL = {"subject": "events.product.restocked"}


async def letters(nc: NATS) -> list[DeadLetter]:
    """What ``DLQ`` holds; nothing until a consumer has created it."""
    try:
        return await dlq.read_all(nc.jetstream())
    except Exception:
        return []


async def product(nc: NATS, product_id: str) -> dict[str, Any] | None:
    reply = await request(nc, "queries.product.get", {"product_id": product_id})
    return reply["data"] if reply["ok"] else None


async def stock_becomes(nc: NATS, product_id: str, stock: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        view = await product(nc, product_id)
        return view if view is not None and view["stock"] == stock else None

    result: dict[str, Any] = await eventually(check)
    return result


class Faulty:
    """Makes the events ``matches`` picks fail in a projection's ``apply`` while ``broken``
    (for the first ``times`` attempts, if given), counting and timing each attempt."""

    def __init__(self, error: Exception, matches: Any, times: int | None = None) -> None:
        self.error = error
        self.matches = matches
        self.times = times
        self.broken = True
        self.attempts: list[float] = []

    def wrap(self, apply: Any) -> Any:
        def faulty(
            projection: Any, db: sqlite3.Connection, event: Event, rec: RecordedEvent
        ) -> None:
            if self.matches(event):
                self.attempts.append(time.monotonic())
                if self.broken and (self.times is None or len(self.attempts) <= self.times):
                    raise self.error
            apply(projection, db, event, rec)

        return faulty


@pytest.fixture
def restock_of_7(monkeypatch: pytest.MonkeyPatch) -> Iterator[Faulty]:
    """The products read model cannot apply a restock of 7 (until ``broken`` is cleared)."""
    fault = Faulty(
        RuntimeError("warehouse feed offline"),
        lambda e: isinstance(e, Restocked) and e.quantity == 7,
    )
    monkeypatch.setattr(ProductProjection, "apply", fault.wrap(ProductProjection.apply))
    yield fault


async def test_a_poisoned_event_in_the_store_is_set_aside_after_n_deliveries(
    app: App, nc: NATS
) -> None:
    label = {"subject": "events.product.created"}
    before = REGISTRY.get_sample_value("ordermesh_dlq_messages_total", label) or 0.0
    assert app.store is not None
    # Stored as written by a careless change: a product.created without a price.
    poison = NewEvent(
        type="product.created", data=json.dumps({"product_id": "p-bad", "name": "B"}).encode()
    )
    await app.store.append("product-p-bad", [poison], StreamState.NO_STREAM)
    later = {"product_id": "p-2", "name": "G", "price": "2.00", "stock": 1}
    assert (await request(nc, "commands.product.create", later))["ok"]

    # The event after it is applied: the feed moved on.
    assert await eventually(lambda: product(nc, "p-2"))
    [letter] = await letters(nc)
    assert letter.dlq_subject == "dlq.events.product.created"
    assert letter.subject == "events.product.created"
    assert letter.consumer == READ_MODELS
    assert letter.deliveries == N
    assert letter.reason.startswith("cannot apply: ValidationError:")
    assert "price" in letter.reason
    assert letter.headers["ce-id"] == poison.id
    assert letter.event_sequence == 1  # the first message in EVENTS
    datetime.fromisoformat(letter.headers["ordermesh-dlq-time"])
    assert json.loads(letter.data) == {"product_id": "p-bad", "name": "B"}
    assert (REGISTRY.get_sample_value("ordermesh_dlq_messages_total", label) or 0.0) == before + 1
    assert await product(nc, "p-bad") is None
    assert projector_of(app).set_aside == 1


async def test_deliveries_back_off_then_a_fixed_event_is_retried_once(
    app: App, nc: NATS, nats_server: EmbeddedNatsServer, tmp_path: Path, restock_of_7: Faulty
) -> None:
    before = dlq_count()
    widget = {"product_id": "p-1", "name": "W", "price": "1.00", "stock": 10}
    assert (await request(nc, "commands.product.create", widget))["ok"]
    for quantity in (7, 1):
        restock = {"product_id": "p-1", "quantity": quantity}
        assert (await request(nc, "commands.product.restock", restock))["ok"]
    await stock_becomes(nc, "p-1", 11)  # the restock after the poison one is applied
    [letter] = await eventually(lambda: letters(nc))

    # Once in its batch, then N times alone, each pause twice the one before (capped).
    assert len(restock_of_7.attempts) == 1 + N
    alone = restock_of_7.attempts[1:]
    pauses = [b - a for a, b in itertools.pairwise(alone)]
    expected = [min(DEFAULT_BACKOFF * 2**i, MAX_BACKOFF) for i in range(N - 1)]
    assert all(p >= 0.9 * e for p, e in zip(pauses, expected, strict=True)), pauses
    assert (letter.consumer, letter.deliveries) == (READ_MODELS, N)
    assert letter.reason == "cannot apply: RuntimeError: warehouse feed offline"
    assert dlq_count() == before + 1

    env = cli_env(nats_server, tmp_path)
    code, out, err = await run_cli("dlq", "list", "--json", env=env)
    assert code == 0, err
    [listed] = json.loads(out)
    assert listed["sequence"] == letter.sequence
    assert (listed["consumer"], listed["subject"], listed["deliveries"]) == (
        READ_MODELS,
        "events.product.restocked",
        N,
    )
    assert listed["reason"] == letter.reason
    code, out, err = await run_cli("dlq", "show", str(letter.sequence), env=env)
    assert code == 0, err
    assert f"ordermesh-dlq-deliveries  {N}" in out
    assert '"quantity": 7' in out  # the body, pretty

    # A copy of the same message left behind (as a crash between the two would leave).
    copy = letter.headers | {"Nats-Msg-Id": "copy-of-the-same-dead-letter"}
    await nc.jetstream().publish(letter.dlq_subject, letter.data, headers=copy)

    restock_of_7.broken = False  # the cause is fixed
    code, out, err = await run_cli("dlq", "retry", str(letter.sequence), env=env)
    assert (code, out.split()[:2]) == (0, [str(letter.sequence), "retried"]), (out, err)
    view = await stock_becomes(nc, "p-1", 18)
    code, out, err = await run_cli("dlq", "retry", "--all", env=env)
    assert code == 0, err
    assert "already applied" in out and "retried" not in out, out
    assert await letters(nc) == []

    # Asked again (a reply that was lost): nothing changes, still "already applied".
    again = await dlq.request_retry(nc, READ_MODELS, letter.sequence)
    assert (again.outcome, again.event_id) == (Outcome.ALREADY_APPLIED, letter.headers["ce-id"])
    gone = await dlq.retry(nc, letter.sequence)  # as `ordermesh dlq retry` says: not in DLQ
    assert gone.outcome is Outcome.NOT_FOUND
    assert await product(nc, "p-1") == view  # stock 18, and no second version bump
    assert len(restock_of_7.attempts) == 1 + N + 1


async def test_retry_goes_to_the_consumer_that_failed_and_no_other(
    saga_app: App, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order.placed the saga inbox could not take is retried into the inbox only: its
    saga then starts; the read models, which applied it, are not asked."""
    fault = Faulty(
        RuntimeError("inbox full"), lambda e: isinstance(e, OrderPlaced) and e.order_id == "o-1"
    )
    monkeypatch.setattr(SagaInbox, "apply", fault.wrap(SagaInbox.apply))
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 1)])
    await place(nc, "o-2", [("p-1", 1)])
    # The inbox went on past o-1: o-2's saga ran to its end; o-1 has none.
    assert (await settled(nc, "o-2"))["status"] == "confirmed"
    [letter] = await eventually(lambda: letters(nc))
    assert (letter.consumer, letter.subject) == ("saga_inbox", "events.order.placed")
    missing = await request(nc, "queries.saga.get", {"saga_id": "o-1"})
    assert not missing["ok"]
    order = await request(nc, "queries.order.get", {"order_id": "o-1"})
    assert order["data"]["status"] == "pending"

    fault.broken = False
    # Sent to the read models, the request is refused: the message is not theirs.
    wrong = await dlq.request_retry(nc, READ_MODELS, letter.sequence)
    assert wrong.outcome is Outcome.FAILED
    assert wrong.reason is not None and wrong.reason.startswith("wrong_consumer")
    assert [m.sequence for m in await letters(nc)] == [letter.sequence]

    result = await dlq.retry(nc, letter.sequence)
    assert (result.outcome, result.consumer) == (Outcome.RETRIED, "saga_inbox")
    assert (await settled(nc, "o-1"))["status"] == "confirmed"
    assert await letters(nc) == []


async def test_a_message_that_is_no_event_cannot_be_retried_and_purge_asks_first(
    app: App, nc: NATS, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    await nc.jetstream().publish("events.somebody.else", b"not json at all")
    [letter] = await eventually(lambda: letters(nc))
    assert (letter.deliveries, letter.consumer) == (1, READ_MODELS)  # no delivery can help

    result = await dlq.retry(nc, letter.sequence)
    assert result.outcome is Outcome.FAILED
    assert result.reason is not None and result.reason.startswith("not_an_event")

    env = cli_env(nats_server, tmp_path)
    code, _out, err = await run_cli("dlq", "purge", env=env, stdin=b"n\n")
    assert code == 1, err
    assert [m.sequence for m in await letters(nc)] == [letter.sequence]
    code, _out, err = await run_cli("dlq", "purge", "--yes", env=env)
    assert (code, "purged 1 message(s)" in err) == (0, True), err
    assert await letters(nc) == []


async def test_a_database_that_is_unavailable_is_retried_not_dead_lettered(
    app: App, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker.projector, "RESTART_DELAY", 0.01)
    failures = N + 2  # more than a poison event would get
    fault = Faulty(
        sqlite3.OperationalError("database is locked"),
        lambda e: isinstance(e, Restocked),
        times=failures,
    )
    monkeypatch.setattr(ProductProjection, "apply", fault.wrap(ProductProjection.apply))
    widget = {"product_id": "p-1", "name": "W", "price": "1.00", "stock": 10}
    assert (await request(nc, "commands.product.create", widget))["ok"]
    restock = {"product_id": "p-1", "quantity": 5}
    assert (await request(nc, "commands.product.restock", restock))["ok"]

    await stock_becomes(nc, "p-1", 15)
    assert len(fault.attempts) == failures + 1
    assert projector_of(app).restarts == failures
    assert await letters(nc) == []


async def test_after_a_rebuild_a_retry_changes_nothing(
    app: App, nc: NATS, restock_of_7: Faulty
) -> None:
    """A rebuild replays the whole store, the event set aside included: retried after
    it, the event is already applied, and the stock counts it once."""
    widget = {"product_id": "p-1", "name": "W", "price": "1.00", "stock": 10}
    assert (await request(nc, "commands.product.create", widget))["ok"]
    assert (await request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": 7}))[
        "ok"
    ]
    [letter] = await eventually(lambda: letters(nc))
    assert (await product(nc, "p-1") or {})["stock"] == 10

    restock_of_7.broken = False
    assert app.read_models is not None and app.store is not None
    await rebuild(app.read_models, app.store, ProductProjection())
    view = await stock_becomes(nc, "p-1", 17)

    result = await dlq.retry(nc, letter.sequence)
    assert result.outcome is Outcome.ALREADY_APPLIED
    assert await letters(nc) == []
    assert await product(nc, "p-1") == view
