"""The monitor over a real nats-server: the broadcaster's buffer holds what really flowed
(commands with their replies' latency, events with their trace, the command service's
calls to the partners with theirs), the ring keeps 1000 of 1500, and heartbeats make
healthy instances that turn unhealthy when they stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from broker.connection import connect
from broker.heartbeat import Heartbeat
from broker.subjects import ALL_PARTNERS, PAYMENT_CHARGE
from broker.tasks import cancel_and_wait
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from ordermesh.monitor.broadcaster import Broadcaster
from ordermesh.monitor.buffer import TOPICS, MessageBuffer, MonitoredMessage
from ordermesh.monitor.topology import Instance, Topology
from ordermesh.tap.message import Tapped
from ordermesh.tap.render import json_line, line
from ordermesh.tap.session import Tap, TapOptions
from tests.conftest import events_in_stream, eventually, request, settings_for
from tests.integration.test_saga import TRACE_ID, TRACEPARENT, create_product, place


@pytest.fixture
async def monitor(nats_server: EmbeddedNatsServer) -> AsyncIterator[Broadcaster]:
    """A broadcaster on a connection of its own, as the API process would run it."""
    connection = await connect(nats_server.url)
    broadcaster = Broadcaster(connection, MessageBuffer())
    await broadcaster.start()
    try:
        yield broadcaster
    finally:
        await broadcaster.stop()
        await connection.close()


def first(messages: list[MonitoredMessage], type_: str) -> MonitoredMessage | None:
    return next((m for m in messages if m.type == type_), None)


async def test_an_order_placed_over_nats_is_seen_with_its_reply_and_events(
    app: App, nc: NATS, monitor: Broadcaster
) -> None:
    buffer = monitor.buffer
    assert monitor.ready.is_set()
    live = buffer.subscribe("events")

    await create_product(nc, "p-1", 10)
    await place(nc, "o-1", [("p-1", 2)])
    refused = await request(nc, "commands.order.place", {"customer_id": "c-1", "items": []})
    assert refused["error"]["code"] == "validation_error"
    missing = await request(nc, "queries.order.get", {"order_id": "o-none"})
    assert not missing["ok"]

    async def order_seen() -> tuple[MonitoredMessage, MonitoredMessage] | None:
        """Every request with its reply, and the order's event (the monitor has its own
        connection: it may be a moment behind the replies this test got)."""
        requests = buffer.messages("commands") + buffer.messages("queries")
        placed = first(buffer.messages("events"), "order.placed")
        if len(requests) < 4 or placed is None or any(m.ok is None for m in requests):
            return None
        return requests[1], placed

    command, placed = await eventually(order_seen)
    # The command, with what its reply said and how long it took.
    assert command.subject == "commands.order.place" and command.topic == "commands"
    assert command.ok is True and command.latency_ms is not None and command.latency_ms > 0
    assert command.trace_id == TRACE_ID
    assert json.loads(command.payload)["order_id"] == "o-1" and not command.truncated
    # The event the relay published, in the same trace, with the CloudEvents attributes.
    assert placed.subject == "events.order.placed"
    assert placed.trace_id == TRACE_ID and placed.aggregate_id == "o-1"
    assert placed.id == placed.headers["ce-id"] and placed.source
    assert placed.correlation_id is not None
    assert placed.timestamp <= placed.received_at

    bad = [m for m in buffer.messages("commands") if m.type == "order.place"][1]
    assert bad.ok is False
    query = first(buffer.messages("queries"), "order.get")
    assert query is not None and query.ok is False and query.latency_ms is not None

    # Replies are attached, never topics; nothing from _INBOX or elsewhere is kept.
    assert {m.topic for m in buffer.messages(limit=1000)} <= set(TOPICS)
    assert not any(m.subject.startswith("_INBOX") for m in buffer.messages(limit=1000))

    stats = {s.topic: s for s in buffer.topic_stats()}
    assert stats["commands"].count == 3 and stats["commands"].errors == 1
    assert stats["queries"].count == 1 and stats["queries"].errors == 1
    assert stats["events"].count >= 2  # product.created, order.placed (no saga here)
    assert stats["commands"].rate_per_minute == 3.0 and stats["commands"].last_seen is not None
    by_type = {(s.topic, s.type): s for s in buffer.type_stats()}
    assert by_type[("commands", "order.place")].count == 2
    assert by_type[("commands", "order.place")].errors == 1
    assert by_type[("commands", "product.create")].errors == 0
    assert by_type[("events", "order.placed")].count == 1

    # A live subscriber got the same events, as they came.
    received: list[MonitoredMessage] = []
    for _ in range(stats["events"].count):
        received.append(await asyncio.wait_for(anext(live), timeout=5))
        if received[-1].type == "order.placed":
            break
    assert received[-1].id == placed.id
    assert all(m.topic == "events" for m in received)
    live.close()


async def test_after_1500_messages_the_buffer_holds_the_last_1000(
    nc: NATS, monitor: Broadcaster
) -> None:
    # No relay has created EVENTS here: a core publish on events.* is delivered to
    # subscribers and stored nowhere, so nothing else reacts to these.
    assert await events_in_stream(nc) == 0
    for i in range(1500):
        await nc.publish("events.test.thing", b'{"n": %d}' % i, headers={"ce-id": f"t-{i}"})
    await nc.flush()
    buffer = monitor.buffer

    async def all_counted() -> bool:
        return buffer.topic_stats()[1].count == 1500

    await eventually(all_counted)
    assert len(buffer) == 1000
    kept = buffer.messages(limit=1000)
    assert [m.id for m in kept] == [f"t-{i}" for i in range(500, 1500)]
    assert kept[-1].payload == '{"n": 1499}' and kept[-1].type == "test.thing"


async def pay(nc: NATS, order_id: str, method: str) -> dict[str, Any]:
    """``commands.payment.process`` in the test's trace, under a correlation id of its own."""
    return await request(
        nc,
        "commands.payment.process",
        {"order_id": order_id, "amount": "5.00", "method": method},
        headers={"traceparent": TRACEPARENT, "ce-correlationid": f"k-{order_id}"},
    )


