"""Exactly one active relay, saga driver and projector: leases, standbys, takeover."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from broker.connection import connect
from broker.lease import Singleton, holders
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from tests.conftest import events_in_stream, eventually, request, settings_for
from tests.integration.test_order_flow import stream_messages
from tests.integration.test_processes import ORDERMESH, env_for, ordermesh

WIDGET = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10}


class Recorder:
    """A component that records when it runs, in a timeline it may share with others."""

    def __init__(self, name: str = "", timeline: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.timeline = [] if timeline is None else timeline
        self.running = False
        self.starts = 0

    async def start(self) -> None:
        self.running = True
        self.starts += 1
        self.timeline.append((self.name, "start"))

    async def stop(self) -> None:
        if self.running:
            self.timeline.append((self.name, "stop"))
        self.running = False


def leader_gauge(role: str) -> float | None:
    return REGISTRY.get_sample_value("ordermesh_leader", {"role": role})


async def test_one_instance_leads_the_other_stands_by_and_takes_over(nc: NATS) -> None:
    first, second = Recorder(), Recorder()
    a = Singleton(nc, "relay", first, ttl=1.0)
    b = Singleton(nc, "relay", second, ttl=1.0)
    await a.start()
    async with asyncio.timeout(5):
        await a.wait_leading()
    await b.start()
    try:
        holder = (await holders(nc))["relay"]
        assert holder is not None and holder.instance == a.instance
        # b has tried (and failed) to take it several times by now: a renewal or three.
        await eventually(lambda: _renewed_after(nc, holder.renewed), timeout=5)
        assert first.running and not second.running and not b.leading
        assert leader_gauge("relay") == 1

        await a.stop()  # a clean stop hands over at once: the key is deleted
        async with asyncio.timeout(5):
            await b.wait_leading()
        assert second.running and not first.running and second.starts == 1
        holder = (await holders(nc))["relay"]
        assert holder is not None and holder.instance == b.instance
    finally:
        await b.stop()
        await a.stop()
    assert leader_gauge("relay") == 0


async def _renewed_after(nc: NATS, renewed: float) -> bool:
    holder = (await holders(nc))["relay"]
    return holder is not None and holder.renewed > renewed


async def test_a_deferring_instance_leaves_a_free_lease_to_the_one_meant_to_lead(
    nc: NATS,
) -> None:
    """``ordermesh up --replicas`` spreads the singletons: an instance not meant to lead
    a role leaves its free lease alone, becomes an ordinary standby once the one meant
    to lead took it, and takes over when that one goes."""
    early, meant = Recorder(), Recorder()
    a = Singleton(nc, "saga", early, ttl=1.0, defer=60.0)
    b = Singleton(nc, "saga", meant, ttl=1.0)
    await a.start()
    try:
        # Three more of a's tries (one per TTL/3) pass while the lease is free; had one
        # taken it, a would hold it still (renewing).
        tries = a.tries
        await eventually(lambda: _tried_again(a, tries + 2), timeout=5)
        assert (await holders(nc))["saga"] is None
        assert not a.leading and not early.running
        await b.start()
        async with asyncio.timeout(5):
            await b.wait_leading()
        tries = a.tries
        await eventually(lambda: _tried_again(a, tries), timeout=5)  # a saw b hold it
        await b.stop()  # long before a's 60 s: a is a standby now, and takes over
        async with asyncio.timeout(5):
            await a.wait_leading()
        assert early.running and early.starts == 1
    finally:
        await b.stop()
        await a.stop()


async def test_a_deferring_instance_takes_the_lease_when_nobody_came(nc: NATS) -> None:
    alone = Recorder()
    a = Singleton(nc, "projections", alone, ttl=1.0, defer=1.0)
    await a.start()
    try:
        assert not a.leading  # its first try, at start, left the lease alone
        async with asyncio.timeout(5):
            await a.wait_leading()
        assert alone.running
    finally:
        await a.stop()


async def _tried_again(singleton: Singleton, tries: int) -> bool:
    return singleton.tries > tries


async def test_a_holder_that_cannot_renew_steps_down_before_its_lease_expires(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """The lease's key is taken over only after it expired on the server; the holder, cut
    off, has stopped its component by then on its own clock."""
    cut = await connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=60)
    other = await connect(nats_server.url)
    timeline: list[tuple[str, str]] = []
    held, waiting = Recorder("held", timeline), Recorder("waiting", timeline)
    a = Singleton(cut, "saga", held, ttl=1.5)
    b = Singleton(other, "saga", waiting, ttl=1.5)
    try:
        await a.start()
        async with asyncio.timeout(5):
            await a.wait_leading()
        await b.start()
        # Cut a off: its server connection goes, and it reconnects only in 60 s.
        await nats_server.stop()
        await nats_server.start()
        async with asyncio.timeout(5):
            await a.wait_leading(False)
        assert not held.running
        async with asyncio.timeout(10):
            await b.wait_leading()
        assert waiting.running and not held.running
        # Never both at once: the cut-off holder stopped before the other started.
        assert timeline == [("held", "start"), ("held", "stop"), ("waiting", "start")]
    finally:
        await b.stop()
        await a.stop()
        await other.close()
        with contextlib.suppress(ConnectionError):  # it never got back to the server
            await cut.close()


async def test_an_app_runs_its_singletons_behind_leases(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    settings = settings_for(nats_server, tmp_path / "data")
    first = App(settings, ("command", "relay", "projections", "query"))
    second = App(settings, ("relay", "projections"))
    await first.start()
    await second.start()
    try:
        async with asyncio.timeout(10):
            await first.wait_leading()
        assert not any(s.leading for s in second.leases)
        assert (await request(nc, "commands.product.create", WIDGET))["ok"]
        await eventually(lambda: _events_at_least(nc, 1))
        await first.stop()
        async with asyncio.timeout(10):
            await second.wait_leading()
    finally:
        await second.stop()
        await first.stop()


async def _events_at_least(nc: NATS, n: int) -> bool:
    return await events_in_stream(nc) >= n


async def _status(nc_url: str, env: dict[str, str]) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        ORDERMESH,
        "status",
        "--json",
        "--listen",
        "2.5",
        env=env | {"ORDERMESH_NATS_URL": nc_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    status: dict[str, object] = json.loads(out)
    return status


async def test_kill_9_of_the_relay_process_hands_over_to_the_standby(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    """Two `ordermesh run relay` processes on one store: one publishes, the other stands
    by; kill -9 the one publishing and the other carries on, every event once, in order."""
    data = tmp_path / "data"
    env = env_for(data, ORDERMESH_NATS_URL=nats_server.url, ORDERMESH_LEASE_TTL="2")
    commands = App(settings_for(nats_server, data), ("command",))
    await commands.start()
    try:
        async with (
            ordermesh("run", "relay", env=env) as one,
            ordermesh("run", "relay", env=env) as two,
        ):
            assert (await request(nc, "commands.product.create", WIDGET))["ok"]
            await eventually(lambda: _events_at_least(nc, 1), timeout=30)
            # Both processes send heartbeats by now, standby included.
            status = await eventually(lambda: _both_seen(nats_server.url, env), timeout=30)
            relay = status["roles"]["relay"]  # type: ignore[index]
            leading_pid = int(relay["leader"]["process"].rsplit(":", 1)[1])
            assert relay["standbys"] == [
                f"{socket.gethostname()}:{({one.pid, two.pid} - {leading_pid}).pop()}"
            ]
            leader, standby = (one, two) if one.pid == leading_pid else (two, one)

            for _ in range(20):
                body = {"product_id": "p-1", "quantity": 1}
                assert (await request(nc, "commands.product.restock", body))["ok"]
            await eventually(lambda: _events_at_least(nc, 21), timeout=30)
            leader.kill()
            await leader.wait()
            killed = time.monotonic()
            for _ in range(20):
                body = {"product_id": "p-1", "quantity": 1}
                assert (await request(nc, "commands.product.restock", body))["ok"]
            await eventually(lambda: _events_at_least(nc, 41), timeout=30)
            took_over = time.monotonic() - killed
            assert standby.returncode is None
            assert took_over < 15, took_over  # TTL 2 s, renewals every 0.67 s
    finally:
        await commands.stop()
    assert commands.store is None
    msgs = await stream_messages(nc)
    positions = [int(m.headers["ce-position"]) for m in msgs]
    assert positions == list(range(1, 42))


async def _both_seen(url: str, env: dict[str, str]) -> dict[str, object] | None:
    status = await _status(url, env)
    relay = status["roles"]["relay"]  # type: ignore[index]
    if relay["leader"] is None or len(relay["standbys"]) != 1:
        return None
    return status
