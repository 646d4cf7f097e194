"""The services split over processes, as ``ordermesh run`` deployments and replicas run
them: what a second command process adds, what the saga does end to end when every
service is a process of its own, and how long a command takes to reach the read models
when the command service, the relay and the projector are three processes.

Each process is a real ``ordermesh run <services>`` (:class:`ordermesh.child.ChildService`)
on the run's embedded nats-server and one data directory, tracing off as in the
in-process cases. Their CPU time is read off ``/proc`` around each measurement: on a
2-core machine it says where the cores went, and per order it is what a single-active
saga or projector can carry before a second one would be needed (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic_core import from_json

from broker.projector import Projector
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from ordermesh.bench.measure import Result, closed_loop, middle
from ordermesh.bench.system import (
    ApplyClock,
    call,
    command_rate,
    cpu_seconds,
    offered_load,
    order_body,
    paired,
    seed_products,
)
from ordermesh.child import ChildService, ServicesProcess
from ordermesh.config import Settings

#: Where an order ends: the saga confirms it, or cancels it.
ENDINGS = ("events.order.confirmed", "events.order.cancelled")


def service_process(services: Sequence[str], nats_url: str, data_dir: Path) -> ChildService:
    """``ordermesh run <services>`` on ``nats_url`` and ``data_dir`` as ``ordermesh up
    --replicas`` starts it, with the embedded store and tracing off whatever the
    environment says, as in the in-process cases."""
    process = ServicesProcess(services, nats_url, Settings(nats_url=nats_url, data_dir=data_dir))
    process.env |= {
        "ORDERMESH_EVENTSTORE_URL": f"sqlite:///{(data_dir / 'events.db').resolve()}",
        "OTEL_SDK_DISABLED": "true",
        "LOG_LEVEL": "WARNING",
    }
    return process


@dataclass
class Fleet:
    """Processes on one server and data directory, started together and stopped
    together, named for the report."""

    server: EmbeddedNatsServer
    data_dir: Path
    processes: dict[str, ChildService] = field(default_factory=dict)

    async def start(self, layout: Mapping[str, Sequence[str]]) -> None:
        url = self.server.url
        started = {name: service_process(s, url, self.data_dir) for name, s in layout.items()}
        self.processes |= started
        await asyncio.gather(*(p.start() for p in started.values()))

    async def stop(self, *names: str) -> None:
        chosen = names or tuple(self.processes)
        await asyncio.gather(*(self.processes.pop(n).stop() for n in chosen))

    def cpu(self) -> dict[str, float]:
        """CPU seconds each process has used so far, this one (the load) and
        nats-server included."""
        seconds = {"load": time.process_time()}
        pids = {"nats-server": self.server.pid} | {n: p.pid for n, p in self.processes.items()}
        for name, pid in pids.items():
            used = cpu_seconds(pid) if pid is not None else None
            if used is not None:
                seconds[name] = used
        return seconds


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after if name in before}


async def command_scaling(
    server: EmbeddedNatsServer,
    nc: NATS,
    data_dir: Path,
    *,
    products: int,
    concurrency: int,
    duration: float,
    rounds: int,
) -> Result:
    """``order.place`` with two command processes over one, in alternated rounds.

    The first process runs throughout; the second starts before each of its rounds and
    stops after, so both sides of a pair run on a machine in the same state. One core
    per command process is the ceiling (twice the rate); the load generator and nats-server share
    the same two cores, which the rounds' CPU split shows."""
    fleet = Fleet(server, data_dir)
    await fleet.start({"command-1": ("command",)})
    pairs: list[tuple[Result, Result]] = []
    cpu: dict[str, dict[str, float]] = {}

    async def measure(processes: int) -> Result:
        if processes == 2:
            await fleet.start({"command-2": ("command",)})
        before = fleet.cpu()
        try:
            result = await command_rate(
                nc, "order.place", ids, concurrency=concurrency, duration=duration
            )
            spent = cpu_spent(before, fleet.cpu())
        finally:
            if processes == 2:
                await fleet.stop("command-2")
        cpu[f"x{processes}"] = {k: round(v / result.seconds, 2) for k, v in spent.items()}
        return result

    try:
        ids = await seed_products(nc, products)
        for i in range(rounds):
            if i % 2 == 0:
                one = await measure(1)
            two = await measure(2)
            if i % 2 == 1:
                one = await measure(1)
            pairs.append((one, two))
    finally:
        await fleet.stop()
    result = paired(pairs)
    result.name = f"processes.command.order.place.c{concurrency}.x2"
    result.group = "processes"
    result.baseline = f"processes.command.order.place.c{concurrency}.x1"
    result.target = None
    # Cores used per second of load in the last round, by process: where the time went.
    result.extra["cores_busy"] = cpu
    return result


