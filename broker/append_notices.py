"""Telling a relay in another process that the embedded store has new events.

The embedded (SQLite) store wakes its own subscribers at once, but a relay in another
process has only its poll to learn of an append (every 50 ms: 25 ms of latency on
average, added to every command's way to the read models). So an appending process says
so on ``ordermesh.store.appended`` (core NATS; the body names the store instance that
appended) once per group commit, and a relay's process wakes its store's subscribers when
it hears it. The poll stays, as the fallback for a notice lost while NATS is away. KurrentDB pushes
to its subscribers by itself: neither side is used with it.
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from broker.subjects import STORE_APPENDED
from infra.eventstore.sqlite import SQLiteEventStore


class AppendNotices:
    """The appender's side: one notice per group commit, sent after the loop's turn."""

    def __init__(self, nc: NATS, store: SQLiteEventStore) -> None:
        self._nc = nc
        self._store = store
        self._pending = False
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._store.on_append = self._appended

    async def stop(self) -> None:
        self._store.on_append = None
        for task in list(self._sending):
            with contextlib.suppress(Exception):
                await task

    def _appended(self) -> None:
        if self._pending or not self._nc.is_connected:
            return  # one notice covers every commit of this turn; the poll covers an outage
        self._pending = True
        task = asyncio.get_running_loop().create_task(self._send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self) -> None:
        self._pending = False
        with contextlib.suppress(NatsError):
            await self._nc.publish(STORE_APPENDED, self._store.instance.encode())


class AppendListener:
    """The relay's side: a notice from another process wakes the store's subscribers."""

    def __init__(self, nc: NATS, store: SQLiteEventStore) -> None:
        self._nc = nc
        self._store = store
        self._sub: Subscription | None = None
        #: Notices from other processes that woke the store (tests, diagnostics).
        self.heard = 0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(STORE_APPENDED, cb=self._notice)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _notice(self, msg: Msg) -> None:
        if msg.data != self._store.instance.encode():
            self.heard += 1
            self._store.wake()
