"""How much ``EVENTS`` and ``DLQ`` hold, as gauges: the DLQ alert needs a depth that
goes back to zero when an operator empties it, which a counter of dead letters (reset by
every restart, never lowered by a purge) cannot give.

JetStream knows the numbers; asking it every few seconds costs one small request per
stream. The projections service runs this, being the one that sets messages aside.
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from broker.subjects import DLQ_STREAM, EVENTS_STREAM
from broker.tasks import cancel_and_wait
from telemetry.metrics import stream_bytes, stream_messages

INTERVAL = 5.0


class StreamGauges:
    def __init__(
        self,
        nc: NATS,
        streams: tuple[str, ...] = (EVENTS_STREAM, DLQ_STREAM),
        *,
        interval: float = INTERVAL,
    ) -> None:
        self._js = nc.jetstream()
        self.streams = streams
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-gauges")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def refresh(self) -> None:
        """Read every stream's state once; a stream not created yet holds nothing."""
        for name in self.streams:
            try:
                state = (await self._js.stream_info(name)).state
                messages, size = state.messages, state.bytes
            except NotFoundError:
                messages, size = 0, 0
            stream_messages.labels(name).set(messages)
            stream_bytes.labels(name).set(size)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(NatsError, TimeoutError):  # the next round tries again
                await self.refresh()
            await asyncio.sleep(self.interval)