async def test_the_partners_calls_are_seen_with_their_replies(
    app: App, nc: NATS, monitor: Broadcaster
) -> None:
    """The ``app`` fixture runs the partners in process: a payment command makes the
    command service call the gateway over NATS, and the monitor (and a tap with no
    subject, and one on ``partners.>``) see the call and its answer."""
    assert "partners" in app.services
    buffer = monitor.buffer
    everything: list[Tapped] = []
    calls_only: list[Tapped] = []
    taps = [
        Tap(nc, TapOptions(), everything.append),
        Tap(nc, TapOptions(subjects=(ALL_PARTNERS,), replies=False), calls_only.append),
    ]
    running = [asyncio.create_task(tap.run()) for tap in taps]
    try:
        for tap in taps:
            await asyncio.wait_for(tap.ready.wait(), timeout=10)
        approved = await pay(nc, "o-1", "card")
        assert approved["ok"], approved
        declined = await pay(nc, "o-2", "declined-card")
        assert declined["error"]["code"] == "payment_declined"
        # A request the gateway cannot read: the one failure the partners topic counts.
        garbled = await request(nc, PAYMENT_CHARGE, b"not json")
        assert garbled["ok"] is False

        async def answered() -> list[MonitoredMessage] | None:
            calls = buffer.messages("partners")
            if len(calls) < 3 or any(m.ok is None for m in calls):
                return None
            return calls

        charge, decline, bad = await eventually(answered)
        # The gateway's answers: approved and declined alike are answers, so ok.
        assert (charge.subject, charge.type) == (PAYMENT_CHARGE, "payment.charge")
        assert charge.ok is True and charge.latency_ms is not None and charge.latency_ms > 0
        assert decline.ok is True and decline.latency_ms is not None
        assert bad.ok is False and bad.latency_ms is not None
        # In the command's trace and conversation, though sent with FastStream's headers.
        assert charge.trace_id == TRACE_ID and charge.correlation_id == "k-o-1"
        assert charge.aggregate_id == "o-1" and "ce-id" not in charge.headers
        assert json.loads(charge.payload)["payment_id"] == "pay-o-1"
        assert decline.correlation_id == "k-o-2"
        # The decline is an error once: on the commands topic, as the command's refusal.
        stats = {s.topic: s for s in buffer.topic_stats()}
        assert stats["partners"].count == 3 and stats["partners"].errors == 1
        assert stats["commands"].count == 2 and stats["commands"].errors == 1

        # The flow graph: the command service called the partners three times.
        topology = Topology(buffer)
        _nodes, edges = topology.graph()
        to_partners = next(e for e in edges if (e.source, e.target) == ("command", "partners"))
        assert to_partners.topic == "partners" and to_partners.count == 3

        # The tap with no subject: each call, then its answer, matched and timed.
        async def tapped_all() -> bool:
            return sum(t.subject.startswith("_INBOX.") for t in everything) >= 5  # 2 + 3

        await eventually(tapped_all)
        calls = [t for t in everything if t.kind == "partner"]
        replies = [t for t in everything if t.request and t.request.subject == PAYMENT_CHARGE]
        assert [t.type for t in calls] == ["payment.charge"] * 3
        assert [t.type for t in replies] == ["payment.charge reply"] * 3
        assert json.loads(replies[0].data)["status"] == "approved"
        assert replies[0].correlation_id == "k-o-1" and replies[0].trace_id == TRACE_ID
        assert "PTNR" in line(calls[0], colour=False)
        assert "status=declined" in line(replies[1], colour=False)
        assert "error code=malformed_json" in line(replies[2], colour=False)
        reply_json = json.loads(json_line(replies[0]))
        assert reply_json["request_subject"] == PAYMENT_CHARGE and reply_json["latency_ms"] > 0

        # ``ordermesh tap 'partners.>'``: the calls alone.
        await eventually(lambda: _at_least(calls_only, 3))
        assert {t.subject for t in calls_only} == {PAYMENT_CHARGE}
    finally:
        for task in running:
            await cancel_and_wait(task)


