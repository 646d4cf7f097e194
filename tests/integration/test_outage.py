"""NATS out of reach: requests from the monitor and the saga fail fast with
``unavailable`` instead of waiting out their timeout, and work again once it is back."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from broker.command_bus import NatsCommandBus
from broker.connection import connect
from domain.metadata import MessageContext
from domain.product import Restock
from infra.nats_server import EmbeddedNatsServer
from ordermesh.api import requests
from ordermesh.app import App
from tests.conftest import CORE_SERVICES, eventually, settings_for


async def test_requests_fail_fast_while_nats_is_away_and_work_when_it_is_back(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    app = App(settings_for(nats_server, tmp_path / "data"), CORE_SERVICES)
    await app.start()
    client = await connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    bus = NatsCommandBus(client)
    restock = Restock(product_id="p-1", quantity=1)
    ctx = MessageContext("outage-1", restock.TYPE, "test", "outage-1")
    try:
        await nats_server.stop()

        async def disconnected() -> bool:
            return not client.is_connected

        await eventually(disconnected)
        with pytest.raises(requests.Refused) as refused:
            await requests.command(client, "product.restock", {"product_id": "p-1", "quantity": 1})
        assert refused.value.code == "unavailable"
        reply = await bus.send(restock, ctx, timeout=30)
        assert (reply.ok, reply.code) == (False, "unavailable")

        await nats_server.start()
        await bus.until_connected()

        async def answered() -> bool:
            reply = await bus.send(restock, ctx, timeout=2)
            return reply.code == "product_not_found"  # the service's own answer

        await eventually(answered, timeout=30)
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        await app.stop()
