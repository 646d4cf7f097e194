"""Command handlers: load an aggregate from the store, decide, append.

No NATS here: the broker decodes a message, looks its type up in :data:`COMMAND_HANDLERS`
and calls the handler with a :class:`~handlers.executor.CommandExecutor`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from domain.messages import Command
from domain.metadata import MessageContext
from domain.order import CancelOrder, PlaceOrder
from domain.product import ChangePrice, CreateProduct, Restock
from handlers import order as order_handlers
from handlers import product as product_handlers
from handlers.executor import CommandExecutor, ConcurrencyConflict, Outcome

Handler = Callable[[CommandExecutor, Any, MessageContext], Awaitable[Outcome]]

COMMAND_HANDLERS: dict[str, tuple[type[Command], Handler]] = {
    CreateProduct.TYPE: (CreateProduct, product_handlers.create),
    ChangePrice.TYPE: (ChangePrice, product_handlers.change_price),
    Restock.TYPE: (Restock, product_handlers.restock),
    PlaceOrder.TYPE: (PlaceOrder, order_handlers.place),
    CancelOrder.TYPE: (CancelOrder, order_handlers.cancel),
}

__all__ = ["COMMAND_HANDLERS", "CommandExecutor", "ConcurrencyConflict", "Handler", "Outcome"]
