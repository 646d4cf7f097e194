"""The GraphQL schema: the monitor's queries, the order system's mutations, and live
subscriptions. Field names are a contract (the monitoring guide's clients use
``pubsubStream(topic) { id topic payload timestamp source }``).

Resolvers stay thin: the message feed and statistics come from the broadcaster's
buffer, the service graph from the heartbeats, products, orders and sagas from the query
service over NATS (the API holds no read model of its own), and mutations are commands
over NATS. A refusal is a GraphQL error carrying the service's ``code``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from nats.aio.client import Client as NATS
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.scalars import JSON
from strawberry.types import Info

from ordermesh.api import requests
from ordermesh.api.dashboard import Dashboard, DashboardReading
from ordermesh.api.events import StoredEventReader
from ordermesh.api.instrumentation import GraphQLMetrics
from ordermesh.monitor import buffer as feed
from ordermesh.monitor import topology as flow
from ordermesh.monitor.buffer import TOPICS, MessageBuffer, MonitoredMessage
from ordermesh.monitor.topology import Topology

#: The most items one list argument may ask for.
MAX_LIMIT = 1000
#: Live subscriptions one WebSocket may hold at once.
MAX_SUBSCRIPTIONS = 20
MAX_DEPTH = 10
MAX_TOKENS = 2000
MAX_ALIASES = 20
#: The fastest ``dashboardStatsStream`` may tick.
MIN_INTERVAL_MS = 200


@dataclass
class Context:
    """What every resolver may use; one per process, shared by all requests."""

    nc: NATS
    buffer: MessageBuffer
    topology: Topology
    dashboard: Dashboard
    events: StoredEventReader


def _ctx(info: Info[Any, Any]) -> Context:
    context = info.context
    found = context["monitor"] if isinstance(context, dict) else context.monitor
    assert isinstance(found, Context)
    return found


def _dashboard(ctx: Context) -> DashboardStats:
    return DashboardStats.of(ctx.dashboard.reading(ctx.topology.totals()))


def refused(exc: requests.Refused) -> GraphQLError:
    return GraphQLError(exc.message, extensions={"code": exc.code, "details": exc.details})


def _topic(topic: str | None) -> str | None:
    if topic is not None and topic not in TOPICS:
        raise GraphQLError(
            f"unknown topic {topic!r}; one of {', '.join(TOPICS)}",
            extensions={"code": "validation_error", "details": {"topic": topic}},
        )
    return topic


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise GraphQLError(
            f"limit must be between 1 and {MAX_LIMIT}",
            extensions={"code": "validation_error", "details": {"limit": limit}},
        )
    return limit


# -- types -------------------------------------------------------------------------------

# The monitor's own records are the GraphQL types where their fields are the contract's
# (strawberry marks each class as a GraphQL type of that name, in place, and reads its
# fields as they are): no copy field by field, no second definition to keep in step.
strawberry.type(feed.TopicStats, name="TopicStats")
strawberry.type(feed.TypeStats, name="TypeStats")
strawberry.type(flow.Node, name="FlowNode")
strawberry.type(flow.Edge, name="FlowEdge")
strawberry.type(flow.ProjectionInfo, name="ProjectionStatus")


@strawberry.type
class PubsubMessage:
    id: str
    topic: str
    subject: str
    type: str | None
    source: str | None
    timestamp: datetime
    trace_id: str | None
    correlation_id: str | None
    aggregate_id: str | None
    payload: str
    truncated: bool
    headers: JSON
    latency_ms: float | None
    ok: bool | None

    @classmethod
    def of(cls, m: MonitoredMessage) -> PubsubMessage:
        return cls(
            id=m.id,
            topic=m.topic,
            subject=m.subject,
            type=m.type or None,
            source=m.source,
            timestamp=m.timestamp,
            trace_id=m.trace_id,
            correlation_id=m.correlation_id,
            aggregate_id=m.aggregate_id,
            payload=m.payload,
            truncated=m.truncated,
            headers=JSON(dict(m.headers)),
            latency_ms=m.latency_ms,
            ok=m.ok,
        )


@strawberry.type
class SagaStatusCount:
    status: str
    count: int


@strawberry.type
class DashboardStats:
    timestamp: datetime
    commands_executed: int
    queries_executed: int
    events_stored: int
    events_per_second: float
    command_errors: int
    error_ratio: float
    command_latency_mean_ms: float | None
    command_latency_p95_ms: float | None
    sagas_active: int
    sagas_by_status: list[SagaStatusCount]

    @classmethod
    def of(cls, r: DashboardReading) -> DashboardStats:
        return cls(
            timestamp=r.timestamp,
            commands_executed=r.commands_executed,
            queries_executed=r.queries_executed,
            events_stored=r.events_stored,
            events_per_second=r.events_per_second,
            command_errors=r.command_errors,
            error_ratio=r.error_ratio,
            command_latency_mean_ms=r.command_latency_mean_ms,
            command_latency_p95_ms=r.command_latency_p95_ms,
            sagas_active=r.sagas_active,
            sagas_by_status=[
                SagaStatusCount(status=s, count=c) for s, c in r.sagas_by_status.items()
            ],
        )


@strawberry.type
class CoroutineCount:
    name: str
    count: int


@strawberry.type
class Runtime:
    resident_memory_bytes: float
    cpu_seconds: float
    open_fds: int
    tasks: int
    event_loop_lag_seconds: float
    gc_collections: list[int]
    top_coroutines: list[CoroutineCount]


@strawberry.type
class ServiceInstance:
    instance: str
    service: str
    services: list[str]
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    healthy: bool
    runtime: Runtime


@strawberry.type
class SystemTopology:
    instances: list[ServiceInstance]
    nodes: list[flow.Node]
    edges: list[flow.Edge]


@strawberry.type
class Product:
    product_id: str
    name: str
    price: str
    stock: int


@strawberry.type
class OrderItem:
    product_id: str
    quantity: int
    unit_price: str
    line_total: str


@strawberry.type
class Order:
    order_id: str
    customer_id: str
    status: str
    total: str
    items: list[OrderItem]
    cancel_reason: str | None
    saga_status: str | None
    current_step: str | None


@strawberry.type
class SagaStep:
    step: str
    status: str
    attempts: int
    error: JSON | None  # {"code", "message"} of the last failure
    started_at: datetime | None
    finished_at: datetime | None
    deadline: datetime | None


@strawberry.type
class Saga:
    saga_id: str
    saga_type: str
    order_id: str
    status: str
    current_step: str | None
    error: JSON | None
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[SagaStep]
    compensations: JSON


@strawberry.type
class StoredEvent:
    id: str
    stream: str
    revision: int
    position: int
    type: str
    data: JSON
    recorded_at: datetime
    sequence: int


@strawberry.input
class OrderItemInput:
    product_id: str
    quantity: int


# -- read models over NATS ------------------------------------------------------------------


def _product(view: dict[str, Any]) -> Product:
    return Product(
        product_id=view["product_id"],
        name=view["name"],
        price=view["price"],
        stock=int(view["stock"]),
    )


def _order(view: dict[str, Any]) -> Order:
    return Order(
        order_id=view["order_id"],
        customer_id=view["customer_id"],
        status=view["status"],
        total=view["total"],
        items=[
            OrderItem(
                product_id=i["product_id"],
                quantity=int(i["quantity"]),
                unit_price=i["unit_price"],
                line_total=i["line_total"],
            )
            for i in view.get("items", [])
        ],
        cancel_reason=view.get("cancel_reason"),
        saga_status=view.get("saga_status"),
        current_step=view.get("current_step"),
    )


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _saga(view: dict[str, Any]) -> Saga:
    return Saga(
        saga_id=view["saga_id"],
        saga_type=view["saga_type"],
        order_id=view["order_id"],
        status=view["status"],
        current_step=view.get("current_step"),
        error=view.get("error"),
        started_at=_time(view.get("started_at")),
        finished_at=_time(view.get("finished_at")),
        steps=[
            SagaStep(
                step=s["step"],
                status=s["status"],
                attempts=int(s.get("attempts", 0)),
                error=s.get("error"),
                started_at=_time(s.get("started_at")),
                finished_at=_time(s.get("finished_at")),
                deadline=_time(s.get("deadline")),
            )
            for s in view.get("steps", [])
        ],
        compensations=view.get("compensations", []),
    )


async def _ask(info: Info[Any, Any], query_type: str, body: dict[str, Any]) -> Any:
    try:
        return await requests.query(_ctx(info).nc, query_type, body)
    except requests.Refused as exc:
        raise refused(exc) from None


async def _maybe(info: Info[Any, Any], query_type: str, body: dict[str, Any]) -> Any:
    """A ``*.get`` whose not-found refusal means null, as GraphQL clients expect."""
    try:
        return await requests.query(_ctx(info).nc, query_type, body)
    except requests.Refused as exc:
        if exc.code.endswith("not_found"):
            return None
        raise refused(exc) from None


def _items(page: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a ``*.list`` reply: ``{"items": [...], "total": …}``."""
    return list(page["items"])


