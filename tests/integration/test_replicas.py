"""``ordermesh up --replicas N``, the real binary: N processes share the work, and losing
one of them loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client.parser import text_string_to_metric_families

from broker.connection import connect
from infra.eventstore.sqlite import SQLiteEventStore
from infra.nats_server import free_port
from ordermesh.cli.serve import lead_layout, metrics_ports
from tests.conftest import eventually, request
from tests.integration.test_cli import run_cli
from tests.integration.test_processes import (
    env_for,
    gone,
    http_status,
    ordermesh,
    read_banner,
)

#: ``order.place`` commands a process handled, as :func:`scrape` names the series.
PLACED = "ordermesh_command_dispatched_total{command_type=order.place}"
TERMINAL = ("confirmed", "cancelled")
CORE = "command, relay, projections, query, saga"
#: A banner row of the process table: pid, what it runs, its /metrics, its leases.
ROW = re.compile(r"^ {4}(\d+)  +(.+?)  +(http://\S+/metrics)(?:  +(.+))?$")


@dataclass(frozen=True)
class Row:
    pid: int
    runs: str
    metrics: str
    leases: str


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    banner: str
    rows: list[Row]
    nats_url: str
    data_dir: Path

    def only(self, runs: str) -> list[Row]:
        return [row for row in self.rows if row.runs == runs]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive free ports: ``up --replicas N`` lays its
    processes' /metrics out from ORDERMESH_METRICS_PORT upwards."""
    for _ in range(attempts):
        base = free_port()
        if base + count < 65536 and all(_free(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports in {attempts} tries")


@contextlib.asynccontextmanager
async def up(tmp_path: Path, replicas: int) -> AsyncIterator[Running]:
    """``ordermesh up --replicas N`` on free ports, handed over once its banner is out."""
    port = free_port()
    data = tmp_path / "data"
    env = env_for(
        data,
        ORDERMESH_NATS_PORT=str(port),
        ORDERMESH_NATS_MONITOR_PORT=str(free_port()),
        ORDERMESH_METRICS_PORT=str(free_ports(2 * replicas + 1)),
    )
    async with ordermesh("up", "--replicas", str(replicas), env=env) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        # Read what every process logs (the children share this stderr): a full pipe
        # would stall them all.
        drain = asyncio.create_task(proc.stderr.read())
        try:
            banner = await read_banner(proc, timeout=45)
            rows = [
                Row(int(m[1]), m[2], m[3], m[4] or "")
                for m in (ROW.match(line) for line in banner.splitlines())
                if m
            ]
            yield Running(proc, banner, rows, f"nats://127.0.0.1:{port}", data)
        finally:
            if proc.returncode is None:
                # A failed test stops it as Ctrl-C would, so that its children's logs
                # end as they do in use.
                proc.send_signal(signal.SIGINT)
                try:
                    async with asyncio.timeout(30):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
            with contextlib.suppress(TimeoutError):  # the children close it as they end
                async with asyncio.timeout(15):
                    await drain


def scrape(url: str) -> dict[str, float]:
    """Each sample of a ``/metrics`` page, summed over its labels but ``command_type``
    and ``role`` (``name{command_type=…}``), which the tests tell apart."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            for label in ("command_type", "role"):
                if label in sample.labels:
                    key += f"{{{label}={sample.labels[label]}}}"
            totals[key] += sample.value
    return dict(totals)


async def create_stock(nc: NATS, stock: int) -> None:
    body = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": stock}
    reply = await request(nc, "commands.product.create", body)
    assert reply["ok"], reply


async def place(nc: NATS, order_id: str, *, attempts: int = 4) -> int:
    """Place an order as a careful client does: a request left unanswered (its replica
    died with it) is sent again with the same ``ce-id``, which the store's idempotency
    turns into the first result rather than a second order. The number of sends it
    took to be acknowledged; 0 if it never was."""
    body = {
        "order_id": order_id,
        "customer_id": "c-1",
        "items": [{"product_id": "p-1", "quantity": 1}],
        "payment_method": "card",
    }
    headers = {"ce-id": f"place-{order_id}"}
    for attempt in range(1, attempts + 1):
        try:
            reply = await request(nc, "commands.order.place", body, headers=headers, timeout=5)
        except (NoRespondersError, NatsTimeoutError, TimeoutError):
            continue
        assert reply["ok"], reply
        return attempt
    return 0


async def load(nc: NATS, order_ids: list[str], in_flight: int) -> dict[str, int]:
    """Place every order, ``in_flight`` at a time: ``{order id: sends}`` of those
    acknowledged."""
    slots = asyncio.Semaphore(in_flight)

    async def one(order_id: str) -> int:
        async with slots:
            return await place(nc, order_id)

    sends = await asyncio.gather(*(one(o) for o in order_ids))
    return {o: n for o, n in zip(order_ids, sends, strict=True) if n}


async def ended(nc: NATS, order_ids: list[str], timeout: float) -> dict[str, str]:
    """Each order's final status (``confirmed`` or ``cancelled``), once its saga ended."""
    status: dict[str, str] = {}
    slots = asyncio.Semaphore(32)

    async def check(order_id: str) -> None:
        async with slots:
            reply = await request(nc, "queries.order.get", {"order_id": order_id})
        order = reply["data"] if reply["ok"] else None
        if (
            order
            and order["saga_status"] in ("completed", "failed")
            and order["status"] in TERMINAL
        ):
            status[order_id] = order["status"]

    async def all_ended() -> bool:
        await asyncio.gather(*(check(o) for o in order_ids if o not in status))
        return len(status) == len(order_ids)

    await eventually(all_ended, timeout=timeout, interval=0.2)
    return status


async def stop(running: Running, children: list[int]) -> None:
    """SIGINT: ``up`` exits 0 and no process it started is left."""
    running.proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        assert await running.proc.wait() == 0

    async def all_gone() -> bool:
        return all(gone(pid) for pid in children)

    await eventually(all_gone, timeout=10)


@pytest.mark.timeout(120)
async def test_replicas_share_commands_and_partner_requests(tmp_path: Path) -> None:
    async with up(tmp_path, replicas=2) as running:
        text = running.banner
        assert "monitor         http://127.0.0.1:" in text and "stop: Ctrl-C" in text
        assert "partners        payment-gateway, shipping-carrier (2 processes)" in text
        core, partners = running.only(CORE), running.only("partners")
        assert core[0].pid == running.proc.pid
        assert len(core) == 2 and len(partners) == 2, text
        assert len(running.only("api (monitor)")) == 1, text
        # The singletons are spread: the saga, the costliest, on a process of its own.
        assert core[0].leases == "leads relay, projections; stands by for saga", text
        assert core[1].leases == "leads saga; stands by for relay, projections", text
        assert len({row.pid for row in running.rows}) == 5
        assert len({row.metrics for row in running.rows}) == 5
        # What the banner says is what the processes say.
        first, second = [await asyncio.to_thread(scrape, row.metrics) for row in core]
        for role, leads in (("relay", first), ("projections", first), ("saga", second)):
            for metrics in (first, second):
                expected = 1 if metrics is leads else 0
                assert metrics[f"ordermesh_leader{{role={role}}}"] == expected, role
        for row in running.rows:
            ready = row.metrics.removesuffix("metrics") + "readyz"
            assert await asyncio.to_thread(http_status, ready) == 200, row

        nc = await connect(running.nats_url)
        try:
            await create_stock(nc, 1000)
            orders = [f"o-{i}" for i in range(200)]
            assert list(await load(nc, orders, in_flight=48)) == orders
            outcomes = Counter((await ended(nc, orders, timeout=60)).values())
            assert outcomes == {"confirmed": 200}, outcomes
        finally:
            await nc.close()

        served = [(await asyncio.to_thread(scrape, row.metrics)).get(PLACED, 0) for row in core]
        assert all(n > 0 for n in served) and sum(served) >= 200, served
        answered = [
            (await asyncio.to_thread(scrape, row.metrics)).get(
                "faststream_received_messages_total", 0
            )
            for row in partners
        ]
        # Every confirmed order was paid and shipped: two partner requests each at least.
        assert all(n > 0 for n in answered) and sum(answered) >= 400, answered
        await stop(running, [row.pid for row in running.rows[1:]])


@pytest.mark.timeout(150)
async def test_nothing_is_lost_when_a_replica_dies(tmp_path: Path) -> None:
    """The replica killed leads the saga: the ``up`` process, its standby, takes over
    mid-load, and the sagas it left half-way end all the same."""
    async with up(tmp_path, replicas=2) as running:
        first, replica = running.only(CORE)
        assert replica.leases.startswith("leads saga"), running.banner
        nc = await connect(running.nats_url)
        try:
            await create_stock(nc, 1000)
            orders = [f"o-{i}" for i in range(300)]
            placing = asyncio.create_task(load(nc, orders, in_flight=48))

            async def some_served() -> bool:
                served = await asyncio.to_thread(scrape, replica.metrics)
                return served.get(PLACED, 0) >= 30

            await eventually(some_served, timeout=30, interval=0.05)
            assert not placing.done()  # killed mid-load
            os.kill(replica.pid, signal.SIGKILL)
            sends = await placing
            # The client resent what the dead replica left unanswered (it had some in
            # flight), with the same ce-id: all were acknowledged in the end.
            assert list(sends) == orders, len(sends)
            assert max(sends.values()) > 1
            # Every acknowledged order ends, confirmed or cancelled.
            await ended(nc, orders, timeout=60)

            async def saga_taken_over() -> bool:
                metrics = await asyncio.to_thread(scrape, first.metrics)
                return metrics.get("ordermesh_leader{role=saga}") == 1

            await eventually(saga_taken_over, timeout=10)

            # The others keep serving new commands, to the end of their sagas.
            after = [f"after-{i}" for i in range(20)]
            assert list(await load(nc, after, in_flight=20)) == after
            assert Counter((await ended(nc, after, timeout=30)).values()) == {"confirmed": 20}
        finally:
            await nc.close()

        async def replica_gone() -> bool:  # reaped by its parent, ordermesh up
            return gone(replica.pid)

        await eventually(replica_gone, timeout=10)
        await stop(running, [row.pid for row in running.rows[1:] if row.pid != replica.pid])

    store = await SQLiteEventStore.open(running.data_dir / "events.db")
    try:
        stored = await store.read_all(0, 1_000_000)
    finally:
        await store.close()
    placed = Counter(e.stream for e in stored if e.type == "order.placed")
    # Every order once, however many times its request was sent.
    assert placed == Counter(f"order-{o}" for o in orders + after), placed.most_common(3)
    confirmed = Counter(e.stream for e in stored if e.type == "order.confirmed")
    assert max(confirmed.values()) == 1


@pytest.mark.parametrize(
    ("args", "metrics_port", "message"),
    [
        (["--replicas", "0"], "0", "greater than or equal to 1"),
        (["--replicas", "3"], "65530", "ports 65530..65536: past 65535"),
    ],
)
async def test_up_refuses_a_bad_replica_count(
    tmp_path: Path, args: list[str], metrics_port: str, message: str
) -> None:
    env = env_for(
        tmp_path / "data",
        ORDERMESH_NATS_PORT=str(free_port()),
        ORDERMESH_NATS_MONITOR_PORT=str(free_port()),
        ORDERMESH_METRICS_PORT=metrics_port,
        COLUMNS="400",  # typer's error box on one line
    )
    code, out, err = await run_cli("up", *args, env=env)
    assert code == 2, (out, err)
    assert "--replicas" in err and message in err, err
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_lead_layout_spreads_the_singletons() -> None:
    assert lead_layout(1) == {1: ("relay", "saga", "projections")}
    assert lead_layout(2) == {1: ("relay", "projections"), 2: ("saga",)}
    assert lead_layout(3) == {1: ("relay",), 2: ("saga",), 3: ("projections",)}
    assert lead_layout(4)[4] == ()  # the fourth stands by for all three


def test_metrics_ports_layout() -> None:
    assert metrics_ports(9464, 1) == {"core-1": 9464, "monitor": 9465, "partners-1": 9466}
    assert metrics_ports(9464, 3) == {
        "core-1": 9464,
        "monitor": 9465,
        "partners-1": 9466,
        "core-2": 9467,
        "partners-2": 9468,
        "core-3": 9469,
        "partners-3": 9470,
    }
