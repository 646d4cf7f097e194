"""The command and query services: the registries of handlers bound to their subjects."""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import Any

from nats.aio.client import Client as NATS

from broker import replies
from broker.projector import Database
from broker.service import DEFAULT_MAX_PAYLOAD, RequestService, Route
from broker.subjects import ALL_COMMANDS, ALL_QUERIES, COMMAND_QUEUE, QUERY_QUEUE
from domain.messages import Command, Query
from domain.metadata import MessageContext
from domain.partners import PaymentGateway, ShippingCarrier
from handlers import CommandExecutor, Handler, Outcome, command_handlers
from projections.queries import QUERY_HANDLERS, QueryHandler
from telemetry.metrics import COMMAND_METRICS, QUERY_METRICS


def _outcome_data(outcome: Outcome) -> dict[str, Any]:
    return outcome.data


def _with_digest(
    handler: Handler, executor: CommandExecutor, command: Command, ctx: MessageContext
) -> Awaitable[Outcome]:
    """Call the handler with the body's digest in the context: the store records it with
    the command id (global idempotency). A function, not a coroutine: one frame fewer on
    the command path."""
    return handler(executor, command, ctx.with_digest(command.digest()))


async def _run_query(
    db: Database, handler: QueryHandler, query: Query, _ctx: MessageContext
) -> dict[str, Any]:
    return await db.run(lambda conn: handler(conn, query))


def command_service(
    nc: NATS,
    executor: CommandExecutor,
    *,
    gateway: PaymentGateway,
    carrier: ShippingCarrier,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> RequestService:
    routes = {
        type_: Route(model, functools.partial(_with_digest, handler, executor), data=_outcome_data)
        for type_, (model, handler) in command_handlers(gateway, carrier).items()
    }
    return RequestService(
        nc,
        name="command",
        pattern=ALL_COMMANDS,
        queue=COMMAND_QUEUE,
        routes=routes,
        unknown_code=replies.UNKNOWN_COMMAND,
        metrics=COMMAND_METRICS,
        max_payload=max_payload,
    )


def query_service(
    nc: NATS, db: Database, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> RequestService:
    routes = {
        type_: Route(model, functools.partial(_run_query, db, handler))
        for type_, (model, handler) in QUERY_HANDLERS.items()
    }
    return RequestService(
        nc,
        name="query",
        pattern=ALL_QUERIES,
        queue=QUERY_QUEUE,
        routes=routes,
        unknown_code=replies.UNKNOWN_QUERY,
        metrics=QUERY_METRICS,
        max_payload=max_payload,
    )
