"""The pure domain: money, products and orders, with no I/O."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from domain.errors import (
    InsufficientStock,
    InvalidState,
    OrderAlreadyExists,
    OrderNotFound,
    ProductAlreadyExists,
    ProductNotFound,
)
from domain.money import format_money, to_money
from domain.order import CancelOrder, Order, OrderLine, PlaceOrder
from domain.product import ChangePrice, CreateProduct, Product, Restock


@pytest.mark.parametrize(
    ("raw", "expected"), [("12.5", "12.50"), ("0", "0.00"), (3, "3.00"), ("  7.25 ", "7.25")]
)
def test_money_parses_exactly(raw: object, expected: str) -> None:
    assert to_money(raw) == Decimal(expected)
    assert str(to_money(raw)) == expected


@pytest.mark.parametrize("raw", [12.5, "1.005", "-1", "NaN", "abc", True, None, "1e12"])
def test_money_refuses_inexact_or_invalid(raw: object) -> None:
    with pytest.raises(ValueError):
        to_money(raw)


def test_money_serialises_as_string() -> None:
    cmd = CreateProduct(product_id="p", name="n", price="0.10", stock=1)  # type: ignore[arg-type]
    assert cmd.model_dump(mode="json")["price"] == "0.10"
    assert '"price":"0.10"' in cmd.model_dump_json()


def created(stock: int = 10, price: str = "2.50") -> Product:
    product = Product("p-1")
    for event in product.create(
        CreateProduct(product_id="p-1", name="Widget", price=price, stock=stock)  # type: ignore[arg-type]
    ):
        product.apply(event)
    return product


def test_product_lifecycle() -> None:
    product = created()
    assert (product.name, product.price, product.stock) == ("Widget", Decimal("2.50"), 10)
    with pytest.raises(ProductAlreadyExists):
        product.create(CreateProduct(product_id="p-1", name="x", price="1", stock=0))  # type: ignore[arg-type]
    [changed] = product.change_price(ChangePrice(product_id="p-1", price="3.00"))  # type: ignore[arg-type]
    product.apply(changed)
    assert product.price == Decimal("3.00")
    assert product.change_price(ChangePrice(product_id="p-1", price="3.00")) == []  # type: ignore[arg-type]
    [restocked] = product.restock(Restock(product_id="p-1", quantity=5))
    product.apply(restocked)
    assert product.stock == 15


def test_unknown_product_refuses_changes() -> None:
    with pytest.raises(ProductNotFound) as info:
        Product("ghost").restock(Restock(product_id="ghost", quantity=1))
    assert info.value.code == "product_not_found"
    assert info.value.details == {"product_id": "ghost"}


def test_an_order_names_every_unknown_product_in_order() -> None:
    known = created()  # p-1
    cmd = PlaceOrder(
        order_id="o-1",
        customer_id="c",
        items=[
            OrderLine(product_id="p-3", quantity=1),
            OrderLine(product_id="p-1", quantity=1),
            OrderLine(product_id="p-2", quantity=1),
        ],
    )
    # p-2 has a stream entry that was never created; p-3 is not in the catalogue at all.
    catalogue = {"p-1": known, "p-2": Product("p-2")}
    with pytest.raises(ProductNotFound) as info:
        Order("o-1").place(cmd, catalogue)
    assert info.value.details == {"product_ids": ["p-2", "p-3"]}
    assert Order("o-1").place(cmd.model_copy(update={"items": cmd.items[1:2]}), catalogue)


def test_reservation_and_release() -> None:
    product = created(stock=3)
    with pytest.raises(InsufficientStock) as info:
        product.reserve("o-1", 4)
    assert info.value.details["available"] == 3
    for event in product.reserve("o-1", 2):
        product.apply(event)
    assert product.stock == 1
    assert product.reserve("o-1", 2) == []  # the same order twice reserves once
    for event in product.release("o-1"):
        product.apply(event)
    assert product.stock == 3
    assert product.release("o-1") == []  # releasing twice gives back once


@pytest.mark.parametrize("quantity", [0, -1, "2", 2.0, 10**7])
def test_order_line_quantity_is_a_positive_integer(quantity: object) -> None:
    with pytest.raises(ValidationError):
        OrderLine.model_validate({"product_id": "p-1", "quantity": quantity})


def test_order_is_priced_from_the_catalogue() -> None:
    catalogue = {"p-1": created(price="2.50"), "p-2": created(price="0.10")}
    catalogue["p-2"].product_id = "p-2"
    cmd = PlaceOrder(
        order_id="o-1",
        customer_id="c-1",
        items=[OrderLine(product_id="p-1", quantity=3), OrderLine(product_id="p-2", quantity=3)],
    )
    order = Order("o-1")
    [placed] = order.place(cmd, catalogue)
    order.apply(placed)
    assert order.total == Decimal("7.80")
    assert [line.line_total for line in order.items] == [Decimal("7.50"), Decimal("0.30")]
    with pytest.raises(OrderAlreadyExists):
        order.place(cmd, catalogue)


def test_order_with_unknown_product_is_refused() -> None:
    cmd = PlaceOrder(customer_id="c", items=[OrderLine(product_id="nope", quantity=1)])
    with pytest.raises(ProductNotFound) as info:
        Order(cmd.order_id).place(cmd, {"nope": Product("nope")})
    assert info.value.details == {"product_ids": ["nope"]}


def test_order_id_is_generated_when_missing() -> None:
    a = PlaceOrder(customer_id="c", items=[OrderLine(product_id="p", quantity=1)])
    b = PlaceOrder(customer_id="c", items=[OrderLine(product_id="p", quantity=1)])
    assert a.order_id != b.order_id and a.order_id.startswith("o-")


def test_order_cancel_and_confirm_rules() -> None:
    with pytest.raises(OrderNotFound):
        Order("ghost").cancel("x")
    order = Order("o-1")
    order.apply(
        Order("o-1").place(
            PlaceOrder(
                order_id="o-1", customer_id="c", items=[OrderLine(product_id="p-1", quantity=1)]
            ),
            {"p-1": created()},
        )[0]
    )
    [confirmed] = order.confirm()
    order.apply(confirmed)
    assert order.confirm() == []
    with pytest.raises(InvalidState):
        order.cancel("too late")
    assert CancelOrder(order_id="o-1").reason == "cancelled by customer"


def test_a_placed_order_is_the_event_validation_would_have_built() -> None:
    """Placing builds its event without validating again: it must equal, field for field
    and on the wire, the event read back from its own JSON."""
    from domain import order as o
    from domain import product as p

    widget = p.Product("p-1")
    widget.apply(
        p.ProductCreated(product_id="p-1", name="W", price=Decimal("12.50"), stock=5)  # type: ignore[arg-type]
    )
    cmd = o.PlaceOrder.model_validate_json(
        b'{"order_id":"o-1","customer_id":"c","items":[{"product_id":"p-1","quantity":3}],'
        b'"shipping_address":{"name":"A","street":"B","city":"C","postal_code":"1","country":"NL"}}'
    )
    (placed,) = o.Order("o-1").place(cmd, {"p-1": widget})
    again = o.OrderPlaced.model_validate_json(placed.model_dump_json())
    assert again == placed
    assert again.model_dump_json() == placed.model_dump_json()
    assert placed.model_dump(mode="json")["total"] == "37.50"
    assert placed.model_fields_set == again.model_fields_set


def test_trusted_builds_what_model_construct_builds_and_falls_back_to_it() -> None:
    from domain import order as o

    values = {
        "product_id": "p-1",
        "quantity": 2,
        "unit_price": Decimal("1.25"),
        "line_total": Decimal("2.50"),
    }
    trusted, constructed = o.PricedLine.trusted(**values), o.PricedLine.model_construct(**values)
    assert trusted == constructed and list(trusted.__dict__) == list(o.PricedLine.model_fields)
    assert trusted.model_dump_json() == constructed.model_dump_json()
    # A field left out takes its default, as model_construct gives it.
    partial = o.OrderPlaced.trusted(order_id="o-1", customer_id="c", items=[], total=Decimal(0))
    assert (partial.payment_method, partial.shipping_address) == ("card", None)
    assert partial.model_fields_set == {"order_id", "customer_id", "items", "total"}


@pytest.mark.parametrize(
    "raw", ["12.50", "12.5", "5", "0.00", "0", "100", "1E+2", "1.00E+2", "0E-8", "12.345", "9.99"]
)
def test_money_is_written_with_two_places_whatever_its_exponent(raw: str) -> None:
    assert format_money(Decimal(raw)) == str(Decimal(raw).quantize(Decimal("0.01")))
