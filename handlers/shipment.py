"""The shipping service: book an order's shipment with the carrier, or cancel it.

The carrier (:class:`domain.partners.ShippingCarrier`, a partner service) books or
refuses; the shipment stream records its answer. Both are idempotent on the shipment
id, so a resend never books twice.
"""

from __future__ import annotations

import functools
from typing import Any

from domain import shipment as sh
from domain.errors import InvalidState, RestrictedArea
from domain.metadata import MessageContext
from domain.partners import BookingRequest, CancelBookingRequest, ShippingCarrier
from handlers.executor import CommandExecutor, Outcome


def shipment_view(state: sh.Shipment) -> dict[str, Any]:
    return {
        "order_id": state.order_id,
        "status": state.status,
        "tracking_number": state.tracking_number,
        "country": state.country,
    }


async def arrange(
    carrier: ShippingCarrier, ex: CommandExecutor, cmd: sh.ArrangeShipment, ctx: MessageContext
) -> Outcome:
    """The carrier is asked only while the shipment is undecided here."""
    stream = sh.stream_name(cmd.order_id)
    new = functools.partial(sh.Shipment, cmd.order_id)
    state = await ex.load(stream, new)
    if state.status == "arranged":
        return Outcome(shipment_view(state), [], duplicate=True)
    state.check_arrangeable()
    booking = await carrier.book(
        BookingRequest(
            shipment_id=sh.shipment_id(cmd.order_id), order_id=cmd.order_id, address=cmd.address
        ),
        ctx,
    )
    if booking.status == "cancelled":
        # A cancellation reached the carrier first; its record here is on its way.
        raise InvalidState(
            f"shipment of order {cmd.order_id!r} was cancelled", order_id=cmd.order_id
        )
    tracking = booking.tracking_number or ""
    refusal = (booking.reason or RestrictedArea.code) if booking.status == "refused" else None
    outcome = await ex.execute(
        stream, new, lambda s: s.arrange(cmd, tracking, refusal), shipment_view, ctx
    )
    if outcome.data["status"] == "failed":
        # The refusal is stored, and is also this command's answer.
        raise RestrictedArea(
            f"cannot ship order {cmd.order_id!r} to {outcome.data['country']}",
            order_id=cmd.order_id,
            country=outcome.data["country"],
        )
    return outcome


async def cancel(
    carrier: ShippingCarrier, ex: CommandExecutor, cmd: sh.CancelShipment, ctx: MessageContext
) -> Outcome:
    """The carrier cancels the booking, or records the cancellation so that a booking
    still on its way is refused there too; the stream then records the same."""
    stream = sh.stream_name(cmd.order_id)
    new = functools.partial(sh.Shipment, cmd.order_id)
    state = await ex.load(stream, new)
    if state.status != "cancelled":
        await carrier.cancel(
            CancelBookingRequest(
                shipment_id=sh.shipment_id(cmd.order_id),
                order_id=cmd.order_id,
                reason=cmd.reason,
            ),
            ctx,
        )
    return await ex.execute(stream, new, lambda s: s.cancel(cmd.reason), shipment_view, ctx)
