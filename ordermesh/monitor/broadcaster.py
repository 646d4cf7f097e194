"""The broadcaster: a tap on every topic whose sink is the monitor's buffer.

It is ``ordermesh tap`` without a terminal: the same subscriptions (``commands.>``,
``events.>``, ``queries.>``, ``sagas.>``, ``partners.>``, and here ``dlq.>``), the same
matching of replies on ``_INBOX.>`` to their requests (the partners answer the command
service's inbox like any service), the same callbacks that only decode and hand over.
The buffer's ``take`` never waits, so NATS is read as fast as it writes and nothing
pushes back on the system.

Events come from the core subscription on ``events.>`` and ``sagas.>``, not from a
JetStream consumer on ``EVENTS``: the relay's JetStream publishes are ordinary publishes
on those subjects, so every subscriber receives them at the moment the stream stores
them, with the ``ce-id`` the relay sets (the id a stream sequence would stand in for).
A consumer "from now" would deliver the same messages a second time (to be told apart
and dropped) and add a consumer, its heartbeats and flow control to the server's work
for each monitor. What it would add, redelivery to a monitor too slow for its socket, is
not what a live view needs: with the tap's generous pending limits the server cuts the
monitor off only when its process is stuck, and the stored events stay browsable (the
``events`` query). One difference remains: a publish JetStream drops as
a duplicate (a relay republishing after a crash, within the dedupe window) is seen here
although ``EVENTS`` keeps it once.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from broker.subjects import (
    ALL_COMMANDS,
    ALL_DLQ,
    ALL_EVENTS,
    ALL_PARTNERS,
    ALL_QUERIES,
    ALL_SAGAS,
)
from broker.tasks import cancel_and_wait
from ordermesh.monitor.buffer import MessageBuffer
from ordermesh.tap.session import Tap, TapOptions

#: One per topic of the buffer (``buffer.TOPICS``).
SUBJECTS = (ALL_COMMANDS, ALL_EVENTS, ALL_QUERIES, ALL_SAGAS, ALL_DLQ, ALL_PARTNERS)
#: How long ``start`` waits for the subscriptions (a flush through the server).
START_TIMEOUT = 15.0


class Broadcaster:
    """Feeds ``buffer`` from NATS while started. ``ready`` is set once every
    subscription is in place (``start`` returns only then)."""

    def __init__(self, nc: NATS, buffer: MessageBuffer) -> None:
        self.buffer = buffer
        self.tap = Tap(nc, TapOptions(subjects=SUBJECTS, replies=True), buffer.take)
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> asyncio.Event:
        return self.tap.ready

    async def start(self) -> None:
        self._task = asyncio.create_task(self.tap.run(), name="monitor-broadcaster")
        waiter = asyncio.create_task(self.tap.ready.wait())
        try:
            await asyncio.wait(
                {waiter, self._task}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await cancel_and_wait(waiter)
        if not self.tap.ready.is_set():
            task, self._task = self._task, None
            if task.done():
                task.result()  # it failed to subscribe: say why
            await cancel_and_wait(task)
            raise RuntimeError(f"the broadcaster did not subscribe within {START_TIMEOUT} s")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)  # the tap unsubscribes on its way out
            self._task = None


__all__ = ["SUBJECTS", "Broadcaster"]
