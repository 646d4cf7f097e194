"""Metrics of the API itself: GraphQL operations (a schema extension) and WebSocket
connections and messages (an ASGI middleware around the whole app)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from telemetry import tracing
from telemetry.metrics import (
    count,
    graphql_duration,
    graphql_errors,
    graphql_requests,
    observe,
    websocket_connection_duration,
    websocket_connections,
    websocket_connections_total,
    websocket_messages,
)

#: graphql-transport-ws message types; anything else is counted as ``other``.
PROTOCOL_MESSAGES = frozenset(
    {
        "connection_init",
        "connection_ack",
        "ping",
        "pong",
        "subscribe",
        "next",
        "error",
        "complete",
    }
)


class GraphQLMetrics(SchemaExtension):
    """``ordermesh_graphql_requests_total`` and ``…_errors_total`` by operation type for
    every operation over HTTP or WebSocket; each execution is a span (so a mutation's
    command joins its trace) and is timed in ``…_duration_seconds`` inside it (so the
    observation's exemplar names that trace)."""

    def _operation(self) -> str:
        try:
            return self.execution_context.operation_type.value
        except Exception:  # the document did not parse: no operation to name
            return "unknown"

    def on_operation(self) -> Iterator[None]:
        yield
        operation = self._operation()
        count(graphql_requests, operation)
        context = self.execution_context
        result = context.result
        if context.pre_execution_errors or (result is not None and result.errors):
            count(graphql_errors, operation)

    def on_execute(self) -> Iterator[None]:
        operation = self._operation()
        started = time.perf_counter()
        attributes = (
            {
                "graphql.operation.type": operation,
                "graphql.operation.name": self.execution_context.operation_name or "",
            }
            if tracing.enabled()
            else None
        )
        with tracing.span(f"graphql {operation}", kind=SpanKind.SERVER, attributes=attributes):
            yield
            observe(graphql_duration, time.perf_counter() - started, operation)


def _message_type(text: str | None) -> str:
    if not text:
        return "other"
    try:
        kind = json.loads(text).get("type")
    except (ValueError, AttributeError):
        return "other"
    return kind if kind in PROTOCOL_MESSAGES else "other"


class WebSocketMetrics:
    """Counts WebSocket connections (open now, accepted or rejected, how long) and the
    protocol's messages each way. HTTP requests pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        opened: float | None = None

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                count(websocket_messages, "in", _message_type(message.get("text")))
            return message

        async def sending(message: Message) -> None:
            nonlocal opened
            kind = message["type"]
            if kind == "websocket.accept":
                opened = time.monotonic()
                websocket_connections.inc()
                count(websocket_connections_total, "accepted")
            elif kind == "websocket.close" and opened is None:
                count(websocket_connections_total, "rejected")
            elif kind == "websocket.send":
                count(websocket_messages, "out", _message_type(message.get("text")))
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        finally:
            if opened is not None:
                websocket_connections.dec()
                observe(websocket_connection_duration, time.monotonic() - opened)
