"""The simulated inventory service: reserve and release an order's stock.

Stock is held on the product streams (one ``product.stock_reserved`` per line); the
order's ``inventory-<order_id>`` stream records the outcome. A reservation that cannot
be completed gives back what it took before it answers, so a refused reservation
holds nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import weakref
from collections.abc import Callable
from typing import Any

from domain import inventory as inv
from domain import product as p
from domain.errors import CodedError, InsufficientStock
from domain.messages import Event
from domain.metadata import MessageContext
from handlers.executor import CommandExecutor, Outcome

# Reserve and release of one order queue up in this process, so a release never runs
# between a reservation's product holds and its record.
_order_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(order_id: str) -> asyncio.Lock:
    lock = _order_locks.get(order_id)
    if lock is None:
        lock = _order_locks[order_id] = asyncio.Lock()
    return lock


def inventory_view(state: inv.Inventory) -> dict[str, Any]:
    return {
        "order_id": state.order_id,
        "status": state.status,
        "items": [line.model_dump() for line in state.items],
    }


def _sub(ctx: MessageContext, action: str, product_id: str) -> MessageContext:
    """A distinct id per product hold, so holding and giving back in one command are two
    commands to the product stream's idempotency record."""
    return dataclasses.replace(ctx, id=f"{ctx.id}:{action}:{product_id}")


async def _hold(
    ex: CommandExecutor, order_id: str, line: inv.StockLine, ctx: MessageContext
) -> None:
    await ex.execute(
        p.stream_name(line.product_id),
        functools.partial(p.Product, line.product_id),
        lambda s: s.reserve(order_id, line.quantity),
        lambda s: {},
        _sub(ctx, "reserve", line.product_id),
    )


async def _give_back(
    ex: CommandExecutor, order_id: str, product_ids: list[str], ctx: MessageContext
) -> list[inv.StockLine]:
    released: list[inv.StockLine] = []
    for pid in sorted(set(product_ids)):
        outcome = await ex.execute(
            p.stream_name(pid),
            functools.partial(p.Product, pid),
            lambda s: s.release(order_id),
            lambda s: {},
            _sub(ctx, "release", pid),
        )
        released += [
            inv.StockLine(product_id=e.product_id, quantity=e.quantity)
            for e in outcome.events
            if isinstance(e, p.StockReleased)
        ]
    return released


async def _record(
    ex: CommandExecutor,
    order_id: str,
    decide: Callable[[inv.Inventory], list[Event]],
    ctx: MessageContext,
) -> Outcome:
    return await ex.execute(
        inv.stream_name(order_id),
        functools.partial(inv.Inventory, order_id),
        decide,
        inventory_view,
        ctx,
    )


async def reserve(ex: CommandExecutor, cmd: inv.ReserveInventory, ctx: MessageContext) -> Outcome:
    lines = inv.merge_lines(cmd.items)
    async with _lock(cmd.order_id):
        state = await ex.load(
            inv.stream_name(cmd.order_id), functools.partial(inv.Inventory, cmd.order_id)
        )
        if state.status == "reserved":
            return Outcome(inventory_view(state), [], duplicate=True)
        state.check_reservable()
        held: list[str] = []
        try:
            for line in lines:
                await _hold(ex, cmd.order_id, line, ctx)
                held.append(line.product_id)
        except InsufficientStock as exc:
            failure = exc
            await _give_back(ex, cmd.order_id, held, ctx)
            await _record(ex, cmd.order_id, lambda s: s.failed(failure), ctx)
            raise
        except BaseException:
            await _give_back(ex, cmd.order_id, held, ctx)
            raise
        try:
            outcome = await _record(ex, cmd.order_id, lambda s: s.reserved(lines), ctx)
        except CodedError:
            # Released meanwhile (by another replica): the holds must not outlive it.
            await _give_back(ex, cmd.order_id, held, ctx)
            raise
        return outcome


async def release(ex: CommandExecutor, cmd: inv.ReleaseInventory, ctx: MessageContext) -> Outcome:
    async with _lock(cmd.order_id):
        state = await ex.load(
            inv.stream_name(cmd.order_id), functools.partial(inv.Inventory, cmd.order_id)
        )
        if state.status == "released":
            return Outcome(inventory_view(state), [], duplicate=True)
        product_ids = [line.product_id for line in (*cmd.items, *state.items)]
        released = await _give_back(ex, cmd.order_id, product_ids, ctx)
        return await _record(ex, cmd.order_id, lambda s: s.release(released), ctx)
