"""The ASGI application: GraphQL at ``/graphql`` (HTTP and graphql-transport-ws, GraphiQL
in a browser), the monitor's page at ``/`` and its files under ``/static``."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from ordermesh.api.instrumentation import WebSocketMetrics
from ordermesh.api.schema import MAX_SUBSCRIPTIONS, Context, schema

WEB = Path(__file__).parent / "web"
_JAEGER_META = re.compile(r'(<meta name="ordermesh-jaeger-url" content=")[^"]*(")')


class MonitorGraphQL(GraphQL[dict[str, Any], None]):
    """Strawberry's ASGI GraphQL, with the process's :class:`Context` in every request's
    context (``info.context["monitor"]``)."""

    def __init__(self, monitor: Context) -> None:
        super().__init__(
            schema,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            max_subscriptions_per_connection=MAX_SUBSCRIPTIONS,
        )
        self.monitor = monitor

    async def get_context(self, request: Any, response: Any) -> dict[str, Any]:
        return {"request": request, "response": response, "monitor": self.monitor}


def page(jaeger_url: str | None) -> str:
    """``index.html`` with the Jaeger URL the page links traces to (none when unset)."""
    text = (WEB / "index.html").read_text(encoding="utf-8")
    return _JAEGER_META.sub(
        lambda m: m.group(1) + html.escape(jaeger_url or "", quote=True) + m.group(2), text
    )


def build_app(monitor: Context, *, jaeger_url: str | None = None) -> WebSocketMetrics:
    graphql = MonitorGraphQL(monitor)
    jaeger = jaeger_url if jaeger_url is not None else os.environ.get("ORDERMESH_JAEGER_URL")
    index = page(jaeger)

    async def home(_request: Request) -> HTMLResponse:
        return HTMLResponse(index)

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Mount("/static", StaticFiles(directory=WEB), name="static"),
        ]
    )
    return WebSocketMetrics(app)
