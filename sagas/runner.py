"""Drives one order fulfilment saga to its end: the I/O around the state machine.

Each transition is appended to the saga's stream before the runner acts on it, with an
id derived from the saga, step and attempt, so a runner restarted after a crash
replays nothing twice: it folds the stream, finds the step it was in and its persisted
deadline, and carries on. Commands are idempotent in the services (per order), so
resending the command of an interrupted attempt is safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from loguru import logger
from opentelemetry.trace import Span

from domain.errors import InvalidState
from domain.inventory import ReleaseInventory, ReserveInventory
from domain.messages import Command, Event
from domain.metadata import MessageContext
from domain.order import CancelOrder, ConfirmOrder, OrderPlaced
from domain.payment import ProcessPayment, RefundPayment
from domain.shipment import ArrangeShipment, CancelShipment
from handlers.executor import CommandExecutor
from sagas.order_fulfillment import (
    CANCEL_ORDER,
    NO_RESPONDERS,
    RETRYABLE,
    SAGA_TYPE,
    STEPS,
    TIMEOUT,
    UNAVAILABLE,
    UNDO,
    Saga,
    SagaCompleted,
    SagaFailed,
    SagaStarted,
    stream_name,
)
from sagas.policy import SagaPolicy
from telemetry import tracing
from telemetry.context import handling
from telemetry.metrics import (
    count,
    observe,
    saga_compensations,
    saga_completed,
    saga_duration,
    saga_started,
    saga_step_duration,
    saga_step_retries,
)

SOURCE = "ordermesh.saga"
#: Replies that mean the step's service was not reached: the attempt does not count.
UNREACHABLE = frozenset({UNAVAILABLE, NO_RESPONDERS})
#: The least pause before a step is sent again after "no responders".
NO_RESPONDERS_PAUSE = 0.1
INVALID_STATE = InvalidState.code


@dataclass(frozen=True, slots=True)
class Reply:
    """A command's answer as the saga sees it; a timeout is a reply too."""

    ok: bool
    data: dict[str, Any] | None = None
    code: str = ""
    message: str = ""


class CommandBus(Protocol):
    async def send(self, command: Command, ctx: MessageContext, timeout: float) -> Reply:
        """The reply; ``UNAVAILABLE`` when NATS was out of reach at any time during it."""
        ...

    async def until_connected(self) -> None:
        """Return once NATS can be reached again."""
        ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def step_command(saga: Saga, step: str) -> Command:
    match step:
        case "reserve_inventory":
            return ReserveInventory(order_id=saga.order_id, items=saga.items)
        case "process_payment":
            return ProcessPayment(
                order_id=saga.order_id, amount=saga.total, method=saga.payment_method
            )
        case "arrange_shipping":
            return ArrangeShipment(order_id=saga.order_id, address=saga.shipping_address)
        case "confirm_order":
            return ConfirmOrder(order_id=saga.order_id)
    raise ValueError(f"unknown step {step!r}")


def undo_command(saga: Saga, action: str) -> Command:
    reason = saga.code or "saga failed"
    match action:
        case "release_inventory":
            return ReleaseInventory(order_id=saga.order_id, items=saga.items)
        case "refund_payment":
            return RefundPayment(order_id=saga.order_id, reason=reason)
        case "cancel_shipment":
            return CancelShipment(order_id=saga.order_id, reason=reason)
        case "cancel_order":
            return CancelOrder(order_id=saga.order_id, reason=reason)
    raise ValueError(f"unknown compensating action {action!r}")


def declare_metrics() -> None:
    """The saga's series at 0 before anything happens. A counter that first appears at 1
    shows no increase, so without this the first saga to end after a restart would be
    invisible to ``increase()`` and ``rate()`` (and to the alerts built on them)."""
    saga_started.labels(SAGA_TYPE)
    for status in ("completed", "failed"):
        saga_completed.labels(SAGA_TYPE, status)
    for step in STEPS:
        saga_step_retries.labels(SAGA_TYPE, step)
    for action in (*UNDO.values(), CANCEL_ORDER):
        saga_compensations.labels(SAGA_TYPE, action, "done")


def _state(saga_id: str) -> Saga:
    return Saga(saga_id)