def x1_of(x2: Result) -> Result:
    """The one-process side of :func:`command_scaling` (its pairs' baseline rounds), as a
    case of its own: the median round."""
    assert x2.baseline is not None
    rounds = list(x2.extra["raw_rounds"])
    return Result(
        x2.baseline, "processes", "rate", middle(rounds), "cmd/s", extra={"rounds": rounds}
    )


class Endings:
    """Counts this run's orders as they end, from the events the relay publishes."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ended: set[str] = set()
        self._enough = asyncio.Event()
        self._wanted = 0

    async def seen(self, msg: Msg) -> None:
        order_id = str(from_json(msg.data).get("order_id", ""))
        if order_id.startswith(self.prefix):
            self.ended.add(order_id)
            if self._wanted and len(self.ended) >= self._wanted:
                self._enough.set()

    async def wait(self, count: int, timeout: float) -> None:
        self._wanted = count
        if len(self.ended) >= count:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._enough.wait()


#: One process per service, as an ``ordermesh run`` deployment over several hosts has.
SPLIT = {
    "command": ("command",),
    "relay": ("relay",),
    "projections": ("projections",),
    "query": ("query",),
    "saga": ("saga",),
    "partners": ("partners",),
}


async def saga_split(
    server: EmbeddedNatsServer,
    nc: NATS,
    data_dir: Path,
    *,
    orders: int,
    products: int,
    concurrency: int = 64,
) -> Result:
    """Orders/s from ``order.place`` to the order's end with every service a process of
    its own, and each process's CPU per order: what one saga process (single-active
    behind its lease) and one projector spend on an order."""
    fleet = Fleet(server, data_dir)
    await fleet.start(SPLIT)
    run = f"split-{uuid.uuid4().hex[:6]}"
    endings = Endings(run)
    subscriptions = [await nc.subscribe(s, cb=endings.seen) for s in ENDINGS]
    try:
        ids = await seed_products(nc, products)
        before = fleet.cpu()
        start = time.perf_counter()
        placed, _ = await closed_loop(
            lambda i: call(nc, "commands.order.place", order_body(f"{run}-{i}", ids[i % len(ids)])),
            concurrency=concurrency,
            duration=120.0,
            max_ops=orders,
        )
        await endings.wait(placed, timeout=120.0)
        elapsed = time.perf_counter() - start
        spent = cpu_spent(before, fleet.cpu())
    finally:
        for sub in subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await fleet.stop()
    ended = len(endings.ended)
    per_order = {k: round(1000 * v / ended, 3) for k, v in spent.items()} if ended else {}
    return Result(
        f"processes.saga.confirmed_per_second.c{concurrency}",
        "processes",
        "rate",
        ended / elapsed,
        "orders/s",
        ops=ended,
        seconds=elapsed,
        baseline=f"saga.confirmed_per_second.c{concurrency}",
        extra={
            "placed": placed,
            "ended": ended,
            "cpu_ms_per_order": per_order,
            "cores_busy": {k: round(v / elapsed, 2) for k, v in spent.items()},
        },
    )


async def read_model_split(
    server: EmbeddedNatsServer,
    nc: NATS,
    data_dir: Path,
    *,
    rate: float,
    duration: float,
    products: int,
) -> Result:
    """Command → read-model latency at ``rate`` commands/s with the command service, the
    relay and the projector in three processes (the projector in this one, so that its
    commits are timed where the commands are sent): each event crosses the store from
    one process to the next, woken by the append notice, not found by a poll."""
    fleet = Fleet(server, data_dir)
    await fleet.start({"command": ("command",), "relay": ("relay",)})
    app = App(
        Settings(nats_url=server.url, data_dir=data_dir, metrics_port=0),
        ("projections",),
    )
    await app.start()
    try:
        await app.wait_leading()
        ids = await seed_products(nc, products)
        clock = ApplyClock(app.component(Projector))
        # The first orders warm every process's caches; the measured ones come after.
        await offered_load(nc, clock, ids, rate=rate, duration=min(1.0, duration))
        before = fleet.cpu()
        outcome = await offered_load(nc, clock, ids, rate=rate, duration=duration)
        spent = cpu_spent(before, fleet.cpu())
    finally:
        await app.stop()
        await fleet.stop()
    outcome["cores_busy"] = {k: round(v / duration, 2) for k, v in spent.items()}
    return Result(
        f"processes.read_model.latency_at_{rate:g}",
        "processes",
        "latency",
        outcome["p99_ms"],
        "ms p99",
        ops=outcome["applied"],
        seconds=duration,
        baseline=f"read_model.latency_at_{rate:g}",
        extra=outcome,
    )
