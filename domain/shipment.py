"""Shipments: one stream per order, arranged once, cancelled at most once.

The carrier (a partner service: :mod:`domain.partners`) books the shipment or refuses
it; the stream records what it said. A cancellation that arrives before the arrangement
is recorded all the same, so an arrangement that turns up late is refused instead of
shipping a cancelled order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from domain.errors import InvalidState, RestrictedArea
from domain.messages import Command, Event, Identifier
from domain.shipping import ShippingAddress

ShipmentStatus = Literal["none", "arranged", "failed", "cancelled"]
Reason = Annotated[str, Field(min_length=1, max_length=500)]


def stream_name(order_id: str) -> str:
    return f"shipment-{order_id}"


def shipment_id(order_id: str) -> str:
    """The carrier's idempotency key: one shipment per order, however often it is asked."""
    return f"shp-{order_id}"


class ArrangeShipment(Command):
    TYPE: ClassVar[str] = "shipment.arrange"
    AGGREGATE: ClassVar[str] = "shipment"
    order_id: Identifier
    address: ShippingAddress | None = None


class CancelShipment(Command):
    TYPE: ClassVar[str] = "shipment.cancel"
    AGGREGATE: ClassVar[str] = "shipment"
    order_id: Identifier
    reason: Reason = "order cancelled"


class ShipmentEvent(Event):
    AGGREGATE: ClassVar[str] = "shipment"
    ID_FIELD: ClassVar[str] = "order_id"
    order_id: str


class ShipmentArranged(ShipmentEvent):
    TYPE: ClassVar[str] = "shipment.arranged"
    tracking_number: str
    country: str | None


class ShipmentFailed(ShipmentEvent):
    TYPE: ClassVar[str] = "shipment.failed"
    reason: str
    country: str | None


class ShipmentCancelled(ShipmentEvent):
    TYPE: ClassVar[str] = "shipment.cancelled"
    reason: str


@dataclass
class Shipment:
    order_id: str
    status: ShipmentStatus = "none"
    tracking_number: str | None = None
    country: str | None = None

    def apply(self, event: Event) -> None:
        match event:
            case ShipmentArranged():
                self.status, self.tracking_number = "arranged", event.tracking_number
                self.country = event.country
            case ShipmentFailed():
                self.status, self.country = "failed", event.country
            case ShipmentCancelled():
                self.status = "cancelled"

    def check_arrangeable(self) -> None:
        if self.status == "failed":
            raise RestrictedArea(
                f"cannot ship order {self.order_id!r} to {self.country}",
                order_id=self.order_id,
                country=self.country,
            )
        if self.status == "cancelled":
            raise InvalidState(
                f"shipment of order {self.order_id!r} was cancelled",
                order_id=self.order_id,
                status=self.status,
            )

    def arrange(
        self, cmd: ArrangeShipment, tracking_number: str, refusal: str | None
    ) -> list[Event]:
        """Record the carrier's answer: booked under ``tracking_number``, or refused for
        ``refusal`` (``restricted_area``)."""
        if self.status == "arranged":
            return []
        self.check_arrangeable()
        country = cmd.address.country if cmd.address else None
        if refusal is not None:
            return [ShipmentFailed(order_id=self.order_id, reason=refusal, country=country)]
        return [
            ShipmentArranged(
                order_id=self.order_id, tracking_number=tracking_number, country=country
            )
        ]

    def cancel(self, reason: str) -> list[Event]:
        if self.status == "cancelled":
            return []
        return [ShipmentCancelled(order_id=self.order_id, reason=reason)]
