"""Answering pings the way NATS services do, so a readiness check (and ``nats micro
ping``) can ask a service itself whether it answers requests.

A service that has subscribed may still be unknown to the server for a moment, and
then a request gets "no responders". Asking the instance's own ping subject, over the
same connection and through the server, is the honest test: it answers only once the
server routes requests to it. Ping replies follow the NATS micro protocol's
``io.nats.micro.v1.ping_response``; a service that answers pings is not a full micro
service (no ``$SRV.INFO`` or ``$SRV.STATS``).
"""

from __future__ import annotations

import json
import uuid
from importlib.metadata import PackageNotFoundError, version

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from broker.connection import request_served
from broker.subjects import ping_subjects, reply_allowed

PING_RESPONSE = "io.nats.micro.v1.ping_response"


def _version() -> str:
    try:
        return version("ordermesh")
    except PackageNotFoundError:
        return "0.0.0"


class PingResponder:
    """Answers ``$SRV.PING``, ``$SRV.PING.<service>`` and ``$SRV.PING.<service>.<id>``."""

    def __init__(self, nc: NATS, service: str) -> None:
        self._nc = nc
        self.service = service
        self.id = uuid.uuid4().hex
        self._reply = json.dumps(
            {
                "type": PING_RESPONSE,
                "name": service,
                "id": self.id,
                "version": _version(),
                "metadata": {},
            }
        ).encode()
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        for subject in ping_subjects(self.service, self.id):
            self._subs.append(await self._nc.subscribe(subject, cb=self._answer))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    async def _answer(self, msg: Msg) -> None:
        if msg.reply and reply_allowed(msg.reply):
            await self._nc.publish(msg.reply, self._reply)

    async def answers(self, timeout: float = 2.0) -> bool:
        """Whether this instance answers a request sent through the server."""
        subject = ping_subjects(self.service, self.id)[2]
        try:
            reply = await request_served(self._nc, subject, b"", timeout=timeout)
        except (NatsError, TimeoutError):
            return False
        return reply.data == self._reply
