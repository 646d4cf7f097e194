"""The simulated payment service: charge an order once, refund or void it at most once."""

from __future__ import annotations

import functools
from typing import Any

from domain import payment as pay
from domain.errors import PaymentDeclined
from domain.metadata import MessageContext
from domain.money import format_money
from handlers.executor import CommandExecutor, Outcome
from handlers.simulation import PaymentProvider


def payment_view(state: pay.Payment) -> dict[str, Any]:
    return {
        "order_id": state.order_id,
        "payment_id": pay.payment_id(state.order_id),
        "status": state.status,
        "amount": format_money(state.amount),
        "method": state.method,
    }


def _new(order_id: str) -> pay.Payment:
    return pay.Payment(order_id)


async def process(
    provider: PaymentProvider, ex: CommandExecutor, cmd: pay.ProcessPayment, ctx: MessageContext
) -> Outcome:
    """The provider is asked only while the payment is undecided: a resend of a charge
    that went through is answered from the stream, never charged twice."""
    stream = pay.stream_name(cmd.order_id)
    state = await ex.load(stream, functools.partial(_new, cmd.order_id))
    if state.status == "processed":
        return Outcome(payment_view(state), [], duplicate=True)
    state.check_chargeable()
    approved = provider.authorize(cmd.order_id, cmd.method)
    outcome = await ex.execute(
        stream,
        functools.partial(_new, cmd.order_id),
        lambda s: s.process(cmd, approved),
        payment_view,
        ctx,
    )
    if outcome.data["status"] == "declined":
        # The decline is a fact worth storing, and also this command's answer.
        raise PaymentDeclined(
            f"payment for order {cmd.order_id!r} was declined",
            order_id=cmd.order_id,
            method=cmd.method,
        )
    return outcome


async def refund(ex: CommandExecutor, cmd: pay.RefundPayment, ctx: MessageContext) -> Outcome:
    return await ex.execute(
        pay.stream_name(cmd.order_id),
        functools.partial(_new, cmd.order_id),
        lambda s: s.refund(cmd.reason),
        payment_view,
        ctx,
    )
