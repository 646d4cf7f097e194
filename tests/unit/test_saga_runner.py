"""The saga runner over a real SQLite event store, with a scripted command bus.

The bus stands in for NATS: it records every command the runner sends and answers
from a per-type script. A controllable clock makes deadlines exact where they matter.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from domain.catalog import decode_event
from domain.inventory import ReleaseInventory, ReserveInventory, StockLine
from domain.messages import Command, Event
from domain.metadata import MessageContext, parse_metadata
from domain.order import CancelOrder, ConfirmOrder, OrderPlaced, PricedLine
from domain.payment import ProcessPayment, RefundPayment
from domain.shipment import ArrangeShipment
from domain.shipping import ShippingAddress
from handlers.executor import CommandExecutor
from infra.eventstore.sqlite import SQLiteEventStore
from sagas.order_fulfillment import (
    Compensated,
    Compensating,
    Saga,
    SagaCompleted,
    SagaFailed,
    SagaStarted,
    StepCompleted,
    StepFailed,
    StepPostponed,
    StepStarted,
    stream_name,
)
from sagas.policy import CompensationPolicy, SagaPolicy, StepPolicy
from sagas.runner import Reply, SagaRunner

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ORDER = "o-1"
STREAM = f"saga-order_fulfillment-{ORDER}"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRIGGER = MessageContext(
    id="evt-placed-1",
    type="order.placed",
    source="ordermesh.command",
    correlation_id="corr-1",
    causation_id="cmd-place-1",
    traceparent=TRACEPARENT,
)

STEP_TIMEOUT = 1.0
ATTEMPT_TIMEOUT = 0.4


def fast_policy(
    *, timeout: float = STEP_TIMEOUT, attempt_timeout: float = ATTEMPT_TIMEOUT
) -> SagaPolicy:
    step = StepPolicy(
        timeout=timeout,
        attempt_timeout=attempt_timeout,
        max_attempts=5,
        backoff=0.01,
        backoff_max=0.05,
    )
    return SagaPolicy(
        reserve_inventory=step,
        process_payment=step,
        arrange_shipping=step,
        confirm_order=step,
        compensation=CompensationPolicy(attempt_timeout=0.3, backoff=0.01, backoff_max=0.05),
    )


class Clock:
    """Time that moves only when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Sent:
    type: str
    id: str
    timeout: float
    command: Command
    ctx: MessageContext
    at: datetime


