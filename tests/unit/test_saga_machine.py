"""The order fulfilment saga as a pure state machine: states are built by folding the
events its own decisions return, exactly as the runner does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import pytest

from broker.subjects import event_subject
from domain.catalog import decode_event
from domain.inventory import StockLine
from domain.messages import Event
from domain.order import OrderPlaced, PricedLine
from domain.shipping import ShippingAddress
from sagas.order_fulfillment import (
    SAGA_EVENTS,
    STEPS,
    Compensated,
    Compensating,
    Saga,
    SagaCompleted,
    SagaEvent,
    SagaFailed,
    SagaStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from sagas.policy import CompensationPolicy, SagaPolicy, StepPolicy

E = TypeVar("E", bound=Event)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SAGA_ID = "o-1"

POLICY = SagaPolicy(
    reserve_inventory=StepPolicy(timeout=30, attempt_timeout=10, max_attempts=3),
    process_payment=StepPolicy(timeout=60, attempt_timeout=20, max_attempts=3),
    arrange_shipping=StepPolicy(timeout=45, attempt_timeout=15, max_attempts=3),
    confirm_order=StepPolicy(timeout=10, attempt_timeout=5, max_attempts=3),
)


def placed(order_id: str = SAGA_ID) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_id="c-1",
        items=[
            PricedLine(
                product_id="p-1",
                quantity=2,
                unit_price=Decimal("12.50"),
                line_total=Decimal("25.00"),
            ),
            PricedLine(
                product_id="p-2", quantity=1, unit_price=Decimal("5.00"), line_total=Decimal("5.00")
            ),
        ],
        total=Decimal("30.00"),
        payment_method="invoice",
        shipping_address=ShippingAddress(country="DE"),
    )


def fold(saga: Saga, events: Sequence[Event]) -> Saga:
    for event in events:
        saga.apply(event)
    return saga


def started(now: datetime = T0) -> Saga:
    saga = Saga(SAGA_ID)
    return fold(saga, saga.start(placed(), now, POLICY))


def at_step(step: str) -> Saga:
    """A running saga whose earlier steps succeeded, each at T0."""
    saga = started()
    for done in STEPS[: STEPS.index(step)]:
        fold(saga, saga.step_succeeded(done, {"ok": done}, T0, POLICY))
    assert saga.step == step
    return saga


def types(events: Sequence[Event]) -> list[type[Event]]:
    return [type(e) for e in events]


def only(events: Sequence[Event], cls: type[E]) -> E:
    (match,) = [e for e in events if isinstance(e, cls)]
    return match


# -- start --------------------------------------------------------------------------------


def test_start_records_the_order_and_starts_the_first_step_with_its_deadline() -> None:
    saga = Saga(SAGA_ID)
    events = saga.start(placed(), T0, POLICY)
    assert types(events) == [SagaStarted, StepStarted]
    first, step = events
    assert isinstance(first, SagaStarted) and isinstance(step, StepStarted)
    assert first.saga_id == first.order_id == SAGA_ID
    assert first.customer_id == "c-1"
    assert first.items == [
        StockLine(product_id="p-1", quantity=2),
        StockLine(product_id="p-2", quantity=1),
    ]
    assert first.total == Decimal("30.00")
    assert first.payment_method == "invoice"
    assert first.shipping_address == ShippingAddress(country="DE")
    assert step.step == "reserve_inventory"
    assert step.deadline == T0 + timedelta(seconds=30)

    fold(saga, events)
    assert saga.exists and saga.status == "running"
    assert saga.step == "reserve_inventory" and saga.deadline == T0 + timedelta(seconds=30)
    assert saga.failures == 0 and saga.completed == [] and not saga.terminal


def test_a_second_start_is_harmless() -> None:
    saga = started()
    assert saga.start(placed(), T0 + timedelta(seconds=5), POLICY) == []
    assert saga.deadline == T0 + timedelta(seconds=30)


# -- success ------------------------------------------------------------------------------


def test_happy_path_runs_all_four_steps_and_completes() -> None:
    saga = started()
    now = T0
    for index, step in enumerate(STEPS):
        assert saga.step == step
        now += timedelta(seconds=1)
        events = saga.step_succeeded(step, {"step": step}, now, POLICY)
        done = events[0]
        assert isinstance(done, StepCompleted)
        assert (done.step, done.attempts, done.result) == (step, 1, {"step": step})
        if index + 1 < len(STEPS):
            assert types(events) == [StepCompleted, StepStarted]
            nxt = events[1]
            assert isinstance(nxt, StepStarted)
            assert nxt.step == STEPS[index + 1]
            assert nxt.deadline == now + timedelta(seconds=POLICY.step(nxt.step).timeout)
        else:
            assert types(events) == [StepCompleted, SagaCompleted]
            end = events[1]
            assert isinstance(end, SagaCompleted) and end.order_id == SAGA_ID
        fold(saga, events)
    assert saga.status == "completed" and saga.terminal
    assert saga.completed == list(STEPS)
    assert saga.step is None and saga.deadline is None


def test_a_reply_for_a_step_that_is_not_current_is_ignored() -> None:
    saga = at_step("process_payment")
    # A late duplicate reply for the step already left, and one for a step not yet begun.
    assert saga.step_succeeded("reserve_inventory", {}, T0, POLICY) == []
    assert saga.step_succeeded("arrange_shipping", {}, T0, POLICY) == []
    assert saga.step_failed("reserve_inventory", 1, "insufficient_stock", "x", T0, POLICY) == []
    assert saga.deadline_passed("reserve_inventory", T0 + timedelta(days=1)) == []


def test_a_finished_saga_ignores_everything() -> None:
    saga = at_step("confirm_order")
    fold(saga, saga.step_succeeded("confirm_order", None, T0, POLICY))
    assert saga.status == "completed"
    assert saga.step_succeeded("confirm_order", None, T0, POLICY) == []
    assert saga.step_failed("confirm_order", 1, "timeout", "x", T0, POLICY) == []
    assert saga.action_done("cancel_order") == []
    assert saga.start(placed(), T0, POLICY) == []


def test_step_attempts_count_failed_attempts() -> None:
    saga = at_step("process_payment")
    fold(saga, saga.step_failed("process_payment", 1, "payment_unavailable", "busy", T0, POLICY))
    events = saga.step_succeeded("process_payment", None, T0, POLICY)
    done = events[0]
    assert isinstance(done, StepCompleted) and done.attempts == 2
    fold(saga, events)
    assert saga.step == "arrange_shipping" and saga.failures == 0


# -- step failures ------------------------------------------------------------------------


def test_a_retryable_failure_with_attempts_left_is_retried() -> None:
    saga = at_step("process_payment")
    events = saga.step_failed("process_payment", 1, "payment_unavailable", "busy", T0, POLICY)
    assert types(events) == [StepFailed]
    failed = events[0]
    assert isinstance(failed, StepFailed)
    assert (failed.step, failed.attempt, failed.code, failed.message) == (
        "process_payment",
        1,
        "payment_unavailable",
        "busy",
    )
    assert failed.will_retry is True
    fold(saga, events)
    assert saga.status == "running" and saga.step == "process_payment"
    assert saga.failures == 1


def test_a_failure_for_the_wrong_attempt_is_ignored() -> None:
    saga = at_step("process_payment")
    assert saga.step_failed("process_payment", 2, "payment_unavailable", "x", T0, POLICY) == []
    fold(saga, saga.step_failed("process_payment", 1, "payment_unavailable", "x", T0, POLICY))
    # The reply to attempt 1, delivered twice, does not count twice.
    assert saga.step_failed("process_payment", 1, "payment_unavailable", "x", T0, POLICY) == []
    assert saga.failures == 1


def test_retries_stop_after_max_attempts() -> None:
    saga = at_step("process_payment")
    for attempt in (1, 2):
        events = saga.step_failed(
            "process_payment", attempt, "payment_unavailable", "busy", T0, POLICY
        )
        assert only(events, StepFailed).will_retry
        fold(saga, events)
    events = saga.step_failed("process_payment", 3, "payment_unavailable", "busy", T0, POLICY)
    assert types(events) == [StepFailed, Compensating]
    failed = events[0]
    assert isinstance(failed, StepFailed)
    assert failed.attempt == 3 and failed.will_retry is False
    comp = events[1]
    assert isinstance(comp, Compensating)
    assert (comp.failed_step, comp.code, comp.message) == (
        "process_payment",
        "payment_unavailable",
        "busy",
    )
    # The outcome of the last attempt is unknown: the charge itself is undone too.
    assert comp.actions == ["refund_payment", "release_inventory", "cancel_order"]
    fold(saga, events)
    assert saga.status == "compensating" and saga.failures == 3
    assert saga.step is None and saga.deadline is None
    assert saga.pending == comp.actions


def test_no_retry_past_the_deadline() -> None:
    saga = at_step("process_payment")
    assert saga.deadline == T0 + timedelta(seconds=60)
    for now in (saga.deadline, saga.deadline + timedelta(seconds=1)):
        events = saga.step_failed("process_payment", 1, "payment_unavailable", "busy", now, POLICY)
        assert types(events) == [StepFailed, Compensating]
        failed = events[0]
        assert isinstance(failed, StepFailed) and failed.will_retry is False
    just_before = saga.deadline - timedelta(milliseconds=1)
    events = saga.step_failed(
        "process_payment", 1, "payment_unavailable", "busy", just_before, POLICY
    )
    assert types(events) == [StepFailed]


REFUND, RELEASE, UNSHIP, CANCEL = (
    "refund_payment",
    "release_inventory",
    "cancel_shipment",
    "cancel_order",
)


@pytest.mark.parametrize(
    ("step", "code", "actions"),
    [
        # A business refusal had no effect: the failed step is not undone.
        ("process_payment", "payment_declined", [RELEASE, CANCEL]),
        # A timed-out charge may have gone through: it is undone too.
        ("process_payment", "timeout", [REFUND, RELEASE, CANCEL]),
        ("arrange_shipping", "restricted_area", [REFUND, RELEASE, CANCEL]),
        ("arrange_shipping", "timeout", [UNSHIP, REFUND, RELEASE, CANCEL]),
        ("reserve_inventory", "insufficient_stock", [CANCEL]),
        ("reserve_inventory", "timeout", [RELEASE, CANCEL]),
        # Confirming has no undo of its own; everything before it is undone.
        ("confirm_order", "invalid_state", [UNSHIP, REFUND, RELEASE, CANCEL]),
    ],
)
def test_a_final_failure_compensates_completed_steps_in_reverse(
    step: str, code: str, actions: list[str]
) -> None:
    saga = at_step(step)
    # A timeout is retryable: use up the attempts first.
    attempt = 1
    if code == "timeout":
        for attempt in (1, 2):
            fold(saga, saga.step_failed(step, attempt, code, "slow", T0, POLICY))
        attempt = 3
    events = saga.step_failed(step, attempt, code, "refused", T0, POLICY)
    assert types(events) == [StepFailed, Compensating]
    failed, comp = events
    assert isinstance(failed, StepFailed) and failed.will_retry is False
    assert isinstance(comp, Compensating)
    assert (comp.failed_step, comp.code) == (step, code)
    assert comp.actions == actions
    fold(saga, events)
    assert saga.status == "compensating" and saga.pending == actions


# -- compensation -------------------------------------------------------------------------


def declined() -> Saga:
    saga = at_step("arrange_shipping")
    fold(saga, saga.step_failed("arrange_shipping", 1, "restricted_area", "XX", T0, POLICY))
    assert saga.pending == ["refund_payment", "release_inventory", "cancel_order"]
    return saga


def test_action_done_accepts_only_the_next_pending_action() -> None:
    saga = declined()
    assert saga.action_done("release_inventory") == []
    assert saga.action_done("cancel_order") == []
    assert saga.action_done("cancel_shipment") == []

    events = saga.action_done("refund_payment")
    assert types(events) == [Compensated]
    done = events[0]
    assert isinstance(done, Compensated)
    assert (done.action, done.outcome) == ("refund_payment", "done")
    fold(saga, events)
    assert saga.pending == ["release_inventory", "cancel_order"]
    # The same action reported again is a straggler.
    assert saga.action_done("refund_payment") == []
    assert saga.status == "compensating"


def test_the_last_action_fails_the_saga_with_the_failed_step_and_code() -> None:
    saga = declined()
    fold(saga, saga.action_done("refund_payment"))
    fold(saga, saga.action_done("release_inventory"))
    events = saga.action_done("cancel_order", "invalid_state")
    assert types(events) == [Compensated, SagaFailed]
    done, end = events
    assert isinstance(done, Compensated) and done.outcome == "invalid_state"
    assert isinstance(end, SagaFailed)
    assert (end.order_id, end.failed_step, end.code, end.message) == (
        SAGA_ID,
        "arrange_shipping",
        "restricted_area",
        "XX",
    )
    fold(saga, events)
    assert saga.status == "failed" and saga.terminal and saga.pending == []
    assert saga.action_done("cancel_order") == []


def test_action_done_is_ignored_while_running() -> None:
    saga = at_step("process_payment")
    assert saga.action_done("cancel_order") == []
    assert saga.action_done("release_inventory") == []


def test_deadline_passed_only_after_the_deadline() -> None:
    saga = at_step("process_payment")
    assert saga.deadline is not None
    deadline = saga.deadline
    assert saga.deadline_passed("process_payment", deadline - timedelta(microseconds=1)) == []
    fold(saga, saga.step_failed("process_payment", 1, "timeout", "slow", T0, POLICY))

    events = saga.deadline_passed("process_payment", deadline)
    assert types(events) == [StepFailed, Compensating]
    failed, comp = events
    assert isinstance(failed, StepFailed)
    assert (failed.step, failed.attempt, failed.code, failed.will_retry) == (
        "process_payment",
        2,
        "timeout",
        False,
    )
    assert deadline.isoformat() in failed.message
    assert isinstance(comp, Compensating)
    assert comp.code == "timeout" and comp.failed_step == "process_payment"
    assert comp.actions == ["refund_payment", "release_inventory", "cancel_order"]
    fold(saga, events)
    assert saga.status == "compensating"
    assert saga.deadline_passed("process_payment", deadline + timedelta(days=1)) == []


# -- policy -------------------------------------------------------------------------------


def test_step_policy_delay_doubles_from_the_second_attempt_and_is_capped() -> None:
    policy = StepPolicy(timeout=10, attempt_timeout=1, backoff=0.5, backoff_max=3.0)
    assert [policy.delay(a) for a in range(0, 7)] == [0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert StepPolicy(timeout=1, attempt_timeout=1, backoff=0).delay(5) == 0.0


def test_compensation_policy_delay_doubles_and_is_capped() -> None:
    policy = CompensationPolicy(backoff=0.25, backoff_max=1.5)
    assert [policy.delay(a) for a in range(0, 6)] == [0.25, 0.25, 0.5, 1.0, 1.5, 1.5]


def test_saga_policy_looks_steps_up_by_name() -> None:
    for step in STEPS:
        assert POLICY.step(step) is getattr(POLICY, step)
    with pytest.raises(AssertionError):
        POLICY.step("compensation")


# -- wire format --------------------------------------------------------------------------


def every_saga_event() -> list[SagaEvent]:
    """One of each saga event type, produced by the machine itself."""
    produced: list[Event] = Saga(SAGA_ID).start(placed(), T0, POLICY)
    ok = at_step("process_payment")
    produced += ok.step_succeeded("process_payment", {"payment_id": "pay-1"}, T0, POLICY)
    last = at_step("confirm_order")
    produced += last.step_succeeded("confirm_order", None, T0, POLICY)
    failing = declined()
    produced += failing.action_done("refund_payment")
    fold(failing, failing.action_done("refund_payment"))
    fold(failing, failing.action_done("release_inventory"))
    produced += failing.action_done("cancel_order")
    produced += at_step("arrange_shipping").postpone("arrange_shipping", 10.0)
    refused = started()
    produced += refused.step_failed("reserve_inventory", 1, "insufficient_stock", "no", T0, POLICY)
    events = [e for e in produced if isinstance(e, SagaEvent)]
    assert len(events) == len(produced)
    return events


def test_every_saga_event_round_trips_through_the_catalogue() -> None:
    events = every_saga_event()
    assert {type(e) for e in events} == set(SAGA_EVENTS)
    for event in events:
        decoded = decode_event(event.TYPE, event.model_dump_json().encode())
        assert type(decoded) is type(event)
        assert decoded == event


def test_saga_events_have_saga_subjects_and_order_events_do_not() -> None:
    for cls in SAGA_EVENTS:
        transition = cls.TYPE.removeprefix("order_fulfillment.")
        assert transition != cls.TYPE
        assert event_subject(cls.TYPE) == f"sagas.order_fulfillment.{transition}"
    assert event_subject(OrderPlaced.TYPE) == "events.order.placed"
    assert decode_event(OrderPlaced.TYPE, placed().model_dump_json().encode()) == placed()


def test_an_outage_moves_the_current_steps_deadline_and_nothing_else() -> None:
    saga = at_step("process_payment")
    assert saga.deadline is not None
    before = saga.deadline
    events = saga.postpone("process_payment", 12.5)
    fold(saga, events)
    assert saga.deadline == before + timedelta(seconds=12.5)
    assert saga.failures == 0 and saga.step == "process_payment"
    assert saga.postpone("reserve_inventory", 5.0) == []  # not the current step
    assert saga.postpone("process_payment", 0.0) == []
