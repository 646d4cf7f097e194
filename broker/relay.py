"""The relay: the one publisher of stored events to JetStream.

Appending to the store and publishing to NATS are two writes, so the command side
only appends and this relay tails the store. Its checkpoint is the ``ce-position`` of
the last message in ``EVENTS`` itself: exactly what JetStream holds, never ahead of it.
After a crash it resumes there; anything published twice inside JetStream's duplicate
window is dropped by ``Nats-Msg-Id``. Run one relay per store: two would interleave.

Publishing is pipelined: up to ``window`` publishes wait for their acks while the next
events go out; acks are handled in callbacks, and a watchdog fails the relay (which
then restarts from its checkpoint) if they stop coming.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger
from nats.aio.client import Client as NATS
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from opentelemetry.trace import Span, SpanKind

from broker.acked_publisher import AckedPublisher
from broker.cloudevents import (
    H_CORRELATION,
    H_POSITION,
    H_TRACEPARENT,
    H_TRACESTATE,
    event_headers,
)
from broker.jetstream import ensure_streams
from broker.subjects import EVENTS_STREAM, event_subject
from broker.tasks import cancel_and_wait
from domain.event_store import EventStore, RecordedEvent
from telemetry import tracing
from telemetry.metrics import relay_lag, relay_position

DEFAULT_WINDOW = 256
ACK_TIMEOUT = 10.0
RESTART_DELAY = 1.0

AckHook = Callable[[RecordedEvent], None]


class Relay:
    def __init__(
        self,
        nc: NATS,
        store: EventStore,
        *,
        window: int = DEFAULT_WINDOW,
        on_acked: AckHook | None = None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._store = store
        self._window = window
        #: Called once JetStream has acknowledged an event (benchmarks time the relay
        #: here; tests inject faults).
        self.on_acked = on_acked
        self._task: asyncio.Task[None] | None = None
        #: Store position of the newest event JetStream has acknowledged.
        self.position = 0
        self.published = 0
        self.duplicates = 0

    async def start(self) -> None:
        # Read at scrape time: the ack callback, run per event, pays nothing for it.
        relay_position.read = lambda: self.position
        self._task = asyncio.create_task(self._run(), name="relay")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def checkpoint(self) -> int:
        """The store position of the last event in ``EVENTS`` (0 when it is empty)."""
        state = (await self._js.stream_info(EVENTS_STREAM)).state
        seq, first = state.last_seq, state.first_seq
        headers = None
        # Walk back past messages without our header (published by someone else), never
        # below the first message: a purged stream keeps its sequence numbers.
        while (
            state.messages and seq >= max(first, 1) and (not headers or H_POSITION not in headers)
        ):
            try:
                headers = (await self._js.get_msg(EVENTS_STREAM, seq)).headers
            except NotFoundError:
                headers = None
            seq -= 1
        return int(headers[H_POSITION]) if headers and H_POSITION in headers else 0

    async def _run(self) -> None:
        while True:
            try:
                await ensure_streams(self._js)
                after = await self.checkpoint()
                self.position = after
                logger.info("relay resuming after store position {}", after)
                await self._pump(after)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.opt(exception=exc).error("relay stopped; restarting from its checkpoint")
                await asyncio.sleep(RESTART_DELAY)

    @staticmethod
    def _publish_span(event: RecordedEvent, subject: str, headers: dict[str, str]) -> Span | None:
        """Continue the trace stored with the event; the message carries the new span."""
        span = tracing.start_span(
            f"{event.type} publish",
            kind=SpanKind.PRODUCER,
            traceparent=headers.get(H_TRACEPARENT),
            tracestate=headers.get(H_TRACESTATE),
            attributes=tracing.messaging_attributes(
                subject, "publish", str(event.id), headers.get(H_CORRELATION)
            )
            | {"ordermesh.store.position": event.position},
        )
        if span is not None:
            traceparent = tracing.traceparent_of(span)
            if traceparent:
                headers[H_TRACEPARENT] = traceparent
        return span

    async def _pump(self, after: int) -> None:
        """Publish from ``after`` on; return only by raising (a failed or stalled ack)."""
        slots = asyncio.Semaphore(self._window)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        progress = _Progress()

        def acked(event: RecordedEvent, span: Span | None, future: asyncio.Future[PubAck]) -> None:
            slots.release()
            progress.outstanding -= 1
            progress.last = time.monotonic()
            if span is not None:
                error = None if future.cancelled() else future.exception()
                if isinstance(error, Exception):
                    span.record_exception(error)
                    tracing.fail(span, "publish_failed", str(error))
                span.end()
            if future.cancelled() or failed.done():
                return
            try:
                ack = future.result()
                relay_lag.set(max(0.0, time.time() - event.recorded_at.timestamp()))
                self.position = max(self.position, event.position)
                if ack.duplicate:
                    self.duplicates += 1
                else:
                    self.published += 1
                if self.on_acked is not None:
                    self.on_acked(event)
            except Exception as exc:
                failed.set_exception(exc)

        publisher = AckedPublisher(self._nc)

        async def publish() -> None:
            await publisher.start()
            async for event in self._store.subscribe_all(after):
                await slots.acquire()
                subject = event_subject(event.type)
                headers = event_headers(event)
                span = self._publish_span(event, subject, headers) if tracing.enabled() else None
                future = await publisher.publish(subject, event.data, headers)
                progress.outstanding += 1
                future.add_done_callback(functools.partial(acked, event, span))

        async def watch() -> None:
            # JetStream futures have no deadline of their own: fail if acks stop coming.
            while True:
                await asyncio.sleep(ACK_TIMEOUT / 4)
                if progress.outstanding and time.monotonic() - progress.last > ACK_TIMEOUT:
                    raise TimeoutError(f"no JetStream ack for {ACK_TIMEOUT} s")

        tasks = [asyncio.create_task(publish()), asyncio.create_task(watch())]
        try:
            await asyncio.wait([*tasks, failed], return_when=asyncio.FIRST_COMPLETED)
            for done in (failed, *tasks):
                if done.done():
                    done.result()
        finally:
            for task in tasks:
                await cancel_and_wait(task)
            await publisher.stop()


@dataclass
class _Progress:
    outstanding: int = 0
    last: float = field(default_factory=time.monotonic)
