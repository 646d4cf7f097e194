"""The extension kit without a server: FastStream's test broker for request/reply and for
handing events to handlers; the JetStream side is in tests/integration/test_kit.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker, NatsMessage, TestNatsBroker
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from domain.messages import Event
from domain.metadata import MessageContext
from domain.order import OrderCancelled, OrderConfirmed, OrderEvent
from domain.product import Restock
from examples.notifications import app as notifications
from examples.notifications.outbox import Notification, Outbox, read
from ordermesh.kit import (
    CommandError,
    CommandRefused,
    EventContext,
    Redelivery,
    event_subscriber,
    make_broker,
    nats_url,
    send_command,
    tracer_provider,
)
from telemetry.context import log_ids

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
#: Nothing listens here: the test broker never connects.
UNUSED = "nats://127.0.0.1:1"


def event_headers(event: Event, event_id: str, **extra: str) -> dict[str, str]:
    """What the relay sends with a stored event (the part the kit reads)."""
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": event.TYPE,
        "ce-source": "ordermesh.command",
        "ce-subject": event.aggregate_id(),
        "ce-correlationid": "corr-1",
        "ce-causationid": "cmd-1",
        "traceparent": TRACEPARENT,
        **extra,
    }


class FakeCommandService:
    """Answers ``commands.product.restock`` as the command service would, and keeps what
    it received."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.received: list[tuple[dict[str, Any], dict[str, str]]] = []

    def attach(self, broker: NatsBroker) -> None:
        @broker.subscriber("commands.product.restock")
        async def serve(body: dict[str, Any], message: NatsMessage) -> dict[str, Any]:
            self.received.append((body, dict(message.headers)))
            return self.reply

    @property
    def headers(self) -> dict[str, str]:
        [(_, headers)] = self.received
        return headers


PRODUCT = {"product_id": "p-1", "name": "Widget", "price": "1.00", "stock": 15}


# -- send_command -------------------------------------------------------------------------


async def test_send_command_sends_cloudevents_headers_and_returns_the_data() -> None:
    broker = make_broker(UNUSED, service="restocker", tracing=False)
    service = FakeCommandService({"ok": True, "data": PRODUCT})
    service.attach(broker)
    async with TestNatsBroker(broker):
        data = await send_command(broker, Restock(product_id="p-1", quantity=5))
    assert data == PRODUCT
    [(body, headers)] = service.received
    assert Restock.model_validate(body) == Restock(product_id="p-1", quantity=5)
    assert uuid.UUID(headers["ce-id"])
    assert headers["ce-type"] == "product.restock"
    assert headers["ce-source"] == "restocker"
    assert headers["ce-subject"] == "p-1"
    assert headers["ce-specversion"] == "1.0"
    assert headers["content-type"] == "application/json"
    # Caused by nothing: a flow of its own, and no trace to join.
    assert headers["ce-correlationid"] == headers["ce-id"]
    assert "ce-causationid" not in headers and "traceparent" not in headers


async def test_send_command_carries_its_causes_correlation_and_trace() -> None:
    broker = make_broker(UNUSED, service="restocker", tracing=False)
    service = FakeCommandService({"ok": True, "data": PRODUCT})
    service.attach(broker)
    cause = MessageContext(
        id="event-1",
        type="product.stock_reserved",
        source="ordermesh.command",
        correlation_id="corr-1",
        traceparent=TRACEPARENT,
        baggage="tenant=a",
    )
    async with TestNatsBroker(broker):
        await send_command(
            broker, Restock(product_id="p-1", quantity=5), cause=cause, command_id="cmd-7"
        )
    headers = service.headers
    assert headers["ce-id"] == "cmd-7"
    assert headers["ce-correlationid"] == "corr-1"
    assert headers["ce-causationid"] == "event-1"
    assert headers["baggage"] == "tenant=a"
    # Tracing off: the cause's own span is the parent the command service continues.
    assert headers["traceparent"] == TRACEPARENT


