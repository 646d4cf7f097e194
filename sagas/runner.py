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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from loguru import logger

from domain.inventory import ReleaseInventory, ReserveInventory
from domain.messages import Command, Event
from domain.metadata import MessageContext
from domain.order import CancelOrder, ConfirmOrder, OrderPlaced
from domain.payment import ProcessPayment, RefundPayment
from domain.shipment import ArrangeShipment, CancelShipment
from handlers.executor import CommandExecutor
from sagas.order_fulfillment import RETRYABLE, SAGA_TYPE, Saga, stream_name
from sagas.policy import SagaPolicy

SOURCE = "ordermesh.saga"


@dataclass(frozen=True, slots=True)
class Reply:
    """A command's answer as the saga sees it; a timeout is a reply too."""

    ok: bool
    data: dict[str, Any] | None = None
    code: str = ""
    message: str = ""


class CommandBus(Protocol):
    async def send(self, command: Command, ctx: MessageContext, timeout: float) -> Reply: ...


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

    async def run(self, placed: OrderPlaced, trigger: MessageContext) -> Saga:
        """Start (or resume) the saga of ``placed`` and return it once it has ended.

        ``trigger`` is the context of the ``order.placed`` event: every transition and
        command carries its correlation id and trace.
        """
        saga_id = placed.order_id
        policy = self.policy
        saga = await self._record(
            saga_id, "start", trigger, lambda s: s.start(placed, self.clock(), policy)
        )
        while not saga.terminal:
            if saga.status == "running":
                saga = await self._advance(saga, trigger)
            else:
                saga = await self._compensate(saga, trigger)
        return saga

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
        return saga

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
        ctx = self._command_ctx(trigger, saga, command, f"{step}:{attempt}")
        reply = await self.bus.send(command, ctx, min(policy.attempt_timeout, remaining))
        if reply.ok:
            return await self._record(
                saga.saga_id,
                f"{step}:{attempt}:ok",
                trigger,
                lambda s: s.step_succeeded(step, reply.data, self.clock(), self.policy),
            )
        logger.bind(
            trace_id=trigger.trace_id, correlation_id=trigger.correlation_id, saga_id=saga.saga_id
        ).info("saga {} step {} attempt {} failed: {}", saga.saga_id, step, attempt, reply.code)
        return await self._record(
            saga.saga_id,
            f"{step}:{attempt}:failed",
            trigger,
            lambda s: s.step_failed(
                step, attempt, reply.code, reply.message, self.clock(), self.policy
            ),
        )

    async def _compensate(self, saga: Saga, trigger: MessageContext) -> Saga:
        action = saga.pending[0]
        policy = self.policy.compensation
        command = undo_command(saga, action)
        attempt = 0
        while True:
            attempt += 1
            ctx = self._command_ctx(trigger, saga, command, f"{action}:{attempt}")
            reply = await self.bus.send(command, ctx, policy.attempt_timeout)
            if reply.ok or reply.code not in RETRYABLE:
                break
            await asyncio.sleep(policy.delay(attempt))
        outcome = "done" if reply.ok else reply.code
        if not reply.ok:
            # Retrying cannot help (e.g. the order was confirmed meanwhile): say so loudly.
            logger.bind(
                trace_id=trigger.trace_id,
                correlation_id=trigger.correlation_id,
                saga_id=saga.saga_id,
            ).error(
                "saga {} could not {}: {} ({})", saga.saga_id, action, reply.code, reply.message
            )
        return await self._record(
            saga.saga_id, f"undo:{action}", trigger, lambda s: s.action_done(action, outcome)
        )
