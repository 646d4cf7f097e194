"""The system's shape as the monitor sees it: which processes are alive (their heartbeats
on ``ordermesh.heartbeat.>``) and what flows between the services (the buffer's counts
per message type, laid on a fixed map of who sends what to whom).

The map is static because the architecture is: commands go from a client (or the saga)
to the command service, which appends to the event store and asks the partners (the
payment gateway and the shipping carrier, FastStream services: ``partners.>``); the relay
publishes what was stored to ``EVENTS``; the projections and the saga consume it; dead
letters go to ``DLQ``. A message does not say which service consumed it, so the traffic
of an edge is the traffic of the messages that travel it. :func:`build_graph` is a pure
function of the statistics and the instances, for tests.

Runs on the event loop's thread, like the buffer. Bounded: an instance not heard from for
:data:`FORGET_AFTER` seconds is forgotten, and at most :data:`MAX_INSTANCES` are kept
(anyone on the bus can publish a heartbeat).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from broker.heartbeat import MISSED_BEATS, HeartbeatMessage, RuntimeReport, TotalsReport
from broker.subjects import ALL_HEARTBEATS
from domain.inventory import ReleaseInventory, ReserveInventory
from domain.order import CancelOrder, ConfirmOrder
from domain.payment import ProcessPayment, RefundPayment
from domain.shipment import ArrangeShipment, CancelShipment
from ordermesh.monitor.buffer import MessageBuffer, TypeStats

FORGET_AFTER = 600.0
MAX_INSTANCES = 1000

#: The logical services drawn whether or not they run (``ordermesh.app.SERVICES`` but the
#: monitor itself; not imported: the app may import us). ``partners`` is one node for
#: both partners: one process (``ordermesh run partners``) runs them, and its heartbeat
#: says ``partners``.
SERVICES = ("command", "query", "relay", "projections", "saga", "partners")
#: The commands the saga sends; any other command comes from a client. (``order.cancel``
#: is both: a client's cancellation counts as the saga's here.)
SAGA_COMMANDS = frozenset(
    c.TYPE
    for c in (
        ReserveInventory,
        ReleaseInventory,
        ProcessPayment,
        RefundPayment,
        ArrangeShipment,
        CancelShipment,
        ConfirmOrder,
        CancelOrder,
    )
)

CLIENT, STORE, EVENTS, DLQ = "client", "event-store", "EVENTS", "DLQ"
#: Nodes that are not services: (id, label, kind).
_FIXED_NODES = (
    (CLIENT, "client", "client"),
    (STORE, "event store", "store"),
    (EVENTS, "EVENTS", "stream"),
    (DLQ, "DLQ", "stream"),
)
_LABELS = {
    "command": "command service",
    "query": "query service",
    "relay": "relay",
    "projections": "projections",
    "saga": "saga",
    "partners": "partners (gateway, carrier)",
}
#: Every edge, always listed (with 0 when idle) so that a drawing keeps its layout.
EDGES: tuple[tuple[str, str, str], ...] = (
    (CLIENT, "command", "commands"),
    ("saga", "command", "commands"),
    (CLIENT, "query", "queries"),
    ("command", STORE, "commands"),
    ("command", "partners", "partners"),
    ("saga", STORE, "sagas"),
    (STORE, "relay", "events"),
    (STORE, "relay", "sagas"),
    ("relay", EVENTS, "events"),
    ("relay", EVENTS, "sagas"),
    (EVENTS, "projections", "events"),
    (EVENTS, "projections", "sagas"),
    (EVENTS, "saga", "events"),
    ("projections", DLQ, "dlq"),
)
#: Which edges a message of a topic travels (commands: see :func:`_path`).
_PATHS: dict[str, tuple[tuple[str, str], ...]] = {
    "queries": ((CLIENT, "query"),),
    "events": ((STORE, "relay"), ("relay", EVENTS), (EVENTS, "projections"), (EVENTS, "saga")),
    "sagas": (("saga", STORE), (STORE, "relay"), ("relay", EVENTS), (EVENTS, "projections")),
    "dlq": (("projections", DLQ),),
    "partners": (("command", "partners"),),
}


@dataclass(frozen=True, slots=True)
class Instance:
    """One process, as its last heartbeat described it (GraphQL ``ServiceInstance``)."""

    instance: str
    service: str
    services: tuple[str, ...]
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    """When its last heartbeat arrived (this process's clock, UTC)."""
    healthy: bool
    """Its last heartbeat is younger than 3 intervals and said ``ready``."""
    ready: bool
    interval: float
    runtime: RuntimeReport


@dataclass(frozen=True, slots=True)
class ProjectionInfo:
    """One projection in one instance (GraphQL ``ProjectionStatus``)."""

    name: str
    position: int
    lag_seconds: float | None
    """Age of the newest event it applied, when it applied it."""
    backlog: int | None
    """Messages in ``EVENTS`` not yet delivered to its consumer, after its last batch."""
    state: str
    """``live`` (caught up), ``catching_up`` (a backlog), ``stale`` (instance unhealthy)."""
    service: str
    instance: str


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    label: str
    kind: str
    """``client``, ``service``, ``store`` or ``stream``."""
    healthy: bool


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    topic: str
    count: int
    rate_per_minute: float


def _path(stat: TypeStats) -> tuple[tuple[str, str], ...]:
    if stat.topic == "commands":
        sender = "saga" if stat.type in SAGA_COMMANDS else CLIENT
        return ((sender, "command"), ("command", STORE))
    return _PATHS.get(stat.topic, ())


def build_graph(
    type_stats: Iterable[TypeStats], instances: Iterable[Instance]
) -> tuple[list[Node], list[Edge]]:
    """Nodes with their health, and every edge of :data:`EDGES` with the count and rate
    of the messages that travel it.

    A service is healthy when a healthy instance runs it. Stores and streams cannot send
    heartbeats: the event store counts as healthy when a healthy instance that needs it
    (command, relay, saga) runs, the streams when any healthy instance does (it reaches
    NATS, JetStream's home). The client is always drawn healthy.
    """
    alive = [i for i in instances if i.healthy]
    running = {s for i in alive for s in i.services}
    seen = {s for i in instances for s in i.services}
    nodes = [Node(CLIENT, "client", "client", True)]
    for service in (*SERVICES, *sorted(seen - set(SERVICES))):
        nodes.append(Node(service, _LABELS.get(service, service), "service", service in running))
    for node_id, label, kind in _FIXED_NODES[1:]:
        healthy = bool(running & {"command", "relay", "saga"}) if node_id == STORE else bool(alive)
        nodes.append(Node(node_id, label, kind, healthy))

    counts = {edge: [0, 0.0] for edge in EDGES}
    for stat in type_stats:
        for source, target in _path(stat):
            tally = counts[(source, target, stat.topic)]
            tally[0] += stat.count
            tally[1] += stat.rate_per_minute
    edges = [Edge(s, t, topic, int(c), float(r)) for (s, t, topic), (c, r) in counts.items()]
    return nodes, edges


@dataclass(slots=True)
class _Seen:
    message: HeartbeatMessage
    at: float
    """When it arrived, on the topology's clock."""
    last_seen: datetime


class Topology:
    """The latest heartbeat of every instance, and the graph. With ``nc``, ``start``
    subscribes to every heartbeat; :meth:`observe` takes one directly (tests, or a
    caller with a subscription of its own)."""

    def __init__(
        self,
        buffer: MessageBuffer,
        nc: NATS | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        forget_after: float = FORGET_AFTER,
        max_instances: int = MAX_INSTANCES,
    ) -> None:
        self.buffer = buffer
        self._nc = nc
        self._clock = clock
        self._forget_after = forget_after
        self._max_instances = max_instances
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._sub: Subscription | None = None
        #: Heartbeats that did not parse (someone else's, or a newer format).
        self.rejected = 0

    async def start(self) -> None:
        if self._nc is None:
            raise RuntimeError("a Topology needs a NATS connection to start")
        self._sub = await self._nc.subscribe(ALL_HEARTBEATS, cb=self._on_heartbeat)
        await self._nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may already be gone
                logger.debug("heartbeat subscription not removed: {!r}", exc)

    async def _on_heartbeat(self, msg: Msg) -> None:
        self.observe(msg.data)

    def observe(self, data: bytes) -> HeartbeatMessage | None:
        """Record one heartbeat's body; None (and counted) if it is not one."""
        try:
            message = HeartbeatMessage.model_validate_json(data)
        except ValidationError:
            self.rejected += 1
            return None
        now = self._clock()
        seen = self._seen
        seen[message.instance] = _Seen(message, now, datetime.now(UTC))
        seen.move_to_end(message.instance)
        self._forget(now)
        while len(seen) > self._max_instances:  # at most one over: one in at a time
            seen.popitem(last=False)
        return message

    def _forget(self, now: float) -> None:
        """Drop instances silent for too long (the least recently seen come first)."""
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if now - oldest.at <= self._forget_after:
                break
            seen.popitem(last=False)

    def _healthy(self, seen: _Seen, now: float) -> bool:
        return seen.message.ready and now - seen.at < MISSED_BEATS * seen.message.interval

    def totals(self) -> list[TotalsReport]:
        """The totals of every instance still remembered, from its latest heartbeat: a
        process that stopped keeps its final counts in the sum, as Prometheus would
        until it forgets the series."""
        self._forget(self._clock())
        return [seen.message.totals for seen in self._seen.values()]

    def instances(self) -> list[Instance]:
        """Every instance heard from in the last :data:`FORGET_AFTER` seconds, health as
        of now, by service, host and pid."""
        now = self._clock()
        self._forget(now)
        found: list[Instance] = []
        for seen in self._seen.values():
            m = seen.message
            found.append(
                Instance(
                    instance=m.instance,
                    service=m.service,
                    services=m.services,
                    host=m.host,
                    pid=m.pid,
                    started_at=m.started_at,
                    last_seen=seen.last_seen,
                    healthy=self._healthy(seen, now),
                    ready=m.ready,
                    interval=m.interval,
                    runtime=m.runtime,
                )
            )
        found.sort(key=lambda i: (i.service, i.host, i.pid, i.instance))
        return found

    def graph(self) -> tuple[list[Node], list[Edge]]:
        return build_graph(self.buffer.type_stats(), self.instances())

    def projections(self) -> list[ProjectionInfo]:
        """Every projection each instance reports, by name and then service."""
        found: list[ProjectionInfo] = []
        for instance in self.instances():
            message = self._seen[instance.instance].message
            for p in message.projections:
                if not instance.healthy:
                    state = "stale"
                elif p.backlog:
                    state = "catching_up"
                else:
                    state = "live"
                found.append(
                    ProjectionInfo(
                        name=p.name,
                        position=p.position,
                        lag_seconds=p.lag_seconds,
                        backlog=p.backlog,
                        state=state,
                        service=instance.service,
                        instance=instance.instance,
                    )
                )
        found.sort(key=lambda p: (p.name, p.service, p.instance))
        return found


__all__ = [
    "EDGES",
    "SAGA_COMMANDS",
    "Edge",
    "Instance",
    "Node",
    "ProjectionInfo",
    "Topology",
    "build_graph",
]