# -- the schema ------------------------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field(description="The newest messages seen on NATS, oldest first")
    def pubsub_messages(
        self, info: Info[Any, Any], topic: str | None = None, limit: int = 100
    ) -> list[PubsubMessage]:
        messages = _ctx(info).buffer.messages(_topic(topic), _limit(limit))
        return [PubsubMessage.of(m) for m in messages]

    @strawberry.field(description="Per topic: messages seen, per minute, last seen, errors")
    def pubsub_stats(self, info: Info[Any, Any]) -> list[feed.TopicStats]:
        return _ctx(info).buffer.topic_stats()

    @strawberry.field(description="The same per message type")
    def pubsub_type_stats(
        self, info: Info[Any, Any], topic: str | None = None
    ) -> list[feed.TypeStats]:
        return _ctx(info).buffer.type_stats(_topic(topic))

    @strawberry.field(description="From the metrics registry /metrics exports")
    def dashboard_stats(self, info: Info[Any, Any]) -> DashboardStats:
        return _dashboard(_ctx(info))

    @strawberry.field(description="Services seen through their heartbeats, and the flow")
    def system_topology(self, info: Info[Any, Any]) -> SystemTopology:
        return topology_of(_ctx(info).topology)

    @strawberry.field(description="Each projection's position and lag, from the heartbeats")
    def projection_status(self, info: Info[Any, Any]) -> list[flow.ProjectionInfo]:
        return _ctx(info).topology.projections()

    @strawberry.field
    async def products(self, info: Info[Any, Any], limit: int = 100) -> list[Product]:
        page = await _ask(info, "product.list", {"limit": _limit(limit)})
        return [_product(v) for v in _items(page)]

    @strawberry.field
    async def product(self, info: Info[Any, Any], id: str) -> Product | None:
        view = await _maybe(info, "product.get", {"product_id": id})
        return _product(view) if view else None

    @strawberry.field
    async def orders(
        self, info: Info[Any, Any], limit: int = 50, status: str | None = None
    ) -> list[Order]:
        body: dict[str, Any] = {"limit": _limit(limit)}
        if status:
            body["status"] = status
        return [_order(v) for v in _items(await _ask(info, "order.list", body))]

    @strawberry.field
    async def order(self, info: Info[Any, Any], id: str) -> Order | None:
        view = await _maybe(info, "order.get", {"order_id": id})
        return _order(view) if view else None

    @strawberry.field
    async def sagas(
        self, info: Info[Any, Any], limit: int = 50, status: str | None = None
    ) -> list[Saga]:
        body: dict[str, Any] = {"limit": _limit(limit)}
        if status:
            body["status"] = status
        return [_saga(v) for v in _items(await _ask(info, "saga.list", body))]

    @strawberry.field
    async def saga(self, info: Info[Any, Any], id: str) -> Saga | None:
        view = await _maybe(info, "saga.get", {"saga_id": id})
        return _saga(view) if view else None

    @strawberry.field(description="Stored events, newest first, as EVENTS holds them")
    async def events(
        self,
        info: Info[Any, Any],
        limit: int = 50,
        type: str | None = None,
        aggregate_id: str | None = None,
    ) -> list[StoredEvent]:
        found = await _ctx(info).events.latest(_limit(limit), type, aggregate_id)
        return [
            StoredEvent(
                id=e.id,
                stream=e.stream,
                revision=e.revision,
                position=e.position,
                type=e.type,
                data=e.data,
                recorded_at=e.recorded_at,
                sequence=e.sequence,
            )
            for e in found
        ]


