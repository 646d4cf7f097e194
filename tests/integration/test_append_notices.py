"""A relay in another process than the command service learns of an append from the
command service's notice, not from its poll (broker/append_notices.py)."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client as NATS

from broker.append_notices import AppendListener
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from tests.conftest import events_in_stream, eventually, request, settings_for

#: Far longer than the test waits: only a notice can wake the relay in time.
SLOW_POLL = 60


async def test_a_relay_elsewhere_is_woken_by_the_appenders_notice(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    url = f"sqlite:///{(tmp_path / 'events.db').resolve()}?poll_interval={SLOW_POLL}"
    settings = settings_for(nats_server, tmp_path / "data", eventstore_url=url)
    # Two Apps, two stores on one file: as two processes would have them.
    commands, relay = App(settings, ("command",)), App(settings, ("relay",))
    await relay.start()
    await commands.start()
    try:
        await relay.wait_leading()
        listener = relay.component(AppendListener)
        for i in range(3):
            body = {"product_id": f"p-{i}", "name": "W", "price": "1.00", "stock": 1}
            reply = await request(nc, "commands.product.create", body)
            assert reply["ok"], reply

            async def relayed(expected: int = i + 1) -> bool:
                return await events_in_stream(nc) >= expected

            await eventually(relayed, timeout=10)  # the poll would take 60 s
        assert listener.heard >= 3
    finally:
        await commands.stop()
        await relay.stop()


async def test_one_process_does_not_notify_itself(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    """Command and relay in one process: the store wakes its own relay; the notice it
    sends for relays elsewhere is not taken as another process's."""
    url = f"sqlite:///{(tmp_path / 'events.db').resolve()}?poll_interval={SLOW_POLL}"
    app = App(
        settings_for(nats_server, tmp_path / "data", eventstore_url=url), ("command", "relay")
    )
    await app.start()
    try:
        await app.wait_leading()
        body = {"product_id": "p-1", "name": "W", "price": "1.00", "stock": 1}
        assert (await request(nc, "commands.product.create", body))["ok"]

        async def relayed() -> bool:
            return await events_in_stream(nc) >= 1

        await eventually(relayed, timeout=10)
        assert app.component(AppendListener).heard == 0
    finally:
        await app.stop()
