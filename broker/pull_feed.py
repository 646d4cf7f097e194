"""A stream read in order through an ephemeral pull consumer, holding at most a window.

A projector used to read ``EVENTS`` through an ordered push consumer. Its flow control is
the server's, counted in megabytes, so when the relay published faster than the read model
applied, tens of thousands of events waited in the client's buffer (peak RSS of
``ordermesh up`` tripled). Capping that buffer makes nats-py drop messages without telling
the ordered consumer, which then stalls until its heartbeat check resets it.

Here the client asks for what it can hold: pull requests for ``window`` messages in all,
topped up as batches are taken, so nothing more than a window is ever in flight. Messages
are handed over as they arrive, not when a request is complete (nats-py's ``fetch`` waits
for a whole batch or its timeout, a latency floor at low rates). The consumer acknowledges
nothing: the reader keeps its own position and resumes from it with a new feed.

Acknowledging nothing also means the server never sends a message twice: what it pushed to
a connection that died (a NATS node killed under a cluster's client, which reconnects to
another node) is gone. The consumer numbers its deliveries 1, 2, 3, … without a hole, so a
hole says exactly that; the feed then hands over what came before it and reports itself
lost, and the reader resumes from its own position, reading the missing events again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic_core import to_json

DEFAULT_WINDOW = 512
#: How often the server says "still here" while a pull waits; silence for
#: ``MISSED_HEARTBEATS`` of them means the consumer (or the server) is gone.
HEARTBEAT = 1.0
MISSED_HEARTBEATS = 3
#: A pull request's life; on expiry the server reports how much of it went unused.
EXPIRES = 30.0
#: An abandoned feed's consumer is removed by the server after this long.
INACTIVE_THRESHOLD = 60.0

_NANOS = 1_000_000_000
_HEARTBEAT = "100"
_EXPIRED = "408"


class FeedLost(Exception):
    """The consumer stopped answering or was deleted: resume from your own position."""


class PullFeed:
    """Messages of ``stream`` from ``start_sequence`` on, in stream order, in batches;
    ``async with`` opens and closes it."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        filter_subject: str,
        *,
        start_sequence: int,
        window: int = DEFAULT_WINDOW,
        heartbeat: float = HEARTBEAT,
        expires: float = EXPIRES,
    ) -> None:
        if heartbeat * 2 > expires:
            raise ValueError("the server wants a heartbeat at most half a pull's expiry")
        self._nc = nc
        self._stream = stream
        self._filter = filter_subject
        self._start = start_sequence
        self._window = window
        self._heartbeat = heartbeat
        self._expires = expires
        self._buffer: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        #: Messages asked for and not yet received.
        self._outstanding = 0
        self._lost: str | None = None
        #: The consumer's delivery number the next message must carry.
        self._next_delivery = 1
        #: Pull requests sent (the first, top-ups and those replacing expired ones).
        self.pulls = 0
        self._consumer: str | None = None
        self._next_subject = ""
        self._inbox = ""
        self._sub: Subscription | None = None

    async def open(self) -> None:
        info = await self._nc.jetstream().add_consumer(
            self._stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._start,
                ack_policy=AckPolicy.NONE,
                filter_subject=self._filter,
                inactive_threshold=INACTIVE_THRESHOLD,
                mem_storage=True,
            ),
        )
        self._consumer = info.name
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{info.name}"
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def __aenter__(self) -> PullFeed:
        try:
            await self.open()
        except BaseException:
            await self.close()  # a consumer made before a failed subscribe is removed
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop receiving and remove the consumer (the server would, once inactive)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._consumer is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                await self._nc.jetstream().delete_consumer(self._stream, self._consumer)
            self._consumer = None

    @property
    def in_flight(self) -> int:
        """Messages held or asked for: never more than the window."""
        return len(self._buffer) + self._outstanding

    async def batch(self, limit: int) -> list[Msg]:
        """The next messages, at least one and at most ``limit``; waits for the first.

        Raises ``FeedLost`` when the server deleted the consumer or fell silent.
        """
        while not self._buffer:
            if self._lost is not None:
                raise FeedLost(self._lost)
            await self._top_up()
            self._arrived.clear()
            try:
                async with asyncio.timeout(self._heartbeat * MISSED_HEARTBEATS):
                    await self._arrived.wait()
            except TimeoutError:
                silence = self._heartbeat * MISSED_HEARTBEATS
                raise FeedLost(f"no message or heartbeat for {silence:g} s") from None
        buffer = self._buffer
        taken = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
        await self._top_up()
        return taken

    def _in_sequence(self, msg: Msg) -> bool:
        """Whether ``msg`` is the next delivery; a hole before it loses the feed."""
        try:
            delivery = msg.metadata.sequence.consumer
        except Exception:  # no JetStream metadata: nothing to check against
            return True
        if delivery != self._next_delivery:
            self._lost = (
                f"consumer {self._consumer}: delivery {delivery} after "
                f"{self._next_delivery - 1}; the messages between were lost"
            )
            return False
        self._next_delivery = delivery + 1
        return True

    async def _top_up(self) -> None:
        """Ask for more once half the window is free, so the next messages are on their way
        while this batch is applied."""
        free = self._window - self.in_flight
        if free < self._window // 2:
            return
        self._outstanding += free
        self.pulls += 1
        request = {
            "batch": free,
            "expires": int(self._expires * _NANOS),
            "idle_heartbeat": int(self._heartbeat * _NANOS),
        }
        await self._nc.publish(self._next_subject, to_json(request), reply=self._inbox)

    async def _on_msg(self, msg: Msg) -> None:
        if msg.subject != self._inbox:  # a stored message keeps its own subject
            self._outstanding -= 1
            if self._lost is None and self._in_sequence(msg):
                self._buffer.append(msg)
            self._arrived.set()
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == _EXPIRED:
            # The rest of that request will never come: ask again on the next top-up.
            unused = headers.get("Nats-Pending-Messages")
            self._outstanding = max(0, self._outstanding - int(unused)) if unused else 0
        elif status != _HEARTBEAT:
            description = headers.get("Description", "")
            self._lost = f"consumer {self._consumer}: {status} {description}".strip()
        self._arrived.set()
