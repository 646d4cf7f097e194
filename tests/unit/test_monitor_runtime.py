"""The runtime snapshot a heartbeat carries, and the heartbeat's loop (over a fake
connection: the real one is in tests/integration/test_broadcaster.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import cast

from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError

from broker.heartbeat import Heartbeat, HeartbeatMessage
from ordermesh.monitor.buffer import MessageBuffer
from ordermesh.monitor.topology import Topology
from telemetry import runtime
from telemetry.metrics import (
    event_loop_lag,
    projection_backlog,
    projection_lag,
    projection_position,
)
from tests.conftest import eventually


async def idle(gate: asyncio.Event) -> None:
    await gate.wait()


async def test_snapshot_of_this_process() -> None:
    gate = asyncio.Event()
    tasks = [asyncio.create_task(idle(gate)) for _ in range(3)]
    try:
        snap = runtime.snapshot()
    finally:
        gate.set()
        await asyncio.gather(*tasks)
    assert snap["resident_memory_bytes"] > 1_000_000
    assert snap["cpu_seconds"] > 0
    assert snap["open_fds"] > 0
    assert snap["tasks"] >= 4  # the three and this test
    assert len(snap["gc_collections"]) == 3
    assert {"name": "idle", "count": 3} in snap["top_coroutines"]
    assert snap["top_coroutines"][0]["count"] >= 3  # the most frequent first
    assert len(snap["top_coroutines"]) <= runtime.TOP_COROUTINES
    assert runtime.snapshot(loop_lag=0.5)["event_loop_lag_seconds"] == 0.5


def test_the_loop_lag_is_the_gauge_metrics_exports() -> None:
    before = runtime.read_loop_lag()
    try:
        event_loop_lag.set(0.125)
        assert runtime.snapshot()["event_loop_lag_seconds"] == 0.125
    finally:
        event_loop_lag.set(before)
    assert runtime.snapshot()["tasks"] == 0  # no loop running here


def test_projections_come_from_the_projector_gauges() -> None:
    try:
        projection_position.labels("zz_monitor_a").set(12)
        projection_lag.labels("zz_monitor_a").set(0.5)
        projection_position.labels("zz_monitor_b").set(9)
        projection_backlog.labels("zz_monitor_a+zz_monitor_b").set(4)
        found = {p["name"]: p for p in runtime.projections()}
        assert found["zz_monitor_a"] == {
            "name": "zz_monitor_a",
            "position": 12,
            "lag_seconds": 0.5,
            "backlog": 4,
        }
        assert found["zz_monitor_b"]["lag_seconds"] is None
        assert found["zz_monitor_b"]["backlog"] == 4
    finally:
        projection_position.remove("zz_monitor_a")
        projection_position.remove("zz_monitor_b")
        projection_lag.remove("zz_monitor_a")
        projection_backlog.remove("zz_monitor_a+zz_monitor_b")


class FakeNats:
    """Records publishes; fails the first ``failures`` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionClosedError()
        self.published.append((subject, payload))


def published(fake: FakeNats, at_least: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(fake.published) >= at_least

    return check


async def test_a_heartbeat_at_start_then_every_interval_then_a_last_one() -> None:
    fake = FakeNats()
    beat = Heartbeat(cast(NATS, fake), "ordermesh-command", ["command"], interval=0.01)
    await beat.start()
    assert len(fake.published) == 1  # at once, not after the first interval
    await eventually(published(fake, 3))
    await beat.stop()
    subjects = {subject for subject, _ in fake.published}
    assert subjects == {"ordermesh.heartbeat.ordermesh-command"}
    bodies = [json.loads(data) for _, data in fake.published]
    assert all(b["ready"] for b in bodies[:-1]) and bodies[-1]["ready"] is False
    assert {b["instance"] for b in bodies} == {beat.instance}
    first = bodies[0]
    assert first["service"] == "ordermesh-command" and first["services"] == ["command"]
    assert first["interval"] == 0.01 and first["pid"] > 0 and first["host"]
    assert set(first["runtime"]) == set(runtime.RuntimeSnapshot.__annotations__)


async def test_the_heartbeat_survives_failed_publishes() -> None:
    fake = FakeNats(failures=3)
    ready = [False]
    beat = Heartbeat(cast(NATS, fake), "s", ["query"], interval=0.01, ready=lambda: ready[0])
    await beat.start()  # its first heartbeat fails: start does not
    ready[0] = True
    await eventually(published(fake, 2))
    await beat.stop()
    assert json.loads(fake.published[0][1])["ready"] is True


def test_what_a_heartbeat_says_a_topology_understands() -> None:
    beat = Heartbeat(cast(NATS, FakeNats()), "ordermesh", ["command", "query"], interval=2.0)
    message = beat.message()
    data = message.model_dump_json().encode()
    topology = Topology(MessageBuffer())
    assert topology.observe(data) == HeartbeatMessage.model_validate_json(data)
    (seen,) = topology.instances()
    assert seen.instance == beat.instance and seen.healthy
    assert seen.services == ("command", "query")
    assert seen.runtime.resident_memory_bytes > 0
