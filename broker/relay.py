"""The relay: the one publisher of stored events to JetStream.

Appending to the store and publishing to NATS are two writes, so the command side
only appends and this relay tails the store. Its checkpoint is the ``ce-position`` of
the last message in ``EVENTS`` itself: exactly what JetStream holds, never ahead of it.
After a crash it resumes there; anything published twice inside JetStream's duplicate
window is dropped by ``Nats-Msg-Id``. One relay per store runs at a time (its lease,
``broker.lease``): two would interleave.

Every publish says where it must land. The first after a (re)start expects the stream's
last sequence as read for the checkpoint (``Nats-Expected-Last-Sequence``), each next one
the previous event as the stream's last message (``Nats-Expected-Last-Msg-Id``). JetStream
refuses a publish whose expectation fails and writes nothing, so EVENTS can only ever
hold the store's events in store order, gap-free from where the relay resumed:

* a nats-server killed with -9 may come back without messages it had acknowledged (it
  acknowledges before it syncs: ``sync_interval``, 2 min by default). The next publish
  then expects an event the stream no longer holds and is refused; the relay restarts
  from what JetStream really holds and republishes the lost tail, before anything newer;
* a second relay that is still publishing when it should not (a paused process whose
  lease ran out) is refused as soon as the other one has published.

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
from nats.errors import Error as NatsError
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError
from opentelemetry.trace import Span, SpanKind

from broker.acked_publisher import AckedPublisher
from broker.cloudevents import (
    H_CORRELATION,
    H_ID,
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

EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
#: JetStream's "wrong last sequence" and "wrong last msg ID" error codes.
_WRONG_LAST = frozenset({10071, 10070})

DEFAULT_WINDOW = 256
#: Seconds without any ack while publishes are outstanding before the relay restarts
#: from its checkpoint. Acks flow within milliseconds while JetStream works; when none
#: come, the server or the stream's leader is gone (a cluster node killed: its
#: publishes are never acknowledged), and waiting longer only delays the failover.
ACK_TIMEOUT = 3.0
#: How often the relay checks for stalled acks and, when idle, for a rewound stream.
CHECK_INTERVAL = 1.0
RESTART_DELAY = 1.0
#: Seconds the relay waits for an answer from JetStream's API (stream info, a message
#: read back for the checkpoint). nats-py waits 5 s; while a cluster elects a new leader
#: for ``EVENTS`` (2-3 s) nobody answers, and each unanswered call held the relay back
#: that long, sometimes twice, before it asked the new leader. A loaded server answers
#: these in milliseconds; a slow answer only costs a restart from the checkpoint.
API_TIMEOUT = 2.0
#: After JetStream refused a publish for its expected-last check (someone else wrote to
#: EVENTS, or it lost its tail): nothing is broken, resume almost at once.
RESUME_DELAY = 0.05

AckHook = Callable[[RecordedEvent], None]


class Relay:
    def __init__(
        self,
        nc: NATS,
        store: EventStore,
        *,
        window: int = DEFAULT_WINDOW,
        on_acked: AckHook | None = None,
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        #: Copies of ``EVENTS`` and ``DLQ`` asked for when the relay creates them.
        self._replicas = replicas
        self._js = nc.jetstream(timeout=API_TIMEOUT)
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
        #: Restarts that found EVENTS behind what JetStream had acknowledged.
        self.rewinds = 0

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
        return (await self._resume_point())[0]

    async def _resume_point(self) -> tuple[int, int]:
        """The checkpoint, and the stream's last sequence the next publish must follow.

        The checkpoint is the newest message in ``EVENTS`` that the store vouches for: one
        whose ``ce-position`` names a stored event with its ``ce-id``. Messages published
        by anyone else are walked past, forged ordermesh headers included (a message
        claiming a position must not make the relay skip the real event there). Never
        below the first message: a purged stream keeps its sequence numbers.
        """
        state = (await self._js.stream_info(EVENTS_STREAM)).state
        seq = state.last_seq
        while state.messages and seq >= max(state.first_seq, 1):
            try:
                headers = (await self._js.get_msg(EVENTS_STREAM, seq)).headers or {}
            except NotFoundError:
                headers = {}
            seq -= 1
            position = _int(headers.get(H_POSITION))
            if position and await self._stored_as(position, headers.get(H_ID)):
                return position, state.last_seq
        return 0, state.last_seq

    async def _stored_as(self, position: int, event_id: str | None) -> bool:
        """Whether the store holds event ``event_id`` at ``position``."""
        found = await self._store.read_all(position - 1, 1)
        return bool(found) and found[0].position == position and found[0].id == event_id

    async def _run(self) -> None:
        while True:
            try:
                await ensure_streams(self._js, replicas=self._replicas)
                after, last_seq = await self._resume_point()
                if after < self.position:
                    self.rewinds += 1
                    logger.warning(
                        "EVENTS holds events up to store position {} only, although JetStream"
                        " acknowledged up to {} (a server restart lost its unsynced tail?);"
                        " publishing them again",
                        after,
                        self.position,
                    )
                self.position = after
                logger.info("relay resuming after store position {}", after)
                await self._pump(after, last_seq)
            except asyncio.CancelledError:
                raise
            except StreamRewound as exc:
                logger.warning("{}; resuming from what it holds", exc)
            except APIError as exc:
                if exc.err_code not in _WRONG_LAST:
                    logger.opt(exception=exc).error("relay stopped; restarting")
                    await asyncio.sleep(RESTART_DELAY)
                else:  # the expected-last check failed: EVENTS is not where we left it
                    logger.warning("JetStream refused a publish ({}); resuming", exc.description)
                    await asyncio.sleep(RESUME_DELAY)
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

    async def _pump(self, after: int, last_seq: int) -> None:
        """Publish from ``after`` on; return only by raising (a failed or stalled ack)."""
        slots = asyncio.Semaphore(self._window)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        progress = _Progress()

        def acked(event: RecordedEvent, span: Span | None, future: asyncio.Future[PubAck]) -> None:
            slots.release()
            progress.outstanding -= 1
            progress.last = time.monotonic()
            # Read even when the pump has already failed: a publish the server never
            # acknowledged (its node killed) must not log "exception never retrieved".
            error = None if future.cancelled() else future.exception()
            if span is not None:
                if isinstance(error, Exception):
                    span.record_exception(error)
                    tracing.fail(span, "publish_failed", str(error))
                span.end()
            if future.cancelled() or failed.done():
                return
            try:
                ack = future.result()
                progress.last_seq = max(progress.last_seq, ack.seq)
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
            expect = (EXPECTED_LAST_SEQUENCE, str(last_seq))
            async for event in self._store.subscribe_all(after):
                await slots.acquire()
                subject = event_subject(event.type)
                headers = event_headers(event)
                headers[expect[0]] = expect[1]
                expect = (EXPECTED_LAST_MSG_ID, event.id)
                span = self._publish_span(event, subject, headers) if tracing.enabled() else None
                future = await publisher.publish(subject, event.data, headers)
                progress.outstanding += 1
                future.add_done_callback(functools.partial(acked, event, span))

        async def watch() -> None:
            # JetStream futures have no deadline of their own: fail if acks stop coming.
            # And while nothing is in flight, check that EVENTS still holds what it
            # acknowledged: after a server restart lost its tail, an idle relay would
            # otherwise wait for the next event to find out.
            while True:
                await asyncio.sleep(CHECK_INTERVAL)
                if progress.outstanding and time.monotonic() - progress.last > ACK_TIMEOUT:
                    raise TimeoutError(f"no JetStream ack for {ACK_TIMEOUT} s")
                if not progress.outstanding and progress.last_seq:
                    try:
                        held = (await self._js.stream_info(EVENTS_STREAM)).state.last_seq
                    except (NatsError, TimeoutError):
                        continue  # the server is out of reach: ask again next round
                    if held < progress.last_seq:
                        raise StreamRewound(
                            f"EVENTS ends at sequence {held}, but JetStream acknowledged"
                            f" sequence {progress.last_seq}"
                        )

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


class StreamRewound(Exception):
    """EVENTS holds less than JetStream acknowledged: its unsynced tail was lost."""


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


@dataclass
class _Progress:
    last_seq: int = 0
    """The highest stream sequence JetStream acknowledged to this pump."""
    outstanding: int = 0
    last: float = field(default_factory=time.monotonic)
