"""The order aggregate: what a customer asked for, at which prices, and its fate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from domain.errors import (
    AmountTooLarge,
    InvalidState,
    OrderAlreadyExists,
    OrderNotFound,
    ProductNotFound,
)
from domain.ids import new_uuid
from domain.messages import Command, Event, Identifier, Message
from domain.money import MAX_AMOUNT, Money
from domain.payment import PaymentMethod
from domain.product import Product, Quantity, per_product_within_limit
from domain.shipping import ShippingAddress

OrderStatus = Literal["pending", "confirmed", "cancelled"]
_ZERO = Decimal("0.00")


def stream_name(order_id: str) -> str:
    return f"order-{order_id}"


def new_order_id() -> str:
    return f"o-{new_uuid().hex[:12]}"


class OrderLine(Message):
    product_id: Identifier
    quantity: Quantity


class PricedLine(Message):
    product_id: str
    quantity: int
    unit_price: Money
    line_total: Money


# -- commands ---------------------------------------------------------------------------


class PlaceOrder(Command):
    TYPE: ClassVar[str] = "order.place"
    AGGREGATE: ClassVar[str] = "order"
    order_id: Identifier = Field(default_factory=new_order_id)
    customer_id: Identifier
    items: Annotated[
        list[OrderLine],
        Field(min_length=1, max_length=100),
        AfterValidator(per_product_within_limit),
    ]
    payment_method: PaymentMethod = "card"
    shipping_address: ShippingAddress | None = None


class ConfirmOrder(Command):
    TYPE: ClassVar[str] = "order.confirm"
    AGGREGATE: ClassVar[str] = "order"
    order_id: Identifier


class CancelOrder(Command):
    TYPE: ClassVar[str] = "order.cancel"
    AGGREGATE: ClassVar[str] = "order"
    order_id: Identifier
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "cancelled by customer"


# -- events -----------------------------------------------------------------------------


class OrderEvent(Event):
    AGGREGATE: ClassVar[str] = "order"
    ID_FIELD: ClassVar[str] = "order_id"
    order_id: str


class OrderPlaced(OrderEvent):
    TYPE: ClassVar[str] = "order.placed"
    customer_id: str
    items: list[PricedLine]
    total: Money
    payment_method: str = "card"
    shipping_address: ShippingAddress | None = None


class OrderConfirmed(OrderEvent):
    TYPE: ClassVar[str] = "order.confirmed"


class OrderCancelled(OrderEvent):
    TYPE: ClassVar[str] = "order.cancelled"
    reason: str


# -- aggregate --------------------------------------------------------------------------


@dataclass
class Order:
    """State folded from the order stream; decisions return events and mutate nothing."""

    order_id: str
    exists: bool = False
    customer_id: str = ""
    status: OrderStatus = "pending"
    items: list[PricedLine] = field(default_factory=list)
    total: Decimal = Decimal("0.00")
    cancel_reason: str | None = None
    payment_method: str = "card"
    shipping_address: ShippingAddress | None = None

    def apply(self, event: Event) -> None:
        match event:
            case OrderPlaced():
                self.exists = True
                self.order_id = event.order_id  # a generated id is the event's, not the caller's
                self.customer_id, self.items, self.total = (
                    event.customer_id,
                    list(event.items),
                    event.total,
                )
                self.payment_method, self.shipping_address = (
                    event.payment_method,
                    event.shipping_address,
                )
            case OrderConfirmed():
                self.status = "confirmed"
            case OrderCancelled():
                self.status = "cancelled"
                self.cancel_reason = event.reason

    def _require(self) -> None:
        if not self.exists:
            raise OrderNotFound(f"order {self.order_id!r} does not exist", order_id=self.order_id)

    def place(self, cmd: PlaceOrder, catalogue: Mapping[str, Product]) -> list[Event]:
        """Price every line from the catalogue as it is now; unknown products refuse the order."""
        if self.exists:
            raise OrderAlreadyExists(
                f"order {self.order_id!r} already exists", order_id=self.order_id
            )
        unknown = {
            line.product_id
            for line in cmd.items
            if (product := catalogue.get(line.product_id)) is None or not product.exists
        }
        if unknown:
            missing = sorted(unknown)
            raise ProductNotFound(f"unknown product(s): {', '.join(missing)}", product_ids=missing)
        # Every value below is already valid (a validated command, prices as stored), so
        # the models are built without validating again, which was most of placing an
        # order; the one thing that can go wrong, a total past what money may be, is
        # checked here and refused by name.
        lines = [
            PricedLine.trusted(
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price=catalogue[line.product_id].price,
                line_total=catalogue[line.product_id].price * line.quantity,
            )
            for line in cmd.items
        ]
        total = sum((line.line_total for line in lines), _ZERO)
        if total > MAX_AMOUNT:
            raise AmountTooLarge(
                f"order {self.order_id!r} would total {total}; the limit is {MAX_AMOUNT}",
                order_id=self.order_id,
                total=str(total),
                limit=str(MAX_AMOUNT),
            )
        return [
            OrderPlaced.trusted(
                order_id=cmd.order_id,
                customer_id=cmd.customer_id,
                items=lines,
                total=total,
                payment_method=cmd.payment_method,
                shipping_address=cmd.shipping_address,
            )
        ]

    def confirm(self) -> list[Event]:
        self._require()
        if self.status == "confirmed":
            return []
        if self.status != "pending":
            raise InvalidState(
                f"order {self.order_id!r} is {self.status}",
                order_id=self.order_id,
                status=self.status,
            )
        return [OrderConfirmed(order_id=self.order_id)]

    def cancel(self, reason: str) -> list[Event]:
        self._require()
        if self.status == "cancelled":
            return []
        if self.status != "pending":
            raise InvalidState(
                f"order {self.order_id!r} is {self.status} and cannot be cancelled",
                order_id=self.order_id,
                status=self.status,
            )
        return [OrderCancelled(order_id=self.order_id, reason=reason)]
