"""Inventory reservations: one stream per order, recording what its stock hold became.

Stock itself lives in the product streams (the only place two orders competing for
the last unit are serialised); this stream is the order-level record the saga relies
on, and its tombstone. A release that arrives before (or instead of) a reservation is
still recorded, so a reservation that turns up late is refused instead of leaking stock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from domain.errors import InsufficientStock, InvalidState
from domain.messages import Command, Event, Identifier, Message
from domain.product import Quantity, per_product_within_limit

ReservationStatus = Literal["none", "reserved", "failed", "released"]


def stream_name(order_id: str) -> str:
    return f"inventory-{order_id}"


class StockLine(Message):
    product_id: Identifier
    quantity: Quantity


Lines = Annotated[list[StockLine], Field(max_length=100), AfterValidator(per_product_within_limit)]


def merge_lines(lines: list[StockLine]) -> list[StockLine]:
    """One line per product, sorted: the order in which every reservation takes locks."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.product_id] = totals.get(line.product_id, 0) + line.quantity
    return [StockLine(product_id=pid, quantity=q) for pid, q in sorted(totals.items())]


class ReserveInventory(Command):
    TYPE: ClassVar[str] = "inventory.reserve"
    AGGREGATE: ClassVar[str] = "inventory"
    order_id: Identifier
    items: Annotated[
        list[StockLine],
        Field(min_length=1, max_length=100),
        AfterValidator(per_product_within_limit),
    ]


class ReleaseInventory(Command):
    TYPE: ClassVar[str] = "inventory.release"
    AGGREGATE: ClassVar[str] = "inventory"
    order_id: Identifier
    items: Lines = Field(default_factory=list)
    """Products that may hold stock for the order; a reservation's own lines are added."""


class InventoryEvent(Event):
    AGGREGATE: ClassVar[str] = "inventory"
    ID_FIELD: ClassVar[str] = "order_id"
    order_id: str


class InventoryReserved(InventoryEvent):
    TYPE: ClassVar[str] = "inventory.reserved"
    items: list[StockLine]


class InventoryReservationFailed(InventoryEvent):
    TYPE: ClassVar[str] = "inventory.reservation_failed"
    reason: str
    product_id: str
    available: int
    requested: int


class InventoryReleased(InventoryEvent):
    TYPE: ClassVar[str] = "inventory.released"
    items: list[StockLine]
    """What went back to stock; empty when nothing had been reserved."""


@dataclass
class Inventory:
    order_id: str
    status: ReservationStatus = "none"
    items: list[StockLine] = field(default_factory=list)
    failure: InventoryReservationFailed | None = None

    def apply(self, event: Event) -> None:
        match event:
            case InventoryReserved():
                self.status, self.items = "reserved", list(event.items)
            case InventoryReservationFailed():
                self.status, self.failure = "failed", event
            case InventoryReleased():
                self.status = "released"

    def check_reservable(self) -> None:
        """Refuse a reservation that can no longer happen; the stored failure is replayed."""
        if self.status == "failed" and self.failure is not None:
            f = self.failure
            raise InsufficientStock(
                f"only {f.available} of {f.product_id!r} available, {f.requested} requested",
                product_id=f.product_id,
                available=f.available,
                requested=f.requested,
            )
        if self.status == "released":
            raise InvalidState(
                f"the reservation of order {self.order_id!r} was already released",
                order_id=self.order_id,
                status=self.status,
            )

    def reserved(self, items: list[StockLine]) -> list[Event]:
        if self.status == "reserved":
            return []
        self.check_reservable()
        return [InventoryReserved(order_id=self.order_id, items=items)]

    def failed(self, exc: InsufficientStock) -> list[Event]:
        if self.status != "none":
            return []
        d = exc.details
        return [
            InventoryReservationFailed(
                order_id=self.order_id,
                reason=exc.code,
                product_id=d["product_id"],
                available=d["available"],
                requested=d["requested"],
            )
        ]

    def release(self, released: list[StockLine]) -> list[Event]:
        if self.status == "released":
            return []
        return [InventoryReleased(order_id=self.order_id, items=released)]
