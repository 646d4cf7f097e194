"""Crashes between append, relay and projection lose nothing and apply nothing twice."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from broker.connection import connect
from broker.projector import Projector
from broker.relay import Relay
from domain.event_store import RecordedEvent
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from projections import ProductProjection
from tests.conftest import events_in_stream, eventually, request, settings_for
from tests.integration.test_order_flow import stream_messages

WIDGET = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10}


async def assert_events_match_store(app: App, nc: NATS) -> None:
    """EVENTS holds every stored event exactly once, in store order."""
    assert app.store is not None
    stored = await app.store.read_all(0, 100_000)
    msgs = await stream_messages(nc)
    assert [m.headers["ce-id"] for m in msgs] == [str(e.id) for e in stored]
    assert [int(m.headers["ce-position"]) for m in msgs] == [e.position for e in stored]


async def product_view(nc: NATS) -> dict[str, Any]:
    reply = await request(nc, "queries.product.get", {"product_id": "p-1"})
    assert reply["ok"], reply
    data: dict[str, Any] = reply["data"]
    return data


async def test_relay_fault_after_ack_recovers_exactly_once(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    # Commands are stored while no relay runs: the state right after "append, then crash".
    app = App(settings_for(nats_server, tmp_path), ("command", "projections", "query"))
    await app.start()
    try:
        await request(nc, "commands.product.create", WIDGET)
        for _ in range(20):
            await request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": 1})
        assert await events_in_stream(nc) == 0

        crashes: list[int] = []

        def crash_once(event: RecordedEvent) -> None:
            if event.revision == 7 and not crashes:
                crashes.append(event.position)
                raise RuntimeError("simulated relay crash mid-stream")

        assert app.store is not None
        relay = Relay(app.nc, app.store, on_acked=crash_once)  # type: ignore[arg-type]
        await relay.start()
        try:
            await eventually(lambda: _relayed(nc, 21), timeout=15)
        finally:
            await relay.stop()
        assert crashes, "the fault hook never fired"
        await assert_events_match_store(app, nc)

        async def projected() -> bool:
            view = await product_view(nc)
            return bool(view["stock"] == 30)

        await eventually(projected)
        view = await product_view(nc)
        assert view["version"] == 21

        # A relay that forgot its checkpoint republishes everything: JetStream drops it all.
        class Amnesiac(Relay):
            async def _resume_point(self) -> tuple[int, int]:
                _, last_seq = await super()._resume_point()
                return 0, last_seq

        amnesiac = Amnesiac(app.nc, app.store)  # type: ignore[arg-type]
        await amnesiac.start()
        try:
            await eventually(lambda: _acked(amnesiac, 21))
        finally:
            await amnesiac.stop()
        assert amnesiac.duplicates == 21 and amnesiac.published == 0
        await assert_events_match_store(app, nc)
    finally:
        await app.stop()


async def _relayed(nc: NATS, n: int) -> bool:
    return await events_in_stream(nc) >= n


async def _acked(relay: Relay, n: int) -> bool:
    return relay.published + relay.duplicates >= n


async def test_projector_crash_after_commit_applies_once(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    app = App(settings_for(nats_server, tmp_path), ("command", "relay", "query"))
    await app.start()
    try:
        await request(nc, "commands.product.create", WIDGET)
        for _ in range(10):
            await request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": 2})
        await eventually(lambda: _relayed(nc, 11))

        batches: list[list[int]] = []

        def crash_after_commit(batch: list[RecordedEvent]) -> None:
            batches.append([e.position for e in batch])
            if len(batches) == 1:
                raise RuntimeError("simulated crash after commit")

        assert app.read_models is not None
        projector = Projector(
            app.nc,  # type: ignore[arg-type]
            app.read_models,
            [ProductProjection()],
            batch=4,
            on_commit=crash_after_commit,
        )
        await projector.start()
        try:

            async def caught_up() -> bool:
                return (await projector.checkpoint()).sequence == 11

            await eventually(caught_up, timeout=15)
        finally:
            await projector.stop()
        assert projector.restarts == 1, "the fault was not exercised"
        # Resumed right after the committed batch: nothing was delivered twice.
        delivered = [p for batch in batches for p in batch]
        assert len(delivered) == len(set(delivered)) == 11
        view = await product_view(nc)
        assert view["stock"] == 30
        assert view["version"] == 11
        assert projector.applied == 11
    finally:
        await app.stop()


async def test_replayed_events_are_skipped_by_position(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    """A checkpoint that lost its sequence re-reads EVENTS and applies nothing twice."""
    app = App(settings_for(nats_server, tmp_path), ("command", "relay", "projections", "query"))
    await app.start()
    try:
        await request(nc, "commands.product.create", WIDGET)
        for _ in range(5):
            await request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": 1})

        async def projected() -> bool:
            return bool((await product_view(nc))["version"] == 6)

        await eventually(projected)
        assert app.read_models is not None
        await app.read_models.run(
            lambda db: db.execute("UPDATE projection_checkpoints SET sequence = 0")
        )
        replayer = Projector(app.nc, app.read_models, [ProductProjection()])  # type: ignore[arg-type]
        await replayer.start()
        try:

            async def reread() -> bool:
                return (await replayer.checkpoint()).sequence == 6

            await eventually(reread)
        finally:
            await replayer.stop()
        assert replayer.applied == 0
        view = await product_view(nc)
        assert (view["stock"], view["version"]) == (15, 6)
    finally:
        await app.stop()


async def test_deleted_events_stream_is_republished_from_the_store(app: App, nc: NATS) -> None:
    await request(nc, "commands.product.create", WIDGET)
    await request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": 1})
    await eventually(lambda: _relayed(nc, 2))
    await nc.jetstream().delete_stream("EVENTS")
    # The relay notices on its next publish, recreates EVENTS and starts over from position 0.
    await request(nc, "commands.product.restock", {"product_id": "p-1", "quantity": 1})
    await eventually(lambda: _relayed(nc, 3), timeout=20)
    await assert_events_match_store(app, nc)

    async def projected() -> bool:
        return bool((await product_view(nc))["stock"] == 12)

    # The projectors resubscribe to the new EVENTS and skip what they had applied.
    await eventually(projected, timeout=20)
    assert (await product_view(nc))["version"] == 3


async def test_a_purged_events_stream_is_refilled_without_walking_its_old_sequences(
    app: App, nc: NATS
) -> None:
    for i in range(3):
        body = {"product_id": f"p-{i}", "name": "W", "price": "1.00"}
        assert (await request(nc, "commands.product.create", body))["ok"]

    async def three() -> bool:
        return await events_in_stream(nc) == 3

    await eventually(three)
    relay = app.component(Relay)
    js = nc.jetstream()
    await js.purge_stream("EVENTS")
    fetched: list[int] = []
    real_get_msg = relay._js.get_msg

    async def counting_get_msg(stream: str, seq: int, **kwargs: Any) -> Any:
        fetched.append(seq)
        return await real_get_msg(stream, seq, **kwargs)

    relay._js.get_msg = counting_get_msg  # type: ignore[method-assign]
    # Empty after the purge, though its sequences go on: nothing is in it, so nothing
    # was relayed, and no purged sequence is fetched one by one to find that out.
    assert await relay.checkpoint() == 0
    assert fetched == []


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_projections_ride_out_a_server_restart(tmp_path: Path, how: str) -> None:
    """A projector's consumer lives in the server's memory. Stopped, the server says so
    ("409 Server Shutdown"); killed, it says nothing and the feed hears no heartbeat.
    Either way the feed is reopened from the read model's checkpoint and the view catches
    up."""
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    app = App(settings_for(server, tmp_path), ("command", "relay", "projections", "query"))
    await app.start()
    client = await connect(server.url)
    try:
        assert (await request(client, "commands.product.create", WIDGET))["ok"]

        async def projected(stock: int, version: int) -> bool:
            try:
                view = await product_view(client)
            except Exception:  # not projected yet, or the server is away
                return False
            return (view["stock"], view["version"]) == (stock, version)

        await eventually(lambda: projected(10, 1))
        if how == "killed":
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
        await server.stop()
        server = EmbeddedNatsServer(tmp_path / "nats", port=server.port)
        await server.start()
        # One restock, resent under the same id until the reconnected service answers.
        restock = {"product_id": "p-1", "quantity": 5}
        resend = {"ce-id": "restock-after-restart"}

        async def restocked() -> bool:
            try:
                reply = await request(
                    client, "commands.product.restock", restock, headers=resend, timeout=2
                )
            except Exception:
                return False
            return bool(reply["ok"])

        await eventually(restocked, timeout=30)

        await eventually(lambda: projected(15, 2), timeout=30)
        projector = app.component(Projector)
        assert projector.restarts >= 1, "the feed was never lost, so never reopened"
    finally:
        await client.close()
        await app.stop()
        await server.stop()


async def test_a_tail_the_server_lost_is_published_again(tmp_path: Path) -> None:
    """JetStream acknowledges before it syncs, so a server killed with -9 can come back
    without messages it acknowledged. Simulated exactly: the server's store is put back
    as it was before the last five events. The relay, idle by then, notices (EVENTS ends
    before what was acknowledged) and publishes the lost tail again, in store order."""
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    app = App(settings_for(server, tmp_path), ("command", "relay"))
    await app.start()
    client = await connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    store_dir = tmp_path / "nats"
    try:
        assert (await request(client, "commands.product.create", WIDGET))["ok"]
        for _ in range(4):
            restock = {"product_id": "p-1", "quantity": 1}
            assert (await request(client, "commands.product.restock", restock))["ok"]
        await eventually(lambda: _events_at_least(client, 5))
        await server.stop()
        shutil.copytree(store_dir, tmp_path / "before")
        await server.start()
        for i in range(5):  # each resent under its id until the reconnected service answers
            await eventually(lambda i=i: _restocked(client, f"after-{i}"), timeout=30)
        await eventually(lambda: _events_at_least(client, 10))
        relay = app.component(Relay)
        assert relay.position == 10

        await server.stop()  # back to the store as it was: the tail of five is gone
        shutil.rmtree(store_dir)
        shutil.copytree(tmp_path / "before", store_dir)
        await server.start()

        async def republished() -> list[int]:
            try:
                msgs = await stream_messages(client)
            except Exception:  # reconnecting
                return []
            positions = [int(m.headers["ce-position"]) for m in msgs]
            return positions if len(positions) >= 10 else []

        positions = await eventually(republished, timeout=30)
        assert positions == list(range(1, 11))
        assert relay.rewinds == 1
    finally:
        await client.close()
        await app.stop()
        await server.stop()


async def _events_at_least(client: NATS, n: int) -> bool:
    try:
        return await events_in_stream(client) >= n
    except Exception:  # reconnecting
        return False


async def _restocked(client: NATS, command_id: str) -> bool:
    restock = {"product_id": "p-1", "quantity": 1}
    try:
        reply = await request(
            client, "commands.product.restock", restock, headers={"ce-id": command_id}, timeout=2
        )
    except Exception:
        return False
    return bool(reply["ok"])
