"""The order fulfilment saga as a pure state machine: events, state, decisions.

reserve inventory → process payment → arrange shipping → confirm order. A step that
fails for good starts compensation: completed steps are undone in reverse order, then
the order is cancelled with the failure's code as its reason.

Every decision is a function of the folded state and its input, and ignores an input
that no longer applies (a reply for a step already left, a second ``order.placed``),
so duplicates and stragglers are harmless. The runner (:mod:`sagas.runner`) does the
I/O; this module never waits or sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal

from domain.inventory import StockLine
from domain.messages import Event
from domain.money import Money
from domain.order import OrderPlaced
from domain.shipping import ShippingAddress
from sagas.policy import SagaPolicy

SAGA_TYPE = "order_fulfillment"

STEPS = ("reserve_inventory", "process_payment", "arrange_shipping", "confirm_order")

#: The action that undoes each step; confirming the order is the last step and has none.
UNDO = {
    "reserve_inventory": "release_inventory",
    "process_payment": "refund_payment",
    "arrange_shipping": "cancel_shipment",
}
CANCEL_ORDER = "cancel_order"
#: Outcome of ``cancel_order`` when the order turned out to be confirmed.
ORDER_CONFIRMED = "order_confirmed"

TIMEOUT = "timeout"

#: Failures whose outcome is unknown (the request may have taken effect): retried while
#: the step has time and attempts left, and the step itself is undone if it gives up.
#: The saga could not reach NATS (never a service's answer): the attempt is not counted.
UNAVAILABLE = "unavailable"
#: Nothing subscribes to the step's subject (a service restarting, or none running).
NO_RESPONDERS = "no_responders"
RETRYABLE = frozenset(
    {
        TIMEOUT,
        UNAVAILABLE,
        NO_RESPONDERS,
        "concurrency_conflict",
        "payment_unavailable",
        # The carrier could not be reached (the partners process down or restarting).
        "shipping_unavailable",
        "store_unavailable",
        "internal_error",
    }
)

SagaStatus = Literal["running", "compensating", "completed", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed"})


def stream_name(saga_id: str) -> str:
    return f"saga-{SAGA_TYPE}-{saga_id}"


# -- events (published as lifecycle messages on sagas.order_fulfillment.<transition>) --


class SagaEvent(Event):
    AGGREGATE: ClassVar[str] = SAGA_TYPE
    ID_FIELD: ClassVar[str] = "saga_id"
    saga_id: str


class SagaStarted(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.started"
    order_id: str
    customer_id: str
    items: list[StockLine]
    total: Money
    payment_method: str
    shipping_address: ShippingAddress | None = None
    started_at: datetime | None = None


class StepStarted(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.step_started"
    step: str
    deadline: datetime
    """When the step gives up; persisted, so a restarted runner keeps the same deadline."""


class StepPostponed(SagaEvent):
    """The step's deadline moved by the time the saga could not reach NATS: an outage
    delays replies, it does not fail the step (see ``SagaRunner``)."""

    TYPE: ClassVar[str] = f"{SAGA_TYPE}.step_postponed"
    step: str
    deadline: datetime
    outage_seconds: float


class StepCompleted(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.step_completed"
    step: str
    attempts: int
    result: dict[str, Any] | None = None


class StepFailed(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.step_failed"
    step: str
    attempt: int
    code: str
    message: str
    will_retry: bool


class Compensating(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.compensating"
    failed_step: str
    code: str
    message: str
    actions: list[str]
    """What will be undone, in order; always ends with ``cancel_order``."""


class Compensated(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.compensated"
    action: str
    outcome: str = "done"
    """``done``, or the error code of an action that could never succeed."""


class SagaCompleted(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.completed"
    order_id: str


class SagaFailed(SagaEvent):
    TYPE: ClassVar[str] = f"{SAGA_TYPE}.failed"
    order_id: str
    failed_step: str
    code: str
    message: str


SAGA_EVENTS: tuple[type[SagaEvent], ...] = (
    SagaStarted,
    StepStarted,
    StepPostponed,
    StepCompleted,
    StepFailed,
    Compensating,
    Compensated,
    SagaCompleted,
    SagaFailed,
)


# -- state and decisions ----------------------------------------------------------------


@dataclass
class Saga:
    saga_id: str
    exists: bool = False
    status: SagaStatus = "running"
    order_id: str = ""
    items: list[StockLine] = field(default_factory=list)
    total: Decimal = Decimal("0.00")
    payment_method: str = "card"
    shipping_address: ShippingAddress | None = None
    started_at: datetime | None = None
    step: str | None = None
    deadline: datetime | None = None
    failures: int = 0
    """Failed attempts of the current step."""
    completed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    """Compensating actions still to run, in order."""
    failed_step: str | None = None
    code: str | None = None
    message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def apply(self, event: Event) -> None:
        match event:
            case SagaStarted():
                self.exists, self.order_id, self.items = True, event.order_id, list(event.items)
                self.total, self.payment_method = event.total, event.payment_method
                self.shipping_address, self.started_at = event.shipping_address, event.started_at
            case StepStarted():
                self.step, self.deadline, self.failures = event.step, event.deadline, 0
            case StepPostponed():
                if self.step == event.step:
                    self.deadline = event.deadline
            case StepCompleted():
                self.completed.append(event.step)
            case StepFailed():
                self.failures += 1
            case Compensating():
                self.status, self.pending = "compensating", list(event.actions)
                self.failed_step, self.code, self.message = (
                    event.failed_step,
                    event.code,
                    event.message,
                )
                self.step = self.deadline = None
            case Compensated():
                if self.pending and self.pending[0] == event.action:
                    self.pending.pop(0)
            case SagaCompleted():
                self.status, self.step, self.deadline = "completed", None, None
                self.pending = []
            case SagaFailed():
                self.status = "failed"

    def start(self, placed: OrderPlaced, now: datetime, policy: SagaPolicy) -> list[Event]:
        if self.exists:
            return []
        first = STEPS[0]
        return [
            SagaStarted(
                saga_id=self.saga_id,
                order_id=placed.order_id,
                customer_id=placed.customer_id,
                items=[
                    StockLine(product_id=i.product_id, quantity=i.quantity) for i in placed.items
                ],
                total=placed.total,
                payment_method=placed.payment_method,
                shipping_address=placed.shipping_address,
                started_at=now,
            ),
            self._step_started(first, now, policy),
        ]

    def _step_started(self, step: str, now: datetime, policy: SagaPolicy) -> StepStarted:
        deadline = now + timedelta(seconds=policy.step(step).timeout)
        return StepStarted(saga_id=self.saga_id, step=step, deadline=deadline)

    def _current(self, step: str) -> bool:
        return self.exists and self.status == "running" and self.step == step

    def step_succeeded(
        self, step: str, result: dict[str, Any] | None, now: datetime, policy: SagaPolicy
    ) -> list[Event]:
        if not self._current(step):
            return []
        events: list[Event] = [
            StepCompleted(
                saga_id=self.saga_id, step=step, attempts=self.failures + 1, result=result
            )
        ]
        index = STEPS.index(step)
        if index + 1 < len(STEPS):
            events.append(self._step_started(STEPS[index + 1], now, policy))
        else:
            events.append(SagaCompleted(saga_id=self.saga_id, order_id=self.order_id))
        return events

    def step_failed(
        self,
        step: str,
        attempt: int,
        code: str,
        message: str,
        now: datetime,
        policy: SagaPolicy,
    ) -> list[Event]:
        if not self._current(step) or attempt != self.failures + 1:
            return []
        assert self.deadline is not None
        will_retry = (
            code in RETRYABLE and attempt < policy.step(step).max_attempts and now < self.deadline
        )
        events: list[Event] = [
            StepFailed(
                saga_id=self.saga_id,
                step=step,
                attempt=attempt,
                code=code,
                message=message,
                will_retry=will_retry,
            )
        ]
        if not will_retry:
            events.append(self._compensating(step, code, message))
        return events

    def postpone(self, step: str, outage_seconds: float) -> list[Event]:
        """Move the current step's deadline by an outage's length."""
        if not self._current(step) or self.deadline is None or outage_seconds <= 0:
            return []
        deadline = self.deadline + timedelta(seconds=outage_seconds)
        return [
            StepPostponed(
                saga_id=self.saga_id,
                step=step,
                deadline=deadline,
                outage_seconds=round(outage_seconds, 3),
            )
        ]

    def deadline_passed(self, step: str, now: datetime) -> list[Event]:
        if not self._current(step) or self.deadline is None or now < self.deadline:
            return []
        message = f"{step} did not finish by {self.deadline.isoformat()}"
        return [
            StepFailed(
                saga_id=self.saga_id,
                step=step,
                attempt=self.failures + 1,
                code=TIMEOUT,
                message=message,
                will_retry=False,
            ),
            self._compensating(step, TIMEOUT, message),
        ]

    def _compensating(self, step: str, code: str, message: str) -> Compensating:
        actions = [UNDO[s] for s in reversed(self.completed) if s in UNDO]
        # A step whose outcome is unknown may have taken effect: undo it too. Every undo
        # is idempotent and leaves a tombstone, so undoing nothing is harmless.
        if code in RETRYABLE and step in UNDO:
            actions.insert(0, UNDO[step])
        if step == STEPS[-1] and code in RETRYABLE:
            # The confirmation may have been stored after all, and it cannot be undone:
            # cancelling first lets the order decide. If it says "confirmed", the saga
            # completes instead (see ``confirmed_after_all``) and nothing else is undone.
            actions.insert(0, CANCEL_ORDER)
        else:
            actions.append(CANCEL_ORDER)
        return Compensating(
            saga_id=self.saga_id, failed_step=step, code=code, message=message, actions=actions
        )

    def confirmed_after_all(self) -> list[Event]:
        """The order refused cancellation because it is confirmed: a confirmation whose
        reply was lost. Every step did happen, so the saga completes."""
        if (
            self.status != "compensating"
            or self.failed_step != STEPS[-1]
            or not self.pending
            or self.pending[0] != CANCEL_ORDER
        ):
            return []
        return [
            Compensated(saga_id=self.saga_id, action=CANCEL_ORDER, outcome=ORDER_CONFIRMED),
            SagaCompleted(saga_id=self.saga_id, order_id=self.order_id),
        ]

    def action_done(self, action: str, outcome: str = "done") -> list[Event]:
        if not self.exists or self.status != "compensating" or not self.pending:
            return []
        if self.pending[0] != action:
            return []
        events: list[Event] = [Compensated(saga_id=self.saga_id, action=action, outcome=outcome)]
        if len(self.pending) == 1:
            events.append(
                SagaFailed(
                    saga_id=self.saga_id,
                    order_id=self.order_id,
                    failed_step=self.failed_step or "",
                    code=self.code or "",
                    message=self.message or "",
                )
            )
        return events