def topology_of(topology: Topology) -> SystemTopology:
    instances = [
        ServiceInstance(
            instance=i.instance,
            service=i.service,
            services=list(i.services),
            host=i.host,
            pid=i.pid,
            started_at=i.started_at,
            last_seen=i.last_seen,
            healthy=i.healthy,
            runtime=Runtime(
                resident_memory_bytes=i.runtime.resident_memory_bytes,
                cpu_seconds=i.runtime.cpu_seconds,
                open_fds=i.runtime.open_fds,
                tasks=i.runtime.tasks,
                event_loop_lag_seconds=i.runtime.event_loop_lag_seconds,
                gc_collections=list(i.runtime.gc_collections),
                top_coroutines=[
                    CoroutineCount(name=c.name, count=c.count) for c in i.runtime.top_coroutines
                ],
            ),
        )
        for i in topology.instances()
    ]
    nodes, edges = topology.graph()
    return SystemTopology(instances=instances, nodes=nodes, edges=edges)


async def _command(info: Info[Any, Any], command_type: str, body: dict[str, Any]) -> JSON:
    try:
        return JSON(await requests.command(_ctx(info).nc, command_type, body))
    except requests.Refused as exc:
        raise refused(exc) from None


@strawberry.type
class Mutation:
    @strawberry.mutation(description="commands.product.create; returns the reply's data")
    async def create_product(
        self, info: Info[Any, Any], product_id: str, name: str, price: str, stock: int = 0
    ) -> JSON:
        body = {"product_id": product_id, "name": name, "price": price, "stock": stock}
        return await _command(info, "product.create", body)

    @strawberry.mutation(description="commands.order.place; the order's saga runs after it")
    async def place_order(
        self,
        info: Info[Any, Any],
        customer_id: str,
        items: list[OrderItemInput],
        order_id: str | None = None,
        payment_method: str | None = None,
        shipping_country: str | None = None,
    ) -> JSON:
        body: dict[str, Any] = {
            "customer_id": customer_id,
            "items": [{"product_id": i.product_id, "quantity": i.quantity} for i in items],
        }
        if order_id is not None:
            body["order_id"] = order_id
        if payment_method is not None:
            body["payment_method"] = payment_method
        if shipping_country is not None:
            body["shipping_address"] = {"country": shipping_country}
        return await _command(info, "order.place", body)

    @strawberry.mutation(description="commands.order.cancel")
    async def cancel_order(self, info: Info[Any, Any], order_id: str, reason: str) -> JSON:
        return await _command(info, "order.cancel", {"order_id": order_id, "reason": reason})