async def test_send_command_inside_a_handler_is_caused_by_the_event_being_handled() -> None:
    broker = make_broker(UNUSED, service="restocker", tracing=False)
    service = FakeCommandService({"ok": True, "data": PRODUCT})
    service.attach(broker)
    sent: list[dict[str, Any]] = []

    @event_subscriber(broker, OrderCancelled, durable="restocker")
    async def on_cancelled(event: OrderCancelled) -> None:
        sent.append(await send_command(broker, Restock(product_id="p-1", quantity=1)))

    event = OrderCancelled(order_id="o-1", reason="payment_declined")
    async with TestNatsBroker(broker) as br:
        await br.publish(
            event.model_dump_json().encode(),
            "events.order.cancelled",
            headers=event_headers(event, "event-9"),
            stream="EVENTS",
        )
    assert sent == [PRODUCT]
    headers = service.headers
    assert headers["ce-causationid"] == "event-9"
    assert headers["ce-correlationid"] == "corr-1"
    assert headers["traceparent"].split("-")[1] == TRACE_ID


async def test_a_refusal_raises_with_the_replys_code_and_details() -> None:
    broker = make_broker(UNUSED, service="restocker", tracing=False)
    error = {"code": "product_not_found", "message": "no product p-9", "details": ["p-9"]}
    service = FakeCommandService({"ok": False, "error": error})
    service.attach(broker)
    async with TestNatsBroker(broker):
        with pytest.raises(CommandRefused) as refused:
            await send_command(broker, Restock(product_id="p-9", quantity=1))
    assert refused.value.code == "product_not_found"
    assert refused.value.message == "no product p-9"
    assert refused.value.details == ["p-9"]
    assert refused.value.command_type == "product.restock"
    assert refused.value.command_id == service.headers["ce-id"]


async def test_a_reply_that_is_not_ordermeshs_envelope_is_an_error() -> None:
    broker = make_broker(UNUSED, service="restocker", tracing=False)
    service = FakeCommandService({"status": "fine"})
    service.attach(broker)
    async with TestNatsBroker(broker):
        with pytest.raises(CommandError) as failed:
            await send_command(broker, Restock(product_id="p-1", quantity=1))
    assert failed.value.code == "malformed_reply"
    assert not isinstance(failed.value, CommandRefused)


# -- event_subscriber ---------------------------------------------------------------------


async def test_a_handler_gets_the_typed_event_and_its_context() -> None:
    broker = make_broker(UNUSED, service="notifier", tracing=False)
    got: list[tuple[OrderEvent, MessageContext, dict[str, str | None]]] = []

    @event_subscriber(broker, OrderConfirmed, OrderCancelled, durable="notifier")
    async def handle(event: OrderConfirmed | OrderCancelled, ctx: EventContext) -> None:
        got.append((event, ctx, log_ids()))

    confirmed = OrderConfirmed(order_id="o-1")
    cancelled = OrderCancelled(order_id="o-2", reason="payment_declined")
    async with TestNatsBroker(broker) as br:
        for event, event_id in ((confirmed, "e-1"), (cancelled, "e-2")):
            await br.publish(
                event.model_dump_json().encode(),
                f"events.{event.TYPE}",
                headers=event_headers(event, event_id),
                stream="EVENTS",
            )
    assert [(type(e), e) for e, _, _ in got] == [
        (OrderConfirmed, confirmed),
        (OrderCancelled, cancelled),
    ]
    ctx = got[1][1]
    assert (ctx.id, ctx.type, ctx.subject) == ("e-2", "order.cancelled", "o-2")
    assert (ctx.correlation_id, ctx.causation_id) == ("corr-1", "cmd-1")
    assert ctx.trace_id == TRACE_ID
    # ordermesh's log context is the event's while the handler runs.
    assert got[1][2]["correlation_id"] == "corr-1"
    assert got[1][2]["trace_id"] == TRACE_ID


@pytest.mark.parametrize(
    ("types", "durable", "complaint"),
    [
        ((), "ok", "at least one"),
        ((OrderConfirmed,), "has.dot", "durable name"),
        ((OrderConfirmed,), "", "durable name"),
        ((OrderEvent,), "ok", "not an event ordermesh stores"),
    ],
)
def test_event_subscriber_refuses_what_cannot_work(
    types: tuple[type[Event], ...], durable: str, complaint: str
) -> None:
    broker = make_broker(UNUSED, service="x", tracing=False)
    with pytest.raises(ValueError, match=complaint):
        event_subscriber(broker, *types, durable=durable)


