"""Connections and requests over a real nats-server."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from broker.connection import connect, request_served
from infra.nats_server import EmbeddedNatsServer


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