async def _stream(
    info: Info[Any, Any], topic: str | None, keep: Any = None
) -> AsyncGenerator[PubsubMessage, None]:
    subscription = _ctx(info).buffer.subscribe(_topic(topic))
    try:
        async for message in subscription:
            if keep is None or keep(message):
                yield PubsubMessage.of(message)
    finally:
        subscription.close()


def _type_matches(pattern: str | None, msg_type: str | None) -> bool:
    """``order.*`` matches ``order.placed``; no pattern matches everything."""
    if not pattern:
        return True
    if pattern.endswith("*"):
        return (msg_type or "").startswith(pattern[:-1])
    return msg_type == pattern


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Every message on a topic (all topics without one)")
    async def pubsub_stream(
        self, info: Info[Any, Any], topic: str | None = None
    ) -> AsyncGenerator[PubsubMessage, None]:
        async for message in _stream(info, topic):
            yield message

    @strawberry.subscription(description="Events, of one type (``order.placed``, ``order.*``)")
    async def event_stream(
        self, info: Info[Any, Any], type: str | None = None
    ) -> AsyncGenerator[PubsubMessage, None]:
        async for message in _stream(info, "events", lambda m: _type_matches(type, m.type)):
            yield message

    @strawberry.subscription(description="A saga's transitions (every saga's without an id)")
    async def saga_updates(
        self, info: Info[Any, Any], saga_id: str | None = None
    ) -> AsyncGenerator[PubsubMessage, None]:
        def keep(m: MonitoredMessage) -> bool:
            return saga_id is None or m.aggregate_id == saga_id

        async for message in _stream(info, "sagas", keep):
            yield message

    @strawberry.subscription(description="dashboardStats every intervalMs (at least 200)")
    async def dashboard_stats_stream(
        self, info: Info[Any, Any], interval_ms: int = 1000
    ) -> AsyncGenerator[DashboardStats, None]:
        interval = max(interval_ms, MIN_INTERVAL_MS) / 1000
        dashboard, topology = _ctx(info).dashboard, _ctx(info).topology
        while True:
            yield DashboardStats.of(dashboard.reading(topology.totals()))
            await asyncio.sleep(interval)  # a clock tick, not a wait for a condition


schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    # Factories: a fresh extension (and its limit) per operation.
    extensions=[
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        GraphQLMetrics,
    ],
)