class SagaRunner:
    def __init__(
        self,
        executor: CommandExecutor,
        bus: CommandBus,
        policy: SagaPolicy | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.executor = executor
        self.bus = bus
        self.policy = policy or SagaPolicy()
        self.clock = clock

    async def run(self, placed: OrderPlaced, trigger: MessageContext, grace: float = 0.0) -> Saga:
        """Start (or resume) the saga of ``placed`` and return it once it has ended.

        ``trigger`` is the context of the ``order.placed`` event: every transition and
        command carries its correlation id and trace. ``grace``: seconds the saga was not
        driven because its driver stood down for an outage; its current step's deadline
        moves by that much (as it would have, had the driver waited).
        """
        saga_id = placed.order_id
        policy = self.policy
        with handling(trigger):
            with self._span("start", trigger, saga_id):
                saga = await self._record(
                    saga_id, "start", trigger, lambda s: s.start(placed, self.clock(), policy)
                )
            if grace > 0 and saga.status == "running" and saga.step and saga.deadline:
                step = saga.step
                saga = await self._record(
                    saga_id,
                    f"{step}:resumed:postponed:{saga.deadline.isoformat()}",
                    trigger,
                    lambda s: s.postpone(step, grace),
                )
            while not saga.terminal:
                if saga.status == "running":
                    saga = await self._advance(saga, trigger)
                else:
                    saga = await self._compensate(saga, trigger)
        return saga

    def _span(
        self, name: str, trigger: MessageContext, saga_id: str, **attributes: Any
    ) -> AbstractContextManager[Span]:
        """A span per step attempt or compensation, in the trace of the placed order."""
        return tracing.span(
            f"{SAGA_TYPE}.{name}",
            traceparent=trigger.traceparent,
            tracestate=trigger.tracestate,
            attributes={
                "saga.type": SAGA_TYPE,
                "saga.id": saga_id,
                "order.id": saga_id,
                **{f"saga.{k}": v for k, v in attributes.items()},
            },
        )

    async def _record(
        self,
        saga_id: str,
        key: str,
        trigger: MessageContext,
        decide: Callable[[Saga], list[Event]],
    ) -> Saga:
        """Append what ``decide`` makes of the current state; return the state after it."""
        ctx = dataclasses.replace(
            trigger,
            id=f"{saga_id}:{key}",
            type=f"{SAGA_TYPE}.transition",
            source=SOURCE,
            causation_id=trigger.id,
        )
        stream = stream_name(saga_id)
        new = functools.partial(_state, saga_id)
        outcome = await self.executor.execute(stream, new, decide, lambda s: {"saga": s}, ctx)
        if outcome.duplicate:
            # Recorded before a restart: the stream has moved on since.
            return await self.executor.load(stream, new)
        saga: Saga = outcome.data["saga"]
        self._count(outcome.events, saga)
        return saga

    def _count(self, events: list[Event], saga: Saga) -> None:
        for event in events:
            if isinstance(event, SagaStarted):
                saga_started.labels(SAGA_TYPE).inc()
            elif isinstance(event, SagaCompleted | SagaFailed):
                status = "completed" if isinstance(event, SagaCompleted) else "failed"
                saga_completed.labels(SAGA_TYPE, status).inc()
                if saga.started_at is not None:
                    seconds = (self.clock() - saga.started_at).total_seconds()
                    observe(saga_duration, seconds, SAGA_TYPE)

    def _command_ctx(
        self, trigger: MessageContext, saga: Saga, command: Command, key: str
    ) -> MessageContext:
        return dataclasses.replace(
            trigger,
            id=f"{saga.saga_id}:{key}",
            type=command.TYPE,
            source=SOURCE,
            subject=saga.order_id,
            causation_id=trigger.id,
            time=None,
        )

    async def _advance(self, saga: Saga, trigger: MessageContext) -> Saga:
        step = saga.step
        assert step is not None and saga.deadline is not None
        policy = self.policy.step(step)
        attempt = saga.failures + 1
        remaining = (saga.deadline - self.clock()).total_seconds()
        if remaining <= 0:
            with self._span(step, trigger, saga.saga_id, step=step, deadline=True) as span:
                tracing.fail(span, TIMEOUT, f"{step} passed its deadline")
                return await self._record(
                    saga.saga_id,
                    f"{step}:deadline",
                    trigger,
                    lambda s: s.deadline_passed(step, self.clock()),
                )
        delay = policy.delay(attempt)
        if delay:
            await asyncio.sleep(min(delay, remaining))
            remaining = (saga.deadline - self.clock()).total_seconds()
            if remaining <= 0:
                return saga  # the loop comes back here and records the deadline
        command = step_command(saga, step)
        if attempt > 1:
            count(saga_step_retries, SAGA_TYPE, step)
        with self._span(step, trigger, saga.saga_id, step=step, attempt=attempt) as span:
            ctx = self._command_ctx(trigger, saga, command, f"{step}:{attempt}")
            sent, sent_at = time.perf_counter(), self.clock()
            reply = await self.bus.send(command, ctx, min(policy.attempt_timeout, remaining))
            tried_at = sent_at
            while reply.code in UNREACHABLE:
                # The step's service could not be reached: NATS was out of reach (the
                # reply may only be late) or nothing serves the subject (a service
                # restarting). Not an attempt, and not the step's time: wait, then send the
                # same attempt again (same command id: the service applies it once).
                tracing.fail(span, reply.code, reply.message)
                try:
                    if reply.code == UNAVAILABLE:
                        await self.bus.until_connected()
                    else:
                        await asyncio.sleep(max(policy.delay(attempt), NO_RESPONDERS_PAUSE))
                except asyncio.CancelledError:
                    # Stopped while waiting (the driver stands down when it cannot renew
                    # its lease, which an outage causes): keep the time lost so far, so
                    # the driver that resumes the saga does not find the deadline passed.
                    await self._postpone(saga, step, attempt, trigger, sent_at)
                    raise
                tried_at = self.clock()
                reply = await self.bus.send(command, ctx, policy.attempt_timeout)
            if tried_at != sent_at:
                # The deadline moves by the time the service was out of reach.
                saga = await self._postpone(saga, step, attempt, trigger, sent_at, tried_at)
            # Inside the step's span: its trace id becomes the exemplar.
            observe(saga_step_duration, time.perf_counter() - sent, SAGA_TYPE, step)
            if reply.ok:
                return await self._record(
                    saga.saga_id,
                    f"{step}:{attempt}:ok",
                    trigger,
                    lambda s: s.step_succeeded(step, reply.data, self.clock(), self.policy),
                )
            tracing.fail(span, reply.code, reply.message)
            logger.bind(saga_id=saga.saga_id).info(
                "saga {} step {} attempt {} failed: {}", saga.saga_id, step, attempt, reply.code
            )
            return await self._record(
                saga.saga_id,
                f"{step}:{attempt}:failed",
                trigger,
                lambda s: s.step_failed(
                    step, attempt, reply.code, reply.message, self.clock(), self.policy
                ),
            )

    async def _postpone(
        self,
        saga: Saga,
        step: str,
        attempt: int,
        trigger: MessageContext,
        since: datetime,
        until: datetime | None = None,
    ) -> Saga:
        """Move the step's deadline by the time from ``since`` to ``until`` (now)."""
        lost = ((until or self.clock()) - since).total_seconds()
        assert saga.deadline is not None  # a running step has one
        return await self._record(
            saga.saga_id,
            f"{step}:{attempt}:postponed:{saga.deadline.isoformat()}",
            trigger,
            lambda s: s.postpone(step, lost),
        )

    async def _compensate(self, saga: Saga, trigger: MessageContext) -> Saga:
        action = saga.pending[0]
        policy = self.policy.compensation
        command = undo_command(saga, action)
        with self._span(action, trigger, saga.saga_id, action=action) as span:
            attempt = 0
            while True:
                attempt += 1
                ctx = self._command_ctx(trigger, saga, command, f"{action}:{attempt}")
                reply = await self.bus.send(command, ctx, policy.attempt_timeout)
                if reply.ok or reply.code not in RETRYABLE:
                    break
                await asyncio.sleep(policy.delay(attempt))
            if (
                action == CANCEL_ORDER
                and reply.code == INVALID_STATE
                and saga.failed_step == STEPS[-1]
            ):
                # The order is confirmed: the confirmation's reply was lost, not the step.
                return await self._record(
                    saga.saga_id, "confirmed_after_all", trigger, lambda s: s.confirmed_after_all()
                )
            outcome = "done" if reply.ok else reply.code
            count(saga_compensations, SAGA_TYPE, action, outcome)
            if not reply.ok:
                # Retrying cannot help (e.g. the order was confirmed meanwhile): say so loudly.
                tracing.fail(span, reply.code, reply.message)
                logger.bind(saga_id=saga.saga_id).error(
                    "saga {} could not {}: {} ({})",
                    saga.saga_id,
                    action,
                    reply.code,
                    reply.message,
                )
            return await self._record(
                saga.saga_id, f"undo:{action}", trigger, lambda s: s.action_done(action, outcome)
            )
