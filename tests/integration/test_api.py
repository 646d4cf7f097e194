"""The monitor's API over a real nats-server and every service: GraphQL over HTTP and
over graphql-transport-ws, fed by what really flows through NATS."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest
import websockets
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from ordermesh.app import App
from tests.conftest import eventually
from tests.integration.test_saga import create_product, place, settled

PROTOCOL = "graphql-transport-ws"


@pytest.fixture
def api_app(saga_app: App) -> App:
    """Every service, the monitor's API included (on a free port), with short sagas."""
    assert saga_app.api is not None
    return saga_app


def url(app: App, path: str = "/graphql", scheme: str = "http") -> str:
    assert app.api is not None
    return f"{scheme}://127.0.0.1:{app.api.port}{path}"


async def gql(app: App, query: str, **variables: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url(app), json={"query": query, "variables": variables})
    body: dict[str, Any] = response.json()
    return body


def data(body: dict[str, Any]) -> Any:
    assert not body.get("errors"), body
    return body["data"]


class Subscriber:
    """A graphql-transport-ws client: one socket, subscriptions by id."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, app: App) -> Subscriber:
        socket = await websockets.connect(url(app, scheme="ws"), subprotocols=[PROTOCOL])
        await socket.send(json.dumps({"type": "connection_init"}))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        return cls(socket)

    async def subscribe(self, query: str, **variables: Any) -> str:
        sid = str(next(self._ids))
        payload = {"query": query, "variables": variables}
        await self.socket.send(json.dumps({"id": sid, "type": "subscribe", "payload": payload}))
        return sid

    async def next(self) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await self.socket.recv())
            if message["type"] == "ping":
                await self.socket.send(json.dumps({"type": "pong"}))
                continue
            return message


async def test_a_subscription_sees_an_order_placed_over_plain_nats(api_app: App, nc: NATS) -> None:
    """The guide's own selection; the event arrives within 2 s of the order."""
    await create_product(nc, "p-1", 10)
    subscriber = await Subscriber.connect(api_app)
    try:
        sid = await subscriber.subscribe(
            'subscription { pubsubStream(topic: "events") { id topic payload timestamp source } }'
        )
        # The subscription is live once the server holds it; the buffer's subscriber
        # count says so (no sleep: a condition).
        monitor = api_app.monitor
        assert monitor is not None

        async def subscribed() -> bool:
            return monitor.buffer.subscribers > 0

        await eventually(subscribed)
        await place(nc, "o-1", [("p-1", 1)])
        async with asyncio.timeout(2):
            while True:
                message = await subscriber.next()
                assert message["id"] == sid and message["type"] == "next", message
                event = message["payload"]["data"]["pubsubStream"]
                if json.loads(event["payload"]).get("order_id") == "o-1":
                    break
        assert event["topic"] == "events"
        assert event["source"] and event["id"] and event["timestamp"]
        # An unknown topic is refused on its own subscription; the first one goes on.
        bogus = await subscriber.subscribe('subscription { pubsubStream(topic: "x") { id } }')
        async with asyncio.timeout(5):
            refusal = await subscriber.next()
            while refusal["id"] == sid:  # the saga's events keep coming meanwhile
                refusal = await subscriber.next()
        assert refusal["id"] == bogus and refusal["type"] in ("error", "next"), refusal
        assert "unknown topic" in json.dumps(refusal["payload"])
    finally:
        await subscriber.socket.close()

    messages = data(
        await gql(api_app, '{ pubsubMessages(topic: "events", limit: 1000) { type aggregateId } }')
    )["pubsubMessages"]
    assert {"type": "order.placed", "aggregateId": "o-1"} in messages


async def test_every_mutation_round_trips_and_refusals_carry_the_code(
    api_app: App, nc: NATS
) -> None:
    created = data(
        await gql(
            api_app,
            'mutation { createProduct(productId: "p-9", name: "Nine", price: "9.90", stock: 5) }',
        )
    )["createProduct"]
    assert created["product_id"] == "p-9" and created["stock"] == 5

    again = await gql(
        api_app,
        'mutation { createProduct(productId: "p-9", name: "Nine", price: "9.90", stock: 5) }',
    )
    assert again["errors"][0]["extensions"]["code"] == "product_already_exists"

    placed = data(
        await gql(
            api_app,
            "mutation($items: [OrderItemInput!]!) {"
            ' placeOrder(orderId: "o-9", customerId: "c-1", items: $items) }',
            items=[{"productId": "p-9", "quantity": 2}],
        )
    )["placeOrder"]
    assert placed["order_id"] == "o-9" and placed["total"] == "19.80"

    bad = await gql(
        api_app,
        'mutation { placeOrder(customerId: "c-1", items: [{productId: "p-9", quantity: -1}]) }',
    )
    error = bad["errors"][0]
    assert error["extensions"]["code"] == "validation_error"
    assert error["extensions"]["details"][0]["loc"] == ["items", 0, "quantity"]

    await settled(nc, "o-9")
    cancelled = await gql(api_app, 'mutation { cancelOrder(orderId: "o-9", reason: "late") }')
    assert cancelled["errors"][0]["extensions"]["code"] == "invalid_state"  # confirmed

    order = data(await gql(api_app, '{ order(id: "o-9") { status total items { quantity } } }'))
    assert order["order"] == {"status": "confirmed", "total": "19.80", "items": [{"quantity": 2}]}
    assert data(await gql(api_app, '{ order(id: "o-none") { status } }'))["order"] is None
    saga = data(
        await gql(
            api_app,
            '{ saga(id: "o-9") { status orderId startedAt finishedAt'
            " steps { step status startedAt finishedAt } } }",
        )
    )["saga"]
    assert saga["status"] == "completed" and saga["orderId"] == "o-9"
    assert saga["startedAt"] <= saga["finishedAt"]
    assert [s["step"] for s in saga["steps"]] == [
        "reserve_inventory",
        "process_payment",
        "arrange_shipping",
        "confirm_order",
    ]
    assert all(s["startedAt"] <= s["finishedAt"] for s in saga["steps"])
    products = data(await gql(api_app, "{ products { productId stock } }"))["products"]
    assert {"productId": "p-9", "stock": 3} in products