def test_redelivery_doubles_up_to_its_ceiling() -> None:
    policy = Redelivery(first=0.5, longest=3.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert Redelivery().delay(10_000) == 60.0
    with pytest.raises(ValueError):
        Redelivery(first=2.0, longest=1.0)
    with pytest.raises(ValueError):
        Redelivery(first=0.0)


# -- broker and tracing -------------------------------------------------------------------


def test_tracing_is_off_without_an_exporter_and_named_after_the_service_with_one() -> None:
    assert tracer_provider("notifier", environ={}) is None
    exporter = SimpleSpanProcessor(InMemorySpanExporter())
    assert (
        tracer_provider("x", processors=[exporter], environ={"OTEL_SDK_DISABLED": "true"}) is None
    )
    provider = tracer_provider("notifier", processors=[exporter], environ={})
    assert provider is not None
    assert provider.resource.attributes[SERVICE_NAME] == "notifier"
    renamed = tracer_provider(
        "notifier", processors=[exporter], environ={"OTEL_SERVICE_NAME": "mail"}
    )
    assert renamed is not None and renamed.resource.attributes[SERVICE_NAME] == "mail"
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracer_provider("n", environ=endpoint | {"OTEL_TRACES_EXPORTER": "none"}) is None
    with_endpoint = tracer_provider("n", environ=endpoint)
    assert with_endpoint is not None
    with_endpoint.shutdown()


async def test_a_metrics_registry_counts_every_event_by_service() -> None:
    registry = CollectorRegistry()
    broker = make_broker(UNUSED, service="notifier", tracing=False, metrics_registry=registry)

    @event_subscriber(broker, OrderConfirmed, durable="notifier")
    async def handle(event: OrderConfirmed) -> None:
        return None

    event = OrderConfirmed(order_id="o-1")
    async with TestNatsBroker(broker) as br:
        await br.publish(
            event.model_dump_json().encode(),
            "events.order.confirmed",
            headers=event_headers(event, "e-1"),
            stream="EVENTS",
        )
    labels = {"app_name": "notifier", "broker": "nats", "handler": "events.order.confirmed"}
    assert registry.get_sample_value("faststream_received_messages_total", labels) == 1.0


def test_the_nats_url_comes_from_ordermesh_nats_url() -> None:
    assert nats_url({}) == "nats://127.0.0.1:4222"
    assert nats_url({"ORDERMESH_NATS_URL": "nats://nats.example:4222"}) == (
        "nats://nats.example:4222"
    )


# -- the notifications example -------------------------------------------------------------


async def test_the_example_writes_one_line_per_event_and_none_twice(tmp_path: Path) -> None:
    service = notifications.create(UNUSED, outbox=tmp_path / "outbox.jsonl")
    await service.outbox.open()
    confirmed = OrderConfirmed(order_id="o-1")
    cancelled = OrderCancelled(order_id="o-2", reason="payment_declined")
    async with TestNatsBroker(service.broker) as br:
        for event, event_id in ((confirmed, "e-1"), (cancelled, "e-2"), (confirmed, "e-1")):
            await br.publish(
                event.model_dump_json().encode(),
                f"events.{event.TYPE}",
                headers=event_headers(event, event_id),
                stream="EVENTS",
            )
    lines = read(tmp_path / "outbox.jsonl")
    assert [(n.event_id, n.order_id, n.text) for n in lines] == [
        ("e-1", "o-1", "Your order o-1 is confirmed."),
        ("e-2", "o-2", "Your order o-2 was cancelled (payment_declined)."),
    ]
    assert {n.correlation_id for n in lines} == {"corr-1"}
    assert {n.trace_id for n in lines} == {TRACE_ID}
    assert (service.outbox.written, service.outbox.duplicates) == (2, 1)


async def test_the_outbox_remembers_what_an_earlier_run_wrote(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    line = Notification(
        event_id="e-1", event_type="order.confirmed", order_id="o-1", text="t", correlation_id="c"
    )
    first = Outbox(path)
    await first.open()
    assert await first.write(line)
    again = Outbox(path)
    await again.open()
    assert not await again.write(line)
    assert [n.event_id for n in read(path)] == ["e-1"]


def test_the_example_documents_its_channels_in_asyncapi_3() -> None:
    document = notifications.app.schema.to_specification().to_jsonable()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "ordermesh notifications"
    channels = document["channels"].values()
    assert sorted(c["address"] for c in channels) == [
        "events.order.cancelled",
        "events.order.confirmed",
    ]
    assert {"OrderConfirmed", "OrderCancelled"} <= set(document["components"]["schemas"])
    assert {op["action"] for op in document["operations"].values()} == {"receive"}
    json.dumps(document)  # plain JSON, as the generator writes it
