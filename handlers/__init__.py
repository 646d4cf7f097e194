"""Command handlers: load an aggregate from the store, decide, append.

No NATS here: the broker decodes a message, looks its type up in the registry built by
:func:`command_handlers` and calls the handler with a
:class:`~handlers.executor.CommandExecutor`. Inventory is simulated here, with streams
of its own; payments and shipments go through the partners' ports
(:mod:`domain.partners`), which the broker connects to the partner services.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from domain.inventory import ReleaseInventory, ReserveInventory
from domain.messages import Command
from domain.metadata import MessageContext
from domain.order import CancelOrder, ConfirmOrder, PlaceOrder
from domain.partners import PaymentGateway, ShippingCarrier
from domain.payment import ProcessPayment, RefundPayment
from domain.product import ChangePrice, CreateProduct, Restock
from domain.shipment import ArrangeShipment, CancelShipment
from handlers import inventory as inventory_handlers
from handlers import order as order_handlers
from handlers import payment as payment_handlers
from handlers import product as product_handlers
from handlers import shipment as shipment_handlers
from handlers.executor import CommandExecutor, ConcurrencyConflict, Outcome

Handler = Callable[[CommandExecutor, Any, MessageContext], Awaitable[Outcome]]
Registry = dict[str, tuple[type[Command], Handler]]

#: Every command type and the model of its body (the contract; handlers need partners).
COMMAND_MODELS: dict[str, type[Command]] = {
    model.TYPE: model
    for model in (
        CreateProduct,
        ChangePrice,
        Restock,
        PlaceOrder,
        ConfirmOrder,
        CancelOrder,
        ReserveInventory,
        ReleaseInventory,
        ProcessPayment,
        RefundPayment,
        ArrangeShipment,
        CancelShipment,
    )
}


def command_handlers(gateway: PaymentGateway, carrier: ShippingCarrier) -> Registry:
    """Every command type with its body model and handler."""
    handlers: dict[str, Handler] = {
        CreateProduct.TYPE: product_handlers.create,
        ChangePrice.TYPE: product_handlers.change_price,
        Restock.TYPE: product_handlers.restock,
        PlaceOrder.TYPE: order_handlers.place,
        ConfirmOrder.TYPE: order_handlers.confirm,
        CancelOrder.TYPE: order_handlers.cancel,
        ReserveInventory.TYPE: inventory_handlers.reserve,
        ReleaseInventory.TYPE: inventory_handlers.release,
        ProcessPayment.TYPE: functools.partial(payment_handlers.process, gateway),
        RefundPayment.TYPE: functools.partial(payment_handlers.refund, gateway),
        ArrangeShipment.TYPE: functools.partial(shipment_handlers.arrange, carrier),
        CancelShipment.TYPE: functools.partial(shipment_handlers.cancel, carrier),
    }
    return {type_: (COMMAND_MODELS[type_], handler) for type_, handler in handlers.items()}


__all__ = [
    "COMMAND_MODELS",
    "CommandExecutor",
    "ConcurrencyConflict",
    "Handler",
    "Outcome",
    "command_handlers",
]