class FakeBus:
    """Answers each command type from its script (in order), then with ``Reply(True)``.

    Once its script is used up, a type in ``hang`` is never answered at all (the send
    blocks until cancelled), and a type in ``silent`` is not answered either, but the
    sender's timeout elapses: on the fake clock when there is one, for real otherwise.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock = clock
        self.sent: list[Sent] = []
        self.script: dict[str, list[Reply]] = defaultdict(list)
        self.hang: set[str] = set()
        self.silent: set[str] = set()
        self._never = asyncio.Event()
        self._sent_one = asyncio.Event()
        self.outage = 0.0
        self.reconnections = 0

    async def send(self, command: Command, ctx: MessageContext, timeout: float) -> Reply:
        at = self.clock() if self.clock else datetime.now(UTC)
        self.sent.append(Sent(command.TYPE, ctx.id, timeout, command, ctx, at))
        sent_one, self._sent_one = self._sent_one, asyncio.Event()
        sent_one.set()
        script = self.script[command.TYPE]
        if script:
            return script.pop(0)
        if command.TYPE in self.hang:
            await self._never.wait()
        if command.TYPE in self.silent:
            if isinstance(self.clock, Clock):
                self.clock.advance(timeout)
            else:
                await asyncio.sleep(timeout)  # a request nobody answers, for real
            return Reply(False, code="timeout", message=f"no reply in {timeout} s")
        return Reply(True, data={})

    async def until_connected(self) -> None:
        """NATS comes back after ``outage`` seconds (on the fake clock)."""
        self.reconnections += 1
        if isinstance(self.clock, Clock):
            self.clock.advance(self.outage)

    async def received(self, command_type: str, count: int = 1) -> None:
        """Wait until ``count`` commands of the type have been sent."""
        while len(self.of(command_type)) < count:
            await self._sent_one.wait()

    def types(self) -> list[str]:
        return [s.type for s in self.sent]

    def of(self, command_type: str) -> list[Sent]:
        return [s for s in self.sent if s.type == command_type]


def placed() -> OrderPlaced:
    return OrderPlaced(
        order_id=ORDER,
        customer_id="c-1",
        items=[
            PricedLine(
                product_id="p-1",
                quantity=2,
                unit_price=Decimal("12.50"),
                line_total=Decimal("25.00"),
            ),
        ],
        total=Decimal("25.00"),
        payment_method="invoice",
        shipping_address=ShippingAddress(country="DE"),
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteEventStore]:
    s = await SQLiteEventStore.open(db_path)
    yield s
    await s.close()


OpenStore = Callable[[], Awaitable[SQLiteEventStore]]


@pytest.fixture
async def open_store(db_path: Path) -> AsyncIterator[OpenStore]:
    """Opens the same file again, as a restarted process would; all closed at teardown."""
    opened: list[SQLiteEventStore] = []

    async def open_() -> SQLiteEventStore:
        opened.append(await SQLiteEventStore.open(db_path))
        return opened[-1]

    yield open_
    for s in opened:
        await s.close()


async def saga_events(store: SQLiteEventStore) -> list[Event]:
    return [decode_event(r.type, r.data) for r in await store.read_stream(STREAM)]


def names(events: list[Event]) -> list[str]:
    return [e.TYPE.removeprefix("order_fulfillment.") for e in events]


def step_started(events: list[Event], step: str) -> list[StepStarted]:
    return [e for e in events if isinstance(e, StepStarted) and e.step == step]


def runner_for(
    store: SQLiteEventStore, bus: FakeBus, clock: Clock, policy: SagaPolicy | None = None
) -> SagaRunner:
    return SagaRunner(CommandExecutor(store), bus, policy or fast_policy(), clock=clock)


# -- the happy path -----------------------------------------------------------------------


async def test_happy_path_sends_every_step_in_order_and_completes(
    store: SQLiteEventStore,
) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    bus.script["payment.process"] = [Reply(True, data={"payment_id": "pay-o-1"})]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "completed" and saga.terminal
    assert saga.completed == [
        "reserve_inventory",
        "process_payment",
        "arrange_shipping",
        "confirm_order",
    ]
    assert bus.types() == [
        "inventory.reserve",
        "payment.process",
        "shipment.arrange",
        "order.confirm",
    ]
    assert [s.id for s in bus.sent] == [
        "o-1:reserve_inventory:1",
        "o-1:process_payment:1",
        "o-1:arrange_shipping:1",
        "o-1:confirm_order:1",
    ]
    reserve, pay, ship, confirm = (s.command for s in bus.sent)
    assert reserve == ReserveInventory(
        order_id=ORDER, items=[StockLine(product_id="p-1", quantity=2)]
    )
    assert pay == ProcessPayment(order_id=ORDER, amount=Decimal("25.00"), method="invoice")
    assert ship == ArrangeShipment(order_id=ORDER, address=ShippingAddress(country="DE"))
    assert confirm == ConfirmOrder(order_id=ORDER)
    for sent in bus.sent:
        assert sent.ctx.correlation_id == "corr-1"
        assert sent.ctx.traceparent == TRACEPARENT
        assert sent.ctx.causation_id == TRIGGER.id
        assert sent.ctx.type == sent.type
        assert sent.ctx.subject == ORDER
        assert sent.timeout == ATTEMPT_TIMEOUT

    events = await saga_events(store)
    assert names(events) == [
        "started",
        "step_started",
        "step_completed",
        "step_started",
        "step_completed",
        "step_started",
        "step_completed",
        "step_started",
        "step_completed",
        "completed",
    ]
    assert [e.step for e in events if isinstance(e, StepStarted)] == saga.completed
    assert all(
        e.deadline == T0 + timedelta(seconds=STEP_TIMEOUT)
        for e in events
        if isinstance(e, StepStarted)
    )
    paid = [e for e in events if isinstance(e, StepCompleted) and e.step == "process_payment"]
    assert [e.result for e in paid] == [{"payment_id": "pay-o-1"}]
    # Every transition carries the trigger's correlation and trace.
    for recorded in await store.read_stream(STREAM):
        meta = parse_metadata(recorded.metadata)
        assert meta["correlation_id"] == "corr-1"
        assert meta["traceparent"] == TRACEPARENT
        assert str(meta["causation_id"]).startswith(f"{ORDER}:")


async def test_a_finished_saga_is_returned_without_sending_anything(
    store: SQLiteEventStore,
) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    runner = runner_for(store, bus, clock)
    first = await runner.run(placed(), TRIGGER)
    assert first.status == "completed"
    stored = len(await store.read_stream(STREAM))

    # The same runner, and a restarted one whose bus would never answer anything.
    silent = FakeBus(clock)
    silent.hang = {"inventory.reserve", "payment.process", "shipment.arrange", "order.confirm"}
    async with asyncio.timeout(5):
        again = await runner.run(placed(), TRIGGER)
        restarted = await runner_for(store, silent, clock).run(placed(), TRIGGER)
    assert again.status == restarted.status == "completed"
    assert restarted.completed == first.completed
    assert len(bus.sent) == 4 and silent.sent == []
    assert len(await store.read_stream(STREAM)) == stored


# -- retries ------------------------------------------------------------------------------


async def test_a_retryable_failure_is_retried_until_it_succeeds(store: SQLiteEventStore) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    busy = Reply(False, code="payment_unavailable", message="try later")
    bus.script["payment.process"] = [busy, busy, Reply(True, data={"payment_id": "p"})]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "completed"
    payments = bus.of("payment.process")
    assert [s.id for s in payments] == [
        "o-1:process_payment:1",
        "o-1:process_payment:2",
        "o-1:process_payment:3",
    ]
    assert bus.types() == [
        "inventory.reserve",
        "payment.process",
        "payment.process",
        "payment.process",
        "shipment.arrange",
        "order.confirm",
    ]
    events = await saga_events(store)
    failed = [e for e in events if isinstance(e, StepFailed)]
    assert [(e.step, e.attempt, e.code, e.will_retry) for e in failed] == [
        ("process_payment", 1, "payment_unavailable", True),
        ("process_payment", 2, "payment_unavailable", True),
    ]
    (paid,) = [e for e in events if isinstance(e, StepCompleted) and e.step == "process_payment"]
    assert paid.attempts == 3
    # Retries stay within the step: it was started once.
    assert len(step_started(events, "process_payment")) == 1


async def test_an_outage_longer_than_the_step_postpones_it_and_costs_no_attempt(
    store: SQLiteEventStore,
) -> None:
    """NATS out of reach for longer than the payment step may take: the reply was only
    delayed, so the step's deadline moves by the outage, the same attempt is sent again
    (same command id: applied once), and the order is not cancelled."""
    clock = Clock()
    bus = FakeBus(clock)
    bus.outage = fast_policy().process_payment.timeout * 3
    lost = Reply(False, code="unavailable", message="NATS connection lost meanwhile")
    bus.script["payment.process"] = [lost, Reply(True, data={"payment_id": "p"})]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "completed" and bus.reconnections == 1
    assert [s.id for s in bus.of("payment.process")] == [
        "o-1:process_payment:1",
        "o-1:process_payment:1",
    ]
    events = await saga_events(store)
    assert not [e for e in events if isinstance(e, StepFailed)]
    (started,) = step_started(events, "process_payment")
    (postponed,) = [e for e in events if isinstance(e, StepPostponed)]
    assert postponed.deadline == started.deadline + timedelta(seconds=bus.outage)


async def test_no_responders_is_not_an_attempt(store: SQLiteEventStore) -> None:
    """A service restarting answers nothing for a moment: nothing was done, so the same
    attempt is sent again and no retry is used up."""
    clock = Clock()
    bus = FakeBus(clock)
    nobody = Reply(False, code="no_responders", message="nobody serves it")
    bus.script["payment.process"] = [nobody, nobody, Reply(True, data={"payment_id": "p"})]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "completed"
    assert [s.id for s in bus.of("payment.process")] == ["o-1:process_payment:1"] * 3
    assert not [e for e in await saga_events(store) if isinstance(e, StepFailed)]


# -- compensation -------------------------------------------------------------------------


async def test_a_declined_payment_releases_stock_and_cancels_the_order(
    store: SQLiteEventStore,
) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    bus.script["payment.process"] = [Reply(False, code="payment_declined", message="no")]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "failed"
    assert (saga.failed_step, saga.code) == ("process_payment", "payment_declined")
    assert bus.types() == [
        "inventory.reserve",
        "payment.process",
        "inventory.release",
        "order.cancel",
    ]
    release, cancel = bus.sent[2].command, bus.sent[3].command
    assert release == ReleaseInventory(
        order_id=ORDER, items=[StockLine(product_id="p-1", quantity=2)]
    )
    assert isinstance(cancel, CancelOrder)
    assert cancel.order_id == ORDER and cancel.reason == "payment_declined"
    assert [s.id for s in bus.sent[2:]] == ["o-1:release_inventory:1", "o-1:cancel_order:1"]
    assert all(s.ctx.causation_id == TRIGGER.id for s in bus.sent[2:])
    assert all(s.ctx.correlation_id == "corr-1" for s in bus.sent[2:])

    events = await saga_events(store)
    assert names(events) == [
        "started",
        "step_started",
        "step_completed",
        "step_started",
        "step_failed",
        "compensating",
        "compensated",
        "compensated",
        "failed",
    ]
    (comp,) = [e for e in events if isinstance(e, Compensating)]
    assert comp.actions == ["release_inventory", "cancel_order"]
    (end,) = [e for e in events if isinstance(e, SagaFailed)]
    assert (end.failed_step, end.code) == ("process_payment", "payment_declined")


async def test_a_compensation_is_retried_until_it_succeeds(store: SQLiteEventStore) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    bus.script["payment.process"] = [Reply(False, code="payment_declined", message="no")]
    nobody = Reply(False, code="no_responders", message="nobody serves it")
    bus.script["inventory.release"] = [nobody, nobody, Reply(True, data={})]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "failed"
    assert [s.id for s in bus.of("inventory.release")] == [
        "o-1:release_inventory:1",
        "o-1:release_inventory:2",
        "o-1:release_inventory:3",
    ]
    assert bus.types()[-1] == "order.cancel"
    assert all(s.timeout == 0.3 for s in bus.of("inventory.release"))
    events = await saga_events(store)
    done = [(e.action, e.outcome) for e in events if isinstance(e, Compensated)]
    assert done == [("release_inventory", "done"), ("cancel_order", "done")]


async def test_a_compensation_that_can_never_succeed_is_recorded_and_passed(
    store: SQLiteEventStore,
) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    bus.script["payment.process"] = [Reply(False, code="payment_declined", message="no")]
    bus.script["order.cancel"] = [Reply(False, code="invalid_state", message="confirmed")]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "failed" and saga.code == "payment_declined"
    assert len(bus.of("order.cancel")) == 1
    events = await saga_events(store)
    done = [(e.action, e.outcome) for e in events if isinstance(e, Compensated)]
    assert done == [("release_inventory", "done"), ("cancel_order", "invalid_state")]


# -- a service that never answers -----------------------------------------------------------


def assert_within_deadline(sends: list[Sent], deadline: datetime, slack: float = 0.0) -> None:
    assert sends
    for sent in sends:
        remaining = (deadline - sent.at).total_seconds()
        assert 0 < sent.timeout <= remaining + slack, (sent.id, sent.timeout, remaining)


async def test_a_payment_that_never_answers_times_out_and_is_refunded(
    store: SQLiteEventStore,
) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    bus.silent = {"payment.process"}
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "failed"
    assert (saga.failed_step, saga.code) == ("process_payment", "timeout")
    events = await saga_events(store)
    (started,) = step_started(events, "process_payment")
    payments = bus.of("payment.process")
    assert_within_deadline(payments, started.deadline)
    # 0.4 s, 0.4 s, then only the 0.2 s left before the deadline.
    assert [s.timeout for s in payments] == [0.4, 0.4, 0.2]
    assert sum(s.timeout for s in payments) <= STEP_TIMEOUT

    failed = [e for e in events if isinstance(e, StepFailed)]
    assert [e.code for e in failed] == ["timeout", "timeout", "timeout"]
    assert failed[-1].will_retry is False
    (comp,) = [e for e in events if isinstance(e, Compensating)]
    assert comp.actions == ["refund_payment", "release_inventory", "cancel_order"]
    assert bus.types()[-3:] == ["payment.refund", "inventory.release", "order.cancel"]
    refund = bus.of("payment.refund")[0].command
    assert refund == RefundPayment(order_id=ORDER, reason="timeout")
    (end,) = [e for e in events if isinstance(e, SagaFailed)]
    assert end.code == "timeout"


async def test_a_payment_that_never_answers_in_real_time(store: SQLiteEventStore) -> None:
    bus = FakeBus()
    bus.silent = {"payment.process"}
    policy = fast_policy(timeout=0.5, attempt_timeout=0.2)
    saga = await SagaRunner(CommandExecutor(store), bus, policy).run(placed(), TRIGGER)

    assert saga.status == "failed" and saga.code == "timeout"
    (started,) = step_started(await saga_events(store), "process_payment")
    payments = bus.of("payment.process")
    assert len(payments) >= 2
    assert_within_deadline(payments, started.deadline, slack=0.01)
    assert "payment.refund" in bus.types()


# -- restart safety -----------------------------------------------------------------------


async def test_a_restarted_runner_resumes_the_step_with_its_persisted_deadline(
    open_store: OpenStore,
) -> None:
    policy = fast_policy(timeout=STEP_TIMEOUT, attempt_timeout=0.8)
    clock = Clock()
    store = await open_store()
    bus = FakeBus(clock)
    bus.hang = {"payment.process"}
    task = asyncio.create_task(runner_for(store, bus, clock, policy).run(placed(), TRIGGER))
    await bus.received("payment.process")
    task.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    before = await saga_events(store)
    assert names(before) == ["started", "step_started", "step_completed", "step_started"]
    (interrupted,) = step_started(before, "process_payment")
    assert interrupted.deadline == T0 + timedelta(seconds=STEP_TIMEOUT)
    await store.close()

    # A new process: new store connection, new executor (empty cache), later clock.
    clock.advance(0.5)
    store = await open_store()
    resumed_bus = FakeBus(clock)
    saga = await runner_for(store, resumed_bus, clock, policy).run(placed(), TRIGGER)
    after = await saga_events(store)

    assert saga.status == "completed"
    assert after[: len(before)] == before
    assert sum(isinstance(e, SagaStarted) for e in after) == 1
    assert step_started(after, "process_payment") == [interrupted]
    assert sum(isinstance(e, SagaCompleted) for e in after) == 1
    # It resumed where it was: the interrupted attempt is resent under the same id, and
    # waits only for what is left of the persisted deadline (0.5 s), not a fresh 0.8 s.
    assert resumed_bus.types() == ["payment.process", "shipment.arrange", "order.confirm"]
    resent = resumed_bus.sent[0]
    assert resent.id == bus.of("payment.process")[0].id == "o-1:process_payment:1"
    assert resent.timeout == pytest.approx(0.5)
    assert_within_deadline([resent], interrupted.deadline)


async def test_a_restart_during_compensation_finishes_it(open_store: OpenStore) -> None:
    clock = Clock()
    store = await open_store()
    bus = FakeBus(clock)
    bus.script["payment.process"] = [Reply(False, code="payment_declined", message="no")]
    bus.hang = {"order.cancel"}
    task = asyncio.create_task(runner_for(store, bus, clock).run(placed(), TRIGGER))
    await bus.received("order.cancel")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()

    store = await open_store()
    resumed_bus = FakeBus(clock)
    saga = await runner_for(store, resumed_bus, clock).run(placed(), TRIGGER)
    events = await saga_events(store)
    assert saga.status == "failed"
    assert resumed_bus.types() == ["order.cancel"]
    assert sum(isinstance(e, Compensating) for e in events) == 1
    done = [e.action for e in events if isinstance(e, Compensated)]
    assert done == ["release_inventory", "cancel_order"]


async def test_a_runner_restarted_after_the_deadline_gives_up_without_sending(
    open_store: OpenStore,
) -> None:
    clock = Clock()
    store = await open_store()
    bus = FakeBus(clock)
    bus.script["payment.process"] = [Reply(False, code="payment_unavailable", message="busy")]
    bus.hang = {"payment.process"}  # after the scripted failure
    task = asyncio.create_task(runner_for(store, bus, clock).run(placed(), TRIGGER))
    await bus.received("payment.process", count=2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()

    # Down for longer than the step may take.
    clock.advance(STEP_TIMEOUT + 1)
    store = await open_store()
    resumed_bus = FakeBus(clock)
    saga = await runner_for(store, resumed_bus, clock).run(placed(), TRIGGER)
    events = await saga_events(store)

    assert saga.status == "failed" and (saga.failed_step, saga.code) == (
        "process_payment",
        "timeout",
    )
    assert resumed_bus.types() == ["payment.refund", "inventory.release", "order.cancel"]
    failed = [(e.attempt, e.code, e.will_retry) for e in events if isinstance(e, StepFailed)]
    assert failed == [(1, "payment_unavailable", True), (2, "timeout", False)]
    (comp,) = [e for e in events if isinstance(e, Compensating)]
    assert comp.actions == ["refund_payment", "release_inventory", "cancel_order"]


def test_the_saga_stream_is_named_after_the_saga() -> None:
    assert stream_name(ORDER) == STREAM
    assert Saga(ORDER).saga_id == ORDER


# -- a confirmation whose replies were lost ---------------------------------------------------


async def test_lost_confirmation_replies_complete_the_saga_when_the_order_is_confirmed(
    store: SQLiteEventStore,
) -> None:
    """The confirm step ran out of time, but the order says it is confirmed: nothing is
    refunded or released, and the saga completes."""
    clock = Clock()
    bus = FakeBus(clock)
    bus.silent.add("order.confirm")
    bus.script["order.cancel"] = [Reply(False, code="invalid_state", message="order is confirmed")]
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "completed"
    types = bus.types()
    assert types[-1] == "order.cancel"
    assert "payment.refund" not in types and "inventory.release" not in types
    events = await saga_events(store)
    compensating = [e for e in events if isinstance(e, Compensating)]
    assert compensating[0].actions[0] == "cancel_order"
    assert names(events)[-2:] == ["compensated", "completed"]
    last = events[-2]
    assert isinstance(last, Compensated) and last.outcome == "order_confirmed"


async def test_lost_confirmation_is_compensated_when_the_order_was_not_confirmed(
    store: SQLiteEventStore,
) -> None:
    clock = Clock()
    bus = FakeBus(clock)
    bus.silent.add("order.confirm")
    saga = await runner_for(store, bus, clock).run(placed(), TRIGGER)

    assert saga.status == "failed" and saga.code == "timeout"
    undo = [
        t
        for t in bus.types()
        if t in ("order.cancel", "shipment.cancel", "payment.refund", "inventory.release")
    ]
    assert undo == ["order.cancel", "shipment.cancel", "payment.refund", "inventory.release"]


def test_one_step_setting_keeps_that_steps_other_defaults() -> None:
    policy = SagaPolicy.model_validate({"process_payment": {"timeout": "5"}})
    assert policy.process_payment.timeout == 5
    assert policy.process_payment.attempt_timeout == 20
    assert policy.reserve_inventory.timeout == 30


def test_step_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ordermesh.config import Settings

    monkeypatch.setenv("ORDERMESH_SAGA__PROCESS_PAYMENT__TIMEOUT", "7")
    monkeypatch.setenv("ORDERMESH_SAGA__CONFIRM_ORDER__MAX_ATTEMPTS", "2")
    settings = Settings()
    assert settings.saga.process_payment.timeout == 7
    assert settings.saga.process_payment.attempt_timeout == 20
    assert settings.saga.confirm_order.max_attempts == 2
    assert settings.saga.confirm_order.timeout == 10