async def test_the_dashboard_topology_and_event_browser_show_real_traffic(
    api_app: App, nc: NATS
) -> None:
    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 1)])
    await place(nc, "o-2", [("p-1", 1)], payment_method="declined-card")
    await settled(nc, "o-1")
    await settled(nc, "o-2")

    dispatched = sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "ordermesh_command_dispatched"
        for s in m.samples
        if s.name.endswith("_total")
    )

    async def counted() -> dict[str, Any]:
        """The totals, once a heartbeat has carried them to the monitor (every 2 s)."""
        stats: dict[str, Any] = data(
            await gql(
                api_app,
                "{ dashboardStats { commandsExecuted eventsStored errorRatio"
                " commandLatencyP95Ms sagasByStatus { status count } } }",
            )
        )["dashboardStats"]
        return stats if stats["commandsExecuted"] == dispatched else {}

    stats = await eventually(counted)
    assert dispatched >= 9
    assert 0 < stats["errorRatio"] < 1 and stats["commandLatencyP95Ms"] > 0
    by_status = {s["status"]: s["count"] for s in stats["sagasByStatus"]}
    assert by_status["completed"] >= 1 and by_status["failed"] >= 1

    async def seen() -> dict[str, Any]:
        topology = data(
            await gql(
                api_app,
                "{ systemTopology { instances { service healthy runtime { tasks } }"
                " edges { source target count } } }",
            )
        )["systemTopology"]
        return topology if topology["instances"] else {}

    topology = await eventually(seen)
    assert topology["instances"][0]["healthy"] and topology["instances"][0]["runtime"]["tasks"] > 0
    edges = {(e["source"], e["target"]): e["count"] for e in topology["edges"]}
    assert edges[("client", "command")] >= 3

    stats = data(
        await gql(
            api_app,
            "{ pubsubStats { topic count errors lastSeen }"
            ' pubsubTypeStats(topic: "commands") { type count ratePerMinute errors } }',
        )
    )
    topics = {t["topic"]: t for t in stats["pubsubStats"]}
    assert list(topics) == ["commands", "events", "queries", "sagas", "dlq", "partners"]
    assert topics["events"]["count"] > 0 and topics["events"]["lastSeen"]
    types = {t["type"]: t for t in stats["pubsubTypeStats"]}
    assert types["order.place"]["count"] >= 2 and types["order.place"]["ratePerMinute"] > 0
    assert types["payment.process"]["errors"] >= 1  # the declined card's refusal

    async def projected() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = data(
            await gql(api_app, "{ projectionStatus { name position state service } }")
        )["projectionStatus"]
        return found if all(p["position"] > 0 for p in found) and found else []

    projections = {p["name"]: p for p in await eventually(projected)}
    assert {"products", "orders", "sagas", "saga_inbox"} <= set(projections)

    events = data(
        await gql(
            api_app,
            '{ events(limit: 5, type: "order.*", aggregateId: "o-2") { type stream position } }',
        )
    )["events"]
    assert [e["type"] for e in events][-1] == "order.placed"
    assert {e["stream"] for e in events} == {"order-o-2"}
    assert events == sorted(events, key=lambda e: -e["position"])  # newest first


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{ pubsubMessages { nope } }", "Cannot query field"),
        ("{ pubsubMessages(limit: 100000) { id } }", "limit must be between"),
        ("{ pubsubMessages( }", "Syntax Error"),
        ('{ pubsubMessages(topic: "bogus") { id } }', "unknown topic"),
        (
            "{ " + " ".join(f"a{i}: dashboardStats {{ eventsStored }}" for i in range(50)) + " }",
            "aliases",
        ),
        (
            "{ systemTopology { instances { runtime { topCoroutines { name } } } } }".replace(
                "{ name }", "{ name " + "x " * 2500 + "}"
            ),
            "token",
        ),
    ],
)
async def test_hostile_documents_get_errors_and_the_api_keeps_serving(
    api_app: App, document: str, message: str
) -> None:
    body = await gql(api_app, document)
    assert body.get("errors"), body
    assert message.lower() in json.dumps(body["errors"]).lower()
    assert data(await gql(api_app, "{ dashboardStats { commandsExecuted } }"))


async def test_a_mutation_is_one_trace_with_the_command_it_sends(
    spans: InMemorySpanExporter, api_app: App, nc: NATS
) -> None:
    await create_product(nc, "p-1", 10)
    placed = await gql(
        api_app,
        'mutation { placeOrder(orderId: "o-t", customerId: "c-1",'
        ' items: [{productId: "p-1", quantity: 1}]) }',
    )
    assert data(placed)["placeOrder"]["order_id"] == "o-t"

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.name == name]

    async def recorded() -> bool:
        return bool(named("order.place process"))

    await eventually(recorded)
    (mutation,) = named("graphql mutation")
    (send,) = named("order.place send")
    (process,) = named("order.place process")
    assert mutation.context is not None and send.parent is not None
    assert send.parent.span_id == mutation.context.span_id
    assert process.context is not None and process.context.trace_id == mutation.context.trace_id
