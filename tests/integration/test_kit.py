"""The extension kit and its example over a real nats-server and every ordermesh service:
each event once across a restart of the example, the example's spans in the order's
trace, commands sent from a handler in the event's flow and trace, the stream left as
ordermesh made it, paced retries."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from domain.event_store import EventStore
from domain.metadata import MessageContext, parse_metadata
from domain.order import OrderPlaced
from domain.product import Restock, StockReserved
from examples.notifications import app as notifications
from examples.notifications.outbox import Notification, read
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from ordermesh.kit import (
    CommandNotAnswered,
    EventContext,
    Redelivery,
    event_subscriber,
    make_broker,
    send_command,
    tracer_provider,
)
from tests.conftest import eventually, request
from tests.integration.test_saga import TRACE_ID, create_product, place, settled

ROOT = Path(__file__).resolve().parents[2]
#: Long enough for a cold interpreter to import FastStream on a busy CI machine.
PROCESS_TIMEOUT = 30.0


async def consumer(nc: NATS, durable: str) -> ConsumerInfo | None:
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info("EVENTS", durable)
    except NotFoundError:
        return None
    return info


async def all_acknowledged(nc: NATS, durable: str) -> ConsumerInfo | None:
    """The consumer once nothing is waiting for it and nothing is unacknowledged."""
    info = await consumer(nc, durable)
    if info is None or info.num_pending or info.num_ack_pending:
        return None
    return info


async def stored(store: EventStore | None, stream: str, event_type: str) -> list[Any]:
    assert store is not None
    return [e for e in await store.read_stream(stream) if e.type == event_type]


@pytest.fixture
async def kit_brokers() -> AsyncIterator[list[NatsBroker]]:
    """Brokers a test starts: stopped at the end whatever happened."""
    brokers: list[NatsBroker] = []
    try:
        yield brokers
    finally:
        for broker in brokers:
            await broker.stop()


def kit_tracer(exporter: InMemorySpanExporter, service: str) -> TracerProvider:
    provider = tracer_provider(service, processors=[SimpleSpanProcessor(exporter)], environ={})
    assert provider is not None
    return provider


# -- (1) the example, each event once across a restart -------------------------------------


class NotifierProcess:
    """``python -m examples.notifications`` as a user runs it, its output in a file."""

    def __init__(self, url: str, outbox: Path, log: Path) -> None:
        self.outbox, self.log = outbox, log
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.environ: Mapping[str, str] = environ | {
            "ORDERMESH_NATS_URL": url,
            "ORDERMESH_NOTIFICATIONS_OUTBOX": str(outbox),
            "LOG_LEVEL": "DEBUG",
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "examples.notifications",
                cwd=ROOT,
                env=dict(self.environ),
                stdout=log,
                stderr=log,
            )

    async def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), PROCESS_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"did not stop on SIGTERM:\n{self.log.read_text()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def test_the_example_notifies_each_event_exactly_once_across_a_restart(
    saga_app: App, nc: NATS, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    notifier = NotifierProcess(nats_server.url, outbox, tmp_path / "notifier.log")
    await create_product(nc, "p-1", 100)

    def lines() -> list[Notification]:
        return read(outbox)

    async def written(count: int) -> list[Notification] | None:
        assert notifier.process is not None
        if notifier.process.returncode is not None:
            raise AssertionError(f"the example exited:\n{notifier.log.read_text()}")
        found = lines()
        return found if len(found) >= count else None

    try:
        await notifier.start()
        # Ready once its durable consumer exists: from then on JetStream keeps its events.
        await eventually(lambda: consumer(nc, notifications.DURABLE), timeout=PROCESS_TIMEOUT)
        await place(nc, "o-1", [("p-1", 1)])
        await place(nc, "o-2", [("p-1", 1)], payment_method="declined-card")
        await eventually(lambda: written(2), timeout=PROCESS_TIMEOUT)
        assert await notifier.stop() == 0

        # While it is down: one order confirmed, one cancelled.
        await place(nc, "o-3", [("p-1", 1)])
        await place(nc, "o-4", [("p-1", 1)], payment_method="declined-card")
        assert (await settled(nc, "o-3"))["status"] == "confirmed"
        assert (await settled(nc, "o-4"))["status"] == "cancelled"
        assert len(lines()) == 2

        await notifier.start()
        await eventually(lambda: written(4), timeout=PROCESS_TIMEOUT)
        info = await eventually(lambda: all_acknowledged(nc, notifications.DURABLE))
        assert await notifier.stop() == 0
    finally:
        notifier.kill()

    # Exactly the four events, each once, in the order EVENTS holds them (a declined
    # order may end before an earlier confirmed one).
    events = []
    for order_id, event_type in (
        ("o-1", "order.confirmed"),
        ("o-2", "order.cancelled"),
        ("o-3", "order.confirmed"),
        ("o-4", "order.cancelled"),
    ):
        events += await stored(saga_app.store, f"order-{order_id}", event_type)
    events.sort(key=lambda e: e.position)
    assert [(n.event_id, n.event_type) for n in lines()] == [(e.id, e.type) for e in events]
    texts = {n.order_id: n.text for n in lines()}
    assert texts["o-2"] == "Your order o-2 was cancelled (payment_declined)."
    assert texts["o-3"] == "Your order o-3 is confirmed."
    assert {n.trace_id for n in lines()} == {TRACE_ID}
    # JetStream's own count: four deliveries in all, each acknowledged; none was delivered
    # twice (the outbox would have hidden a duplicate, the consumer does not).
    assert info.delivered.consumer_seq == 4
    assert info.ack_floor.consumer_seq == 4
    assert "delivered again" not in notifier.log.read_text()


# -- (2) the example's span in the order's trace -------------------------------------------


def named(spans: list[ReadableSpan], name: str, trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and s.context.trace_id == trace_id]


async def test_the_examples_consumer_span_is_in_the_orders_trace(
    traced_app: App,
    nc: NATS,
    nats_server: EmbeddedNatsServer,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    kit_spans = InMemorySpanExporter()
    service = notifications.create(
        nats_server.url,
        outbox=tmp_path / "outbox.jsonl",
        tracer_provider=kit_tracer(kit_spans, notifications.SERVICE),
    )
    await create_product(nc, "p-1", 10)
    await service.app.start()
    try:
        await place(nc, "o-1", [("p-1", 1)])  # in the client's trace, TRACE_ID
        trace_id = int(TRACE_ID, 16)

        async def consumed() -> list[ReadableSpan]:
            found = named(
                list(kit_spans.get_finished_spans()), "events.order.confirmed process", trace_id
            )
            return found if found and read(service.outbox.path) else []

        [consumer_span] = await eventually(consumed)
    finally:
        await service.app.stop()

    # Its parent is the relay's publish of the event, in ordermesh's part of the trace.
    async def relayed() -> list[ReadableSpan]:
        return named(list(spans.get_finished_spans()), "order.confirmed publish", trace_id)

    [publish] = await eventually(relayed)
    assert consumer_span.parent is not None
    assert consumer_span.parent.span_id == publish.context.span_id
    assert consumer_span.resource.attributes["service.name"] == "notifications"
    [event] = await stored(traced_app.store, "order-o-1", "order.confirmed")
    attributes = consumer_span.attributes or {}
    assert attributes["messaging.message.id"] == event.id
    assert (
        attributes["messaging.message.conversation_id"]
        == (parse_metadata(event.metadata)["correlation_id"])
    )
    [line] = read(service.outbox.path)
    assert line.trace_id == TRACE_ID


# -- (3) a command from a handler: the event's flow and trace ------------------------------


class Restocker:
    """An extension that restocks a product whose stock falls under 5, and what it saw."""

    def __init__(self, broker: NatsBroker) -> None:
        self.seen: list[tuple[StockReserved, MessageContext]] = []
        self.replies: list[dict[str, Any]] = []

        @event_subscriber(broker, StockReserved, durable="restocker")
        async def restock(event: StockReserved, ctx: EventContext) -> None:
            self.seen.append((event, ctx))
            if event.stock < 5:
                reply = await send_command(
                    broker, Restock(product_id=event.product_id, quantity=10)
                )
                self.replies.append(reply)


async def sent_commands(nc: NATS, subject: str) -> list[Msg]:
    """Every request on ``subject`` from now on (a plain subscriber gets a copy beside
    the command service's queue group)."""
    received: list[Msg] = []

    async def keep(msg: Msg) -> None:
        received.append(msg)

    await nc.subscribe(subject, cb=keep)
    await nc.flush()
    return received


async def restock_after_an_order(
    application: App, nc: NATS, broker: NatsBroker, brokers: list[NatsBroker]
) -> tuple[Restocker, Msg, Any, dict[str, Any]]:
    """Place an order that takes p-1 under 5; the restocker's view, the command it sent,
    the event that command stored, and the order's own first event's metadata."""
    restocker = Restocker(broker)
    commands = await sent_commands(nc, "commands.product.restock")
    await create_product(nc, "p-1", 6)
    await broker.start()
    brokers.append(broker)
    await place(nc, "o-1", [("p-1", 2)])

    async def restocked() -> list[Any]:
        done = restocker.replies and commands
        return await stored(application.store, "product-p-1", "product.restocked") if done else []

    [event] = await eventually(restocked)
    [placed] = await stored(application.store, "order-o-1", "order.placed")
    return restocker, commands[0], event, parse_metadata(placed.metadata)


async def test_a_command_sent_from_a_handler_joins_the_events_flow_and_trace(
    traced_app: App,
    nc: NATS,
    nats_server: EmbeddedNatsServer,
    spans: InMemorySpanExporter,
    kit_brokers: list[NatsBroker],
) -> None:
    kit_spans = InMemorySpanExporter()
    broker = make_broker(
        nats_server.url, service="restocker", tracer_provider=kit_tracer(kit_spans, "restocker")
    )
    restocker, command, event, order = await restock_after_an_order(
        traced_app, nc, broker, kit_brokers
    )
    [(reserved, ctx)] = restocker.seen
    assert (reserved.product_id, reserved.stock) == ("p-1", 4)
    assert restocker.replies == [
        {"product_id": "p-1", "name": "p-1", "price": "10.00", "stock": 14}
    ]

    headers = command.headers or {}
    assert headers["ce-source"] == "restocker"
    assert headers["ce-causationid"] == ctx.id  # the stock_reserved event
    assert headers["ce-correlationid"] == ctx.correlation_id == order["correlation_id"]
    assert headers["traceparent"].split("-")[1] == TRACE_ID
    # What ordermesh stored: caused by the command, in the order's flow and trace.
    metadata = parse_metadata(event.metadata)
    assert metadata["causation_id"] == headers["ce-id"]
    assert metadata["correlation_id"] == order["correlation_id"]
    assert metadata["traceparent"].split("-")[1] == TRACE_ID

    # The command service's span is a child of the kit's request (FastStream names the
    # span whose context it sends "create"), itself under the consumer span of the event:
    # one trace from the client through the extension and back into ordermesh.
    trace_id = int(TRACE_ID, 16)

    async def served() -> list[ReadableSpan]:
        return named(list(spans.get_finished_spans()), "product.restock process", trace_id)

    [process] = await eventually(served)
    ours = {s.context.span_id: s for s in kit_spans.get_finished_spans()}
    assert process.parent is not None
    sent = ours[process.parent.span_id]
    assert sent.name == "commands.product.restock create"
    assert sent.context.trace_id == trace_id
    assert sent.parent is not None
    consumed = ours[sent.parent.span_id]
    assert consumed.name == "events.product.stock_reserved process"
    assert consumed.context.trace_id == trace_id


async def test_with_tracing_off_a_command_still_carries_the_events_trace(
    saga_app: App, nc: NATS, nats_server: EmbeddedNatsServer, kit_brokers: list[NatsBroker]
) -> None:
    broker = make_broker(nats_server.url, service="restocker", tracing=False)
    restocker, command, event, order = await restock_after_an_order(
        saga_app, nc, broker, kit_brokers
    )
    [(_, ctx)] = restocker.seen
    headers = command.headers or {}
    assert headers["traceparent"] == ctx.traceparent  # the event's, passed along
    metadata = parse_metadata(event.metadata)
    assert metadata["traceparent"].split("-")[1] == TRACE_ID
    assert metadata["correlation_id"] == order["correlation_id"]
    assert metadata["causation_id"] == headers["ce-id"]


# -- the stream is ordermesh's; the consumer is the kit's ----------------------------------


async def place_plain_order(nc: NATS, *, create: bool = True) -> None:
    """An order with no saga running (``app``): exactly one ``order.placed`` event."""
    if create:
        await create_product(nc, "p-1", 10)
    reply = await request(
        nc,
        "commands.order.place",
        {"order_id": "o-1", "customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 1}]},
    )
    assert reply["ok"], reply


async def test_the_kit_binds_a_durable_consumer_and_leaves_the_stream_as_it_is(
    app: App, nc: NATS, nats_server: EmbeddedNatsServer, kit_brokers: list[NatsBroker]
) -> None:
    js = nc.jetstream()
    before = (await js.stream_info("EVENTS")).config
    broker = make_broker(nats_server.url, service="audit", tracing=False)

    @event_subscriber(
        broker,
        OrderPlaced,
        StockReserved,
        durable="audit",
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=12.0,
        max_deliver=7,
    )
    async def audit(event: OrderPlaced | StockReserved) -> None:
        return None

    await broker.start()
    kit_brokers.append(broker)
    after = (await js.stream_info("EVENTS")).config
    assert after == before
    info = await consumer(nc, "audit")
    assert info is not None
    config = info.config
    assert config.durable_name == "audit"
    assert config.filter_subjects == ["events.order.placed", "events.product.stock_reserved"]
    assert config.ack_policy == AckPolicy.EXPLICIT
    assert config.deliver_policy == DeliverPolicy.NEW
    assert (config.ack_wait, config.max_deliver) == (12.0, 7)


async def test_a_consumer_created_with_more_types_rejects_those_the_handler_dropped(
    app: App, nc: NATS, nats_server: EmbeddedNatsServer, kit_brokers: list[NatsBroker]
) -> None:
    first = make_broker(nats_server.url, service="audit", tracing=False)

    @event_subscriber(first, OrderPlaced, StockReserved, durable="audit")
    async def everything(event: OrderPlaced | StockReserved) -> None:
        return None

    await first.start()
    await first.stop()
    # The same durable, now for order.placed alone: the consumer keeps both filters.
    broker = make_broker(nats_server.url, service="audit", tracing=False)
    handled: list[OrderPlaced] = []

    @event_subscriber(broker, OrderPlaced, durable="audit")
    async def placed_only(event: OrderPlaced) -> None:
        handled.append(event)

    await broker.start()
    kit_brokers.append(broker)
    await create_product(nc, "p-1", 10)
    reply = await request(
        nc,
        "commands.inventory.reserve",
        {"order_id": "o-9", "items": [{"product_id": "p-1", "quantity": 1}]},
    )
    assert reply["ok"], reply  # a product.stock_reserved event, which nobody wants now
    await place_plain_order(nc, create=False)

    async def settled_consumer() -> ConsumerInfo | None:
        return await all_acknowledged(nc, "audit") if handled else None

    info = await eventually(settled_consumer)
    assert [e.order_id for e in handled] == ["o-1"]
    # Both answered once: the unwanted event rejected for good, not retried.
    assert (info.delivered.consumer_seq, info.ack_floor.consumer_seq) == (2, 2)


async def test_a_failed_event_comes_back_after_the_redelivery_delay_and_is_acked_once_handled(
    app: App, nc: NATS, nats_server: EmbeddedNatsServer, kit_brokers: list[NatsBroker]
) -> None:
    broker = make_broker(nats_server.url, service="flaky", tracing=False)
    deliveries: list[float] = []

    @event_subscriber(broker, OrderPlaced, durable="flaky", redelivery=Redelivery(first=0.5))
    async def handle(event: OrderPlaced) -> None:
        deliveries.append(time.monotonic())
        if len(deliveries) == 1:
            raise RuntimeError("the mail server is down")

    await broker.start()
    kit_brokers.append(broker)
    await place_plain_order(nc)

    async def handled() -> ConsumerInfo | None:
        return await all_acknowledged(nc, "flaky") if len(deliveries) >= 2 else None

    info = await eventually(handled)
    assert len(deliveries) == 2
    # Not at once, as FastStream's own nack would: after the policy's first delay.
    assert deliveries[1] - deliveries[0] >= 0.45
    assert (info.delivered.consumer_seq, info.ack_floor.consumer_seq) == (2, 2)


async def test_a_command_nobody_answers_raises_with_the_protocols_codes(
    nats_server: EmbeddedNatsServer, nc: NATS, kit_brokers: list[NatsBroker]
) -> None:
    broker = make_broker(nats_server.url, service="x", tracing=False)
    await broker.start()
    kit_brokers.append(broker)
    with pytest.raises(CommandNotAnswered) as nobody:
        await send_command(broker, Restock(product_id="p-1", quantity=1), timeout=2.0)
    assert nobody.value.code == "no_responders"

    await sent_commands(nc, "commands.product.restock")  # listens, never answers
    with pytest.raises(CommandNotAnswered) as silent:
        await send_command(broker, Restock(product_id="p-1", quantity=1), timeout=0.3)
    assert silent.value.code == "timeout"
    assert silent.value.command_id