async def _at_least(found: list[Tapped], n: int) -> bool:
    return len(found) >= n


async def test_with_the_monitor_watching_partners_down_is_a_call_without_reply(
    nats_server: EmbeddedNatsServer, nc: NATS, monitor: Broadcaster, tmp_path: Path
) -> None:
    """The monitor's subscription to ``partners.>`` is interest enough for the server:
    with no partner running it sends no "no responders", so the call waits out the
    command service's partner timeout and stays without a reply here (not an error)."""
    settings = settings_for(nats_server, tmp_path / "data", partner_timeout=0.2)
    app = App(settings, ("command",))
    await app.start()
    try:
        body = json.dumps({"order_id": "o-1", "amount": "5.00", "method": "card"}).encode()
        with pytest.raises(NatsTimeout):  # Unresponsive: the command is left unanswered too
            await nc.request("commands.payment.process", body, timeout=1.0)

        async def called() -> list[MonitoredMessage]:
            return monitor.buffer.messages("partners")

        (call,) = await eventually(called)
        assert call.type == "payment.charge" and call.ok is None and call.latency_ms is None
        stats = {s.topic: s for s in monitor.buffer.topic_stats()}
        assert stats["partners"].errors == 0
    finally:
        await app.stop()


def by_instance(topology: Topology, instance: str) -> Instance | None:
    return next((i for i in topology.instances() if i.instance == instance), None)


async def test_heartbeats_show_instances_healthy_until_they_stop(
    nats_server: EmbeddedNatsServer, nc: NATS
) -> None:
    topology = Topology(MessageBuffer(), nc)
    await topology.start()
    connections = [await connect(nats_server.url) for _ in range(2)]
    stopping = Heartbeat(
        connections[0], "ordermesh-command+relay", ["command", "relay"], interval=0.1
    )
    crashing = Heartbeat(connections[1], "ordermesh-query", ["query"], interval=0.1)
    try:
        await stopping.start()
        await crashing.start()

        async def both_healthy() -> bool:
            found = [by_instance(topology, b.instance) for b in (stopping, crashing)]
            return all(i is not None and i.healthy for i in found)

        await eventually(both_healthy)
        seen = by_instance(topology, stopping.instance)
        assert seen is not None
        assert seen.services == ("command", "relay") and seen.runtime.tasks > 0
        nodes, _edges = topology.graph()
        assert {n.id for n in nodes if n.healthy} >= {"command", "relay", "query", "EVENTS"}

        async def unhealthy(beat: Heartbeat) -> bool:
            found = by_instance(topology, beat.instance)
            return found is not None and not found.healthy

        # A clean stop says so in a last heartbeat.
        await stopping.stop()
        await eventually(lambda: unhealthy(stopping))
        stopped = by_instance(topology, stopping.instance)
        assert stopped is not None and not stopped.ready
        # A process that dies sends nothing more: 3 intervals later it is unhealthy.
        await connections[1].close()
        await eventually(lambda: unhealthy(crashing))
        crashed = by_instance(topology, crashing.instance)
        assert crashed is not None and crashed.ready  # its last word was "ready": it is the age
        nodes, _edges = topology.graph()
        assert not any(n.healthy for n in nodes if n.id in ("command", "relay", "query"))
        assert topology.rejected == 0
    finally:
        await stopping.stop()
        await crashing.stop()
        for connection in connections:
            await connection.close()
        await topology.stop()
