"""Command handlers: load an aggregate from the store, decide, append.

No NATS here: the broker decodes a message, looks its type up in the registry built by
:func:`command_handlers` and calls the handler with a
:class:`~handlers.executor.CommandExecutor`. Inventory, payment and shipping are
simulated services (:mod:`handlers.simulation`) with streams of their own.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from domain.inventory import ReleaseInventory, ReserveInventory
from domain.messages import Command
from domain.metadata import MessageContext
from domain.order import CancelOrder, ConfirmOrder, PlaceOrder
from domain.payment import ProcessPayment, RefundPayment
from domain.product import ChangePrice, CreateProduct, Restock
from domain.shipment import ArrangeShipment, CancelShipment
from handlers import inventory as inventory_handlers
from handlers import order as order_handlers
from handlers import payment as payment_handlers
from handlers import product as product_handlers
from handlers import shipment as shipment_handlers
from handlers.executor import CommandExecutor, ConcurrencyConflict, Outcome
from handlers.simulation import PaymentProvider

Handler = Callable[[CommandExecutor, Any, MessageContext], Awaitable[Outcome]]
Registry = dict[str, tuple[type[Command], Handler]]


def command_handlers(provider: PaymentProvider | None = None) -> Registry:
    """Every command type with its body model and handler."""
    payments = provider or PaymentProvider()
    return {
        CreateProduct.TYPE: (CreateProduct, product_handlers.create),
        ChangePrice.TYPE: (ChangePrice, product_handlers.change_price),
        Restock.TYPE: (Restock, product_handlers.restock),
        PlaceOrder.TYPE: (PlaceOrder, order_handlers.place),
        ConfirmOrder.TYPE: (ConfirmOrder, order_handlers.confirm),
        CancelOrder.TYPE: (CancelOrder, order_handlers.cancel),
        ReserveInventory.TYPE: (ReserveInventory, inventory_handlers.reserve),
        ReleaseInventory.TYPE: (ReleaseInventory, inventory_handlers.release),
        ProcessPayment.TYPE: (
            ProcessPayment,
            functools.partial(payment_handlers.process, payments),
        ),
        RefundPayment.TYPE: (RefundPayment, payment_handlers.refund),
        ArrangeShipment.TYPE: (ArrangeShipment, shipment_handlers.arrange),
        CancelShipment.TYPE: (CancelShipment, shipment_handlers.cancel),
    }


COMMAND_HANDLERS: Registry = command_handlers()

__all__ = [
    "COMMAND_HANDLERS",
    "CommandExecutor",
    "ConcurrencyConflict",
    "Handler",
    "Outcome",
    "PaymentProvider",
    "command_handlers",
]
