"""Connections and requests over a real nats-server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from broker.connection import connect, redact_url, request_served, server_list
from infra.nats_server import EmbeddedNatsServer, free_port
from ordermesh.app import App
from tests.conftest import settings_for
from tests.integration.test_cli import run_cli
from tests.integration.test_processes import env_for


async def test_a_served_subject_is_answered(nats_server: EmbeddedNatsServer, nc: NATS) -> None:
    responder = await connect(nats_server.url)
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data + b"!")

        await responder.subscribe("served.echo", cb=echo)
        await responder.flush()
        reply = await request_served(nc, "served.echo", b"hi", timeout=5)
        assert reply.data == b"hi!"
    finally:
        await responder.close()


async def test_a_subject_nobody_serves_still_fails_after_its_attempts(nc: NATS) -> None:
    flushes = 0
    flush = nc.flush

    async def counted_flush(*args: object, **kwargs: object) -> None:
        nonlocal flushes
        flushes += 1
        await flush()

    nc.flush = counted_flush  # type: ignore[method-assign]
    with pytest.raises(NoRespondersError):
        await request_served(nc, "nobody.here", b"{}", timeout=5, attempts=3)
    assert flushes == 2  # a round trip between the three sends


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("nats://127.0.0.1:4222", ["nats://127.0.0.1:4222"]),
        ("nats://a:4222,nats://b:4223", ["nats://a:4222", "nats://b:4223"]),
        ("nats://a:4222, b:4223,tls://c", ["nats://a:4222", "b:4223", "tls://c"]),
        # A comma in a password does not start a server.
        ("nats://u:p,w@a:4222,nats://b:4223", ["nats://u:p,w@a:4222", "nats://b:4223"]),
        ("nats://a:4222,", ["nats://a:4222"]),
    ],
)
def test_a_nats_url_may_list_several_servers(url: str, servers: list[str]) -> None:
    assert server_list(url) == servers


def test_every_server_of_a_list_is_redacted() -> None:
    url = "nats://u:s3cr,et@a:4222,nats://tok@b:4223,nats://c:4224"
    assert redact_url(url) == "nats://u:***@a:4222,nats://***@b:4223,nats://c:4224"


async def test_a_service_and_the_cli_take_a_list_whose_first_server_is_down(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    """``ORDERMESH_NATS_URL=nats://down,nats://up`` as every NATS client takes it: the
    services connect to whichever answers, and so does the command line."""
    listed = f"nats://127.0.0.1:{free_port()},{nats_server.url}"
    settings = settings_for(nats_server, tmp_path / "data").model_copy(update={"nats_url": listed})
    app = App(settings, ("command",))
    await app.start()
    try:
        body = json.dumps({"product_id": "p-1", "name": "W", "price": "1.00", "stock": 1})
        env = env_for(tmp_path / "cli", ORDERMESH_NATS_URL=listed)
        code, out, err = await run_cli("request", "commands.product.create", body, env=env)
        assert code == 0, err
        assert '"ok": true' in out
    finally:
        await app.stop()
