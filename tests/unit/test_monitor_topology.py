"""The topology: instances and their health from heartbeats (a fake clock), and the flow
graph from the buffer's statistics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ordermesh.monitor.buffer import MessageBuffer, TypeStats
from ordermesh.monitor.topology import EDGES, Edge, Instance, Topology, build_graph
from ordermesh.tap.message import Tapped, kind_of


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def heartbeat(
    instance: str = "i-1",
    services: tuple[str, ...] = ("command", "relay"),
    *,
    interval: float = 2.0,
    ready: bool = True,
    projections: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> bytes:
    body = {
        "instance": instance,
        "service": "ordermesh-" + "+".join(services),
        "services": list(services),
        "host": "h",
        "pid": 42,
        "started_at": "2025-01-01T00:00:00Z",
        "sent_at": "2025-01-01T00:01:00Z",
        "interval": interval,
        "ready": ready,
        "runtime": {
            "resident_memory_bytes": 5e7,
            "cpu_seconds": 1.5,
            "open_fds": 12,
            "tasks": 30,
            "event_loop_lag_seconds": 0.001,
            "gc_collections": [10, 2, 1],
            "top_coroutines": [{"name": "Projector._run", "count": 2}],
        },
        "projections": projections or [],
        **extra,
    }
    return json.dumps(body).encode()


def stat(topic: str, type_: str, count: int, rate: float | None = None) -> TypeStats:
    return TypeStats(topic, type_, count, float(count if rate is None else rate), None, 0)


def instance(services: tuple[str, ...], healthy: bool) -> Instance:
    topology = Topology(MessageBuffer())
    topology.observe(heartbeat("x", services, ready=healthy))
    (found,) = topology.instances()
    return found


def edges_by_key(edges: list[Edge]) -> dict[tuple[str, str, str], tuple[int, float]]:
    return {(e.source, e.target, e.topic): (e.count, e.rate_per_minute) for e in edges}


# -- the graph -----------------------------------------------------------------------------


def test_edges_carry_the_traffic_of_the_messages_that_travel_them() -> None:
    stats = [
        stat("commands", "order.place", 5),
        stat("commands", "product.create", 1),
        stat("commands", "inventory.reserve", 3),
        stat("commands", "payment.process", 2, rate=0.5),
        stat("queries", "order.get", 7),
        stat("events", "order.placed", 4),
        stat("events", "inventory.reserved", 3),
        stat("sagas", "order_fulfillment.started", 2),
        stat("dlq", "events.foreign.thing", 1),
        stat("partners", "payment.charge", 2, rate=1.5),
        stat("partners", "shipping.book", 1),
    ]
    _nodes, edges = build_graph(stats, [])
    assert [(e.source, e.target, e.topic) for e in edges] == list(EDGES)  # all, in order
    got = edges_by_key(edges)
    assert got[("client", "command", "commands")] == (6, 6.0)
    assert got[("saga", "command", "commands")] == (5, 3.5)
    assert got[("command", "event-store", "commands")] == (11, 9.5)
    assert got[("client", "query", "queries")] == (7, 7.0)
    assert got[("saga", "event-store", "sagas")] == (2, 2.0)
    assert got[("event-store", "relay", "events")] == (7, 7.0)
    assert got[("event-store", "relay", "sagas")] == (2, 2.0)
    assert got[("relay", "EVENTS", "events")] == (7, 7.0)
    assert got[("relay", "EVENTS", "sagas")] == (2, 2.0)
    assert got[("EVENTS", "projections", "events")] == (7, 7.0)
    assert got[("EVENTS", "projections", "sagas")] == (2, 2.0)
    assert got[("EVENTS", "saga", "events")] == (7, 7.0)
    assert got[("projections", "DLQ", "dlq")] == (1, 1.0)
    # The command service's calls to the partners: one edge for both partners.
    assert got[("command", "partners", "partners")] == (3, 2.5)


def test_an_idle_system_has_every_edge_at_zero() -> None:
    _nodes, edges = build_graph([], [])
    assert len(edges) == len(EDGES)
    assert all(e.count == 0 and e.rate_per_minute == 0 for e in edges)


def test_node_health_follows_healthy_instances() -> None:
    instances = [
        instance(("command", "relay"), healthy=True),
        instance(("query", "projections"), healthy=False),
        instance(("api",), healthy=True),
    ]
    nodes, _edges = build_graph([], instances)
    health = {n.id: n.healthy for n in nodes}
    assert health == {
        "client": True,
        "command": True,
        "query": False,
        "relay": True,
        "projections": False,
        "saga": False,
        "partners": False,  # drawn, like every service, before its first heartbeat
        "api": True,  # a service seen beyond those gets a node
        "event-store": True,  # the command service, which needs it, is healthy
        "EVENTS": True,
        "DLQ": True,
    }
    kinds = {n.id: n.kind for n in nodes}
    assert kinds["client"] == "client" and kinds["event-store"] == "store"
    assert kinds["EVENTS"] == kinds["DLQ"] == "stream" and kinds["saga"] == "service"

    nodes, _edges = build_graph([], [instance(("query",), healthy=False)])
    assert {n.id for n in nodes if n.healthy} == {"client"}


def test_the_partners_are_one_node_healthy_while_their_process_is() -> None:
    """``ordermesh run partners`` says ``services: ["partners"]`` in its heartbeat."""
    running = [instance(("command",), healthy=True), instance(("partners",), healthy=True)]
    nodes, _edges = build_graph([], running)
    (partners,) = [n for n in nodes if n.id == "partners"]
    assert partners.healthy and partners.kind == "service"
    assert partners.label == "partners (gateway, carrier)"
    assert [n.id for n in nodes].count("partners") == 1

    stopped = [instance(("command",), healthy=True), instance(("partners",), healthy=False)]
    nodes, _edges = build_graph([], stopped)
    assert not next(n for n in nodes if n.id == "partners").healthy


def test_the_graph_of_a_topology_reads_its_buffer() -> None:
    buffer = MessageBuffer()
    subjects = (
        "commands.order.place",
        "commands.inventory.reserve",
        "events.order.placed",
        "partners.payment.charge",
        "partners.shipping.book",
    )
    for subject in subjects:
        buffer.take(Tapped(subject, b"{}", kind=kind_of(subject)))
    _nodes, edges = Topology(buffer).graph()
    got = edges_by_key(edges)
    assert got[("client", "command", "commands")][0] == 1
    assert got[("saga", "command", "commands")][0] == 1
    assert got[("relay", "EVENTS", "events")][0] == 1
    assert got[("command", "partners", "partners")][0] == 2
    assert got[("command", "event-store", "commands")][0] == 2  # the calls are not commands


# -- instances -----------------------------------------------------------------------------


def test_an_instance_is_healthy_while_its_heartbeats_are_recent() -> None:
    clock = FakeClock(100.0)
    topology = Topology(MessageBuffer(), clock=clock)
    assert topology.observe(heartbeat("i-1", interval=2.0)) is not None
    (seen,) = topology.instances()
    assert seen.healthy and seen.services == ("command", "relay")
    assert (seen.host, seen.pid, seen.runtime.open_fds) == ("h", 42, 12)
    assert seen.runtime.top_coroutines[0].name == "Projector._run"
    assert seen.started_at == datetime(2025, 1, 1, tzinfo=UTC)
    assert seen.last_seen.tzinfo is not None

    clock.now = 105.9  # under 3 intervals
    assert topology.instances()[0].healthy
    clock.now = 106.0  # 3 intervals without a heartbeat
    assert not topology.instances()[0].healthy
    topology.observe(heartbeat("i-1", interval=2.0))
    assert topology.instances()[0].healthy
    topology.observe(heartbeat("i-1", interval=2.0, ready=False))
    assert not topology.instances()[0].healthy


def test_each_instance_keeps_its_own_interval() -> None:
    clock = FakeClock(0.0)
    topology = Topology(MessageBuffer(), clock=clock)
    topology.observe(heartbeat("fast", interval=0.1))
    topology.observe(heartbeat("slow", interval=10.0))
    clock.now = 1.0
    health = {i.instance: i.healthy for i in topology.instances()}
    assert health == {"fast": False, "slow": True}


def test_silent_instances_are_forgotten_after_ten_minutes() -> None:
    clock = FakeClock(0.0)
    topology = Topology(MessageBuffer(), clock=clock)
    topology.observe(heartbeat("old"))
    clock.now = 300.0
    topology.observe(heartbeat("newer"))
    clock.now = 599.0
    assert [i.instance for i in topology.instances()] == ["newer", "old"]
    clock.now = 601.0
    assert [i.instance for i in topology.instances()] == ["newer"]
    clock.now = 1000.0
    assert topology.instances() == []


def test_instances_are_bounded_and_junk_is_refused() -> None:
    topology = Topology(MessageBuffer(), max_instances=3)
    for i in range(5):
        topology.observe(heartbeat(f"i-{i}"))
    assert {i.instance for i in topology.instances()} == {"i-2", "i-3", "i-4"}
    for junk in (b"", b"not json", b"{}", heartbeat("x", interval=0), heartbeat("y" * 100)):
        assert topology.observe(junk) is None
    assert topology.rejected == 5
    assert len(topology.instances()) == 3


def test_projections_reported_in_heartbeats() -> None:
    clock = FakeClock(0.0)
    topology = Topology(MessageBuffer(), clock=clock)
    reported = [
        {"name": "orders", "position": 10, "lag_seconds": 0.02, "backlog": 0},
        {"name": "products", "position": 8, "lag_seconds": None, "backlog": 5},
    ]
    topology.observe(heartbeat("p", ("projections",), projections=reported))
    got = {p.name: (p.position, p.backlog, p.state) for p in topology.projections()}
    assert got == {"orders": (10, 0, "live"), "products": (8, 5, "catching_up")}
    assert topology.projections()[0].service == "ordermesh-projections"
    clock.now = 60.0
    assert {p.state for p in topology.projections()} == {"stale"}


@pytest.mark.parametrize("without", ["instance", "runtime", "services", "interval"])
def test_a_heartbeat_missing_a_field_is_refused(without: str) -> None:
    body = json.loads(heartbeat())
    del body[without]
    topology = Topology(MessageBuffer())
    assert topology.observe(json.dumps(body).encode()) is None
    assert topology.instances() == []
