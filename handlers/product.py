"""Command handlers of the product aggregate."""

from __future__ import annotations

from typing import Any

from domain import product as p
from domain.metadata import MessageContext
from domain.money import format_money
from handlers.executor import CommandExecutor, Outcome


def product_view(state: p.Product) -> dict[str, Any]:
    return {
        "product_id": state.product_id,
        "name": state.name,
        "price": format_money(state.price),
        "stock": state.stock,
    }


async def create(ex: CommandExecutor, cmd: p.CreateProduct, ctx: MessageContext) -> Outcome:
    return await ex.execute(
        p.stream_name(cmd.product_id),
        lambda: p.Product(cmd.product_id),
        lambda s: s.create(cmd),
        product_view,
        ctx,
    )


async def change_price(ex: CommandExecutor, cmd: p.ChangePrice, ctx: MessageContext) -> Outcome:
    return await ex.execute(
        p.stream_name(cmd.product_id),
        lambda: p.Product(cmd.product_id),
        lambda s: s.change_price(cmd),
        product_view,
        ctx,
    )


async def restock(ex: CommandExecutor, cmd: p.Restock, ctx: MessageContext) -> Outcome:
    return await ex.execute(
        p.stream_name(cmd.product_id),
        lambda: p.Product(cmd.product_id),
        lambda s: s.restock(cmd),
        product_view,
        ctx,
    )
