"""Readiness over a real nats-server: the services answer NATS service pings, and
``/readyz`` follows the process's NATS connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.aio.client import Client as NATS

from infra.nats_server import EmbeddedNatsServer, free_port
from ordermesh.app import App
from tests.conftest import CORE_SERVICES, eventually, settings_for
from tests.integration.test_processes import http_status


async def test_request_services_answer_service_pings(app: App, nc: NATS) -> None:
    assert app.ready()
    for service in ("ordermesh-command", "ordermesh-query"):
        reply = json.loads((await nc.request(f"$SRV.PING.{service}", b"", timeout=5)).data)
        assert reply["type"] == "io.nats.micro.v1.ping_response"
        assert reply["name"] == service
        # The instance's own subject answers with the same instance id.
        own = await nc.request(f"$SRV.PING.{service}.{reply['id']}", b"", timeout=5)
        assert json.loads(own.data) == reply


async def test_readyz_follows_the_nats_connection(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings_for(nats_server, tmp_path / "data", metrics_port=port)
    application = App(settings, CORE_SERVICES)
    await application.start()
    readyz = f"http://127.0.0.1:{port}/readyz"
    try:
        assert await asyncio.to_thread(http_status, readyz) == 200
        await nats_server.stop()

        async def unready() -> bool:
            return await asyncio.to_thread(http_status, readyz) == 503

        await eventually(unready)
        assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        await application.stop()
    assert not application.ready()
