"""Command handlers of the order aggregate."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from typing import Any

from opentelemetry import trace

from domain import order as o
from domain import product as p
from domain.errors import CodedError
from domain.metadata import MessageContext
from domain.money import format_money
from handlers.executor import CommandExecutor, Outcome
from telemetry import tracing
from telemetry.metrics import count, order_cancelled

#: Codes a saga may cancel an order for besides the domain's own: what a step's reply
#: can say when no service refused it (``broker.replies``, ``sagas.order_fulfillment``).
_TRANSPORT_CODES = frozenset(
    {"timeout", "no_responders", "internal_error", "store_unavailable", "validation_error"}
)


def _codes(cls: type[CodedError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


def cancel_reason_label(reason: str) -> str:
    """The ``reason`` label of a cancellation: an error code, or ``other`` for a reason a
    client wrote itself (free text would mint a time series per order)."""
    if reason in _TRANSPORT_CODES or reason in _codes(CodedError):
        return reason
    return "other"


def order_view(state: o.Order) -> dict[str, Any]:
    return {
        "order_id": state.order_id,
        "customer_id": state.customer_id,
        "status": state.status,
        "total": format_money(state.total),
        # Written out, not ``model_dump(mode="json")``: the same dict at a third of the cost.
        "items": [
            {
                "product_id": line.product_id,
                "quantity": line.quantity,
                "unit_price": format_money(line.unit_price),
                "line_total": format_money(line.line_total),
            }
            for line in state.items
        ],
        "cancel_reason": state.cancel_reason,
        "payment_method": state.payment_method,
        "shipping_address": (
            state.shipping_address.model_dump(exclude_none=True) if state.shipping_address else None
        ),
    }


#: How stale a price may be (seconds) when it was last confirmed by the store; a price
#: changed through this process is seen at once, one changed by another replica within
#: this long. Reading every product on every order doubled the cost of placing one.
PRICE_MAX_AGE = 1.0


async def place(ex: CommandExecutor, cmd: o.PlaceOrder, ctx: MessageContext) -> Outcome:
    """Prices come from the product streams; the order records them."""
    ids = sorted({line.product_id for line in cmd.items})
    catalogue: dict[str, p.Product] = {}
    for pid in ids:
        product = ex.recent(p.stream_name(pid), PRICE_MAX_AGE)
        if product is not None:
            catalogue[pid] = product
    if len(catalogue) < len(ids):
        missing = [pid for pid in ids if pid not in catalogue]

        def load(pid: str) -> Awaitable[p.Product]:
            return ex.load(
                p.stream_name(pid), functools.partial(p.Product, pid), max_age=PRICE_MAX_AGE
            )

        # One product needs no task of its own; several are read side by side.
        loaded = (
            [await load(missing[0])]
            if len(missing) == 1
            else await asyncio.gather(*map(load, missing))
        )
        catalogue.update(zip(missing, loaded, strict=True))
    outcome = await ex.execute(
        o.stream_name(cmd.order_id),
        lambda: o.Order(cmd.order_id),
        lambda s: s.place(cmd, catalogue),
        order_view,
        ctx,
    )
    if tracing.enabled():
        span = trace.get_current_span()
        if span.is_recording():
            facts = {
                "order.id": cmd.order_id,
                "order.total": outcome.data["total"],
                "items_count": len(cmd.items),
            }
            span.set_attributes(facts)
            span.add_event("order_processed", facts | {"duplicate": outcome.duplicate})
    return outcome


async def cancel(ex: CommandExecutor, cmd: o.CancelOrder, ctx: MessageContext) -> Outcome:
    outcome = await ex.execute(
        o.stream_name(cmd.order_id),
        lambda: o.Order(cmd.order_id),
        lambda s: s.cancel(cmd.reason),
        order_view,
        ctx,
    )
    if outcome.events:  # a resent cancel, or one of a cancelled order, adds nothing
        count(order_cancelled, cancel_reason_label(cmd.reason))
    return outcome


async def confirm(ex: CommandExecutor, cmd: o.ConfirmOrder, ctx: MessageContext) -> Outcome:
    return await ex.execute(
        o.stream_name(cmd.order_id),
        lambda: o.Order(cmd.order_id),
        lambda s: s.confirm(),
        order_view,
        ctx,
    )
