"""The simulated shipping service: arrange an order's shipment, or cancel it."""

from __future__ import annotations

import functools
from typing import Any

from domain import shipment as sh
from domain.errors import RestrictedArea
from domain.metadata import MessageContext
from handlers.executor import CommandExecutor, Outcome


def shipment_view(state: sh.Shipment) -> dict[str, Any]:
    return {
        "order_id": state.order_id,
        "status": state.status,
        "tracking_number": state.tracking_number,
        "country": state.country,
    }


async def arrange(ex: CommandExecutor, cmd: sh.ArrangeShipment, ctx: MessageContext) -> Outcome:
    outcome = await ex.execute(
        sh.stream_name(cmd.order_id),
        functools.partial(sh.Shipment, cmd.order_id),
        lambda s: s.arrange(cmd),
        shipment_view,
        ctx,
    )
    if outcome.data["status"] == "failed":
        # The refusal is stored, and is also this command's answer.
        raise RestrictedArea(
            f"cannot ship order {cmd.order_id!r} to {outcome.data['country']}",
            order_id=cmd.order_id,
            country=outcome.data["country"],
        )
    return outcome


async def cancel(ex: CommandExecutor, cmd: sh.CancelShipment, ctx: MessageContext) -> Outcome:
    return await ex.execute(
        sh.stream_name(cmd.order_id),
        functools.partial(sh.Shipment, cmd.order_id),
        lambda s: s.cancel(cmd.reason),
        shipment_view,
        ctx,
    )
