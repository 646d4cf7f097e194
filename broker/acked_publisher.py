"""JetStream publishes with many in flight, each ended by its ack in a callback.

nats-py's ``publish_async`` does the same, but takes its own semaphore through
``asyncio.wait_for``, draws a random token with ``secrets`` and encodes the header dict
on every call: together more than the rest of a relayed event's work. Here one inbox
subscription receives every ack, a counter names each publish, and the header block is
written by :mod:`broker.wire`. The ack becomes nats-py's own ``PubAck`` or ``APIError``,
so a caller sees what ``publish_async`` would have given it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from broker.wire import publish_encoded

_NO_RESPONDERS = "503"


class AckedPublisher:
    """Publish to JetStream and get a future of the ack; start before use, stop after."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._next = 0
        self._pending: dict[str, asyncio.Future[PubAck]] = {}
        self._sub: Subscription | None = None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(
            self._prefix + "*", cb=self._on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def stop(self) -> None:
        """Unsubscribe; publishes still waiting fail with ``CancelledError``."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            future.cancel()

    async def publish(
        self, subject: str, payload: bytes, headers: Mapping[str, str]
    ) -> asyncio.Future[PubAck]:
        """Send now; the future ends with the stream's ack, or with its refusal."""
        if self._sub is None:
            raise RuntimeError("AckedPublisher.publish before start()")
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            await publish_encoded(self._nc, subject, payload, headers, reply=self._prefix + token)
        except BaseException:
            self._pending.pop(token, None)
            raise
        return future

    async def _on_ack(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            response = json.loads(msg.data)
            if "error" in response:
                APIError.from_error(response["error"])  # raises the matching subclass
            # The fields the server sends on a plain publish; ``PubAck.from_response``
            # walks every dataclass field on each call, which costs more than the rest.
            ack = PubAck(
                stream=response["stream"],
                seq=response["seq"],
                domain=response.get("domain"),
                duplicate=response.get("duplicate"),
            )
        except Exception as exc:  # an ack we cannot read fails its publish, not the loop
            future.set_exception(exc)
            return
        future.set_result(ack)
