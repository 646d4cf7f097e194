"""The product aggregate: catalogue entry, price and stock.

Stock reservation lives here, not in orders, because the product stream is the only
place where two orders competing for the last unit are serialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, ClassVar, Protocol, TypeVar

from pydantic import Field

from domain.errors import InsufficientStock, ProductAlreadyExists, ProductNotFound
from domain.messages import Command, Event, Identifier
from domain.money import Money

Quantity = Annotated[int, Field(strict=True, gt=0, le=1_000_000)]  # MAX_QUANTITY
StockLevel = Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)]

MAX_QUANTITY = 1_000_000


class HasQuantity(Protocol):
    product_id: str
    quantity: int


L = TypeVar("L", bound=HasQuantity)


def per_product_within_limit(lines: list[L]) -> list[L]:
    """A validator of a command's lines: a product may be listed on several lines, but
    together they may not ask for more than one line may. Reservations merge lines per
    product, and a merged line past the limit could not be built (or stored and read)."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.product_id] = totals.get(line.product_id, 0) + line.quantity
        if totals[line.product_id] > MAX_QUANTITY:
            raise ValueError(
                f"product {line.product_id!r}: the lines add up to more than {MAX_QUANTITY}"
            )
    return lines


def stream_name(product_id: str) -> str:
    return f"product-{product_id}"


# -- commands ---------------------------------------------------------------------------


class CreateProduct(Command):
    TYPE: ClassVar[str] = "product.create"
    AGGREGATE: ClassVar[str] = "product"
    product_id: Identifier
    name: Annotated[str, Field(min_length=1, max_length=200)]
    price: Money
    stock: StockLevel = 0


class ChangePrice(Command):
    TYPE: ClassVar[str] = "product.change_price"
    AGGREGATE: ClassVar[str] = "product"
    product_id: Identifier
    price: Money


class Restock(Command):
    TYPE: ClassVar[str] = "product.restock"
    AGGREGATE: ClassVar[str] = "product"
    product_id: Identifier
    quantity: Quantity


# -- events -----------------------------------------------------------------------------


class ProductEvent(Event):
    AGGREGATE: ClassVar[str] = "product"
    ID_FIELD: ClassVar[str] = "product_id"
    product_id: str


class ProductCreated(ProductEvent):
    TYPE: ClassVar[str] = "product.created"
    name: str
    price: Money
    stock: int


class PriceChanged(ProductEvent):
    TYPE: ClassVar[str] = "product.price_changed"
    price: Money
    previous_price: Money


class Restocked(ProductEvent):
    TYPE: ClassVar[str] = "product.restocked"
    quantity: int
    stock: int


class StockReserved(ProductEvent):
    TYPE: ClassVar[str] = "product.stock_reserved"
    order_id: str
    quantity: int
    stock: int


class StockReleased(ProductEvent):
    TYPE: ClassVar[str] = "product.stock_released"
    order_id: str
    quantity: int
    stock: int


# -- aggregate --------------------------------------------------------------------------


@dataclass
class Product:
    """State folded from the product stream; decisions return events and mutate nothing."""

    product_id: str
    exists: bool = False
    name: str = ""
    price: Decimal = Decimal("0.00")
    stock: int = 0
    reservations: dict[str, int] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        match event:
            case ProductCreated():
                self.exists = True
                self.name, self.price, self.stock = event.name, event.price, event.stock
            case PriceChanged():
                self.price = event.price
            case Restocked():
                self.stock = event.stock
            case StockReserved():
                self.stock = event.stock
                self.reservations[event.order_id] = event.quantity
            case StockReleased():
                self.stock = event.stock
                self.reservations.pop(event.order_id, None)

    def _require(self) -> None:
        if not self.exists:
            raise ProductNotFound(
                f"product {self.product_id!r} does not exist", product_id=self.product_id
            )

    def create(self, cmd: CreateProduct) -> list[Event]:
        if self.exists:
            raise ProductAlreadyExists(
                f"product {self.product_id!r} already exists", product_id=self.product_id
            )
        return [
            ProductCreated(
                product_id=cmd.product_id, name=cmd.name, price=cmd.price, stock=cmd.stock
            )
        ]

    def change_price(self, cmd: ChangePrice) -> list[Event]:
        self._require()
        if cmd.price == self.price:
            return []
        return [
            PriceChanged(product_id=self.product_id, price=cmd.price, previous_price=self.price)
        ]

    def restock(self, cmd: Restock) -> list[Event]:
        self._require()
        return [
            Restocked(
                product_id=self.product_id, quantity=cmd.quantity, stock=self.stock + cmd.quantity
            )
        ]

    def reserve(self, order_id: str, quantity: int) -> list[Event]:
        """Reserve for one order; reserving again for the same order is a no-op."""
        self._require()
        if order_id in self.reservations:
            return []
        if quantity > self.stock:
            raise InsufficientStock(
                f"only {self.stock} of {self.product_id!r} available, {quantity} requested",
                product_id=self.product_id,
                available=self.stock,
                requested=quantity,
            )
        return [
            StockReserved(
                product_id=self.product_id,
                order_id=order_id,
                quantity=quantity,
                stock=self.stock - quantity,
            )
        ]

    def release(self, order_id: str) -> list[Event]:
        """Give a reservation back; releasing what was never reserved is a no-op."""
        self._require()
        quantity = self.reservations.get(order_id)
        if quantity is None:
            return []
        return [
            StockReleased(
                product_id=self.product_id,
                order_id=order_id,
                quantity=quantity,
                stock=self.stock + quantity,
            )
        ]
