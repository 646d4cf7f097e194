"""The payment service: charge an order once through the gateway, refund or void it once.

The gateway (:class:`domain.partners.PaymentGateway`, a partner service) moves the money;
the payment stream records what it said. Both are idempotent on the payment id, so a
resend that finds the charge recorded is answered from the stream, and one that does not
(the service died between the gateway's answer and the append) is answered by the
gateway from its own record: an order is never charged twice.
"""

from __future__ import annotations

import functools
from typing import Any

from domain import payment as pay
from domain.errors import InvalidState, PaymentDeclined, PaymentUnavailable
from domain.metadata import MessageContext
from domain.money import format_money
from domain.partners import ChargeRequest, PaymentGateway, RefundRequest
from handlers.executor import CommandExecutor, Outcome


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
    gateway: PaymentGateway, ex: CommandExecutor, cmd: pay.ProcessPayment, ctx: MessageContext
) -> Outcome:
    """The gateway is asked only while the payment is undecided here."""
    stream = pay.stream_name(cmd.order_id)
    state = await ex.load(stream, functools.partial(_new, cmd.order_id))
    if state.status == "processed":
        return Outcome(payment_view(state), [], duplicate=True)
    state.check_chargeable()
    payment_id = pay.payment_id(cmd.order_id)
    reply = await gateway.charge(
        ChargeRequest(
            payment_id=payment_id, order_id=cmd.order_id, amount=cmd.amount, method=cmd.method
        ),
        ctx,
    )
    if reply.status == "unavailable":
        raise PaymentUnavailable(
            "payment gateway temporarily unavailable",
            order_id=cmd.order_id,
            reason=reply.reason,
        )
    if reply.status == "voided":
        # A refund reached the gateway first; its record here is on its way.
        raise InvalidState(f"payment for order {cmd.order_id!r} was voided", order_id=cmd.order_id)
    approved = reply.status == "approved"
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


async def refund(
    gateway: PaymentGateway, ex: CommandExecutor, cmd: pay.RefundPayment, ctx: MessageContext
) -> Outcome:
    """The gateway refunds a charge, or voids a payment it has not charged (so a charge
    still on its way is refused there too); the stream then records the same."""
    stream = pay.stream_name(cmd.order_id)
    state = await ex.load(stream, functools.partial(_new, cmd.order_id))
    if state.status not in ("refunded", "voided"):
        await gateway.refund(
            RefundRequest(
                payment_id=pay.payment_id(cmd.order_id), order_id=cmd.order_id, reason=cmd.reason
            ),
            ctx,
        )
    return await ex.execute(
        stream,
        functools.partial(_new, cmd.order_id),
        lambda s: s.refund(cmd.reason),
        payment_view,
        ctx,
    )
