"""Feeds the projections of one read-model database from ``EVENTS``, through one
pull consumer.

One feed for all of them: every message is parsed once (header parsing is the costliest
part of receiving an event in nats-py) and each batch is applied to every projection in
one transaction, one thread hop.

The position in ``EVENTS`` lives with the read model, not in a durable consumer: each
batch is applied in one read-model transaction together with its checkpoint (store
position and stream sequence), and after a crash, a restart or a lost consumer the feed is
reopened right after the checkpointed sequence. A durable consumer with acks would
redeliver unacknowledged messages *after* newer ones, and a position-based checkpoint would
then skip them; an unacknowledged pull consumer delivers strictly in stream order, and
holds no more than the feed's window in this process however far the projector falls
behind (``broker.pull_feed``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVar

from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError

from broker import cloudevents as ce
from broker.dead_letters import dead_letter
from broker.jetstream import ensure_streams
from broker.pull_feed import FeedLost, PullFeed
from broker.subjects import ALL_STORED, EVENTS_STREAM
from broker.tasks import cancel_and_wait
from domain.event_store import RecordedEvent
from projections.base import Checkpoint, Projection, advance, apply_batch, checkpoint
from telemetry import tracing
from telemetry.metrics import (
    event_processing,
    observe,
    projection_backlog,
    projection_lag,
    projection_position,
)

T = TypeVar("T")

DEFAULT_BATCH = 256
RESTART_DELAY = 0.5

_CONTEXT_HEADERS = (
    (ce.H_CORRELATION, "correlation_id"),
    (ce.H_CAUSATION, "causation_id"),
    (ce.H_SOURCE, "source"),
    (ce.H_TRACEPARENT, "traceparent"),
    (ce.H_TRACESTATE, "tracestate"),
    (ce.H_BAGGAGE, "baggage"),
)

#: Errors that mean an event cannot be applied at all, as opposed to a database problem.
_POISON = (ValidationError, KeyError, TypeError)

CommitHook = Callable[[list[RecordedEvent]], None]


class Database(Protocol):
    """What a projector and the query service need of the read-model database."""

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


def recorded_from_msg(msg: Msg, *, context: bool = False) -> RecordedEvent:
    """Rebuild the stored event from the relay's headers; raises ``KeyError`` if not ours.

    With ``context``, the metadata is rebuilt from the headers the relay derived from it,
    so a consumer that acts on an event (the saga) can carry its correlation and trace
    onwards; read models need none of it.
    """
    h = msg.headers or {}
    metadata = b""
    if context:
        meta = {key: h[header] for header, key in _CONTEXT_HEADERS if header in h}
        metadata = json.dumps(meta, separators=(",", ":")).encode()
    event_id = h[ce.H_ID]
    uuid.UUID(event_id)  # a malformed id makes the message poison, as a bad body does
    return RecordedEvent(
        id=event_id,
        stream=h[ce.H_STREAM],
        revision=int(h[ce.H_REVISION]),
        position=int(h[ce.H_POSITION]),
        type=h[ce.H_TYPE],
        data=msg.data,
        metadata=metadata,
        recorded_at=datetime.fromisoformat(h[ce.H_TIME]),
    )


def _apply_in_transaction(
    db: sqlite3.Connection,
    projections: list[Projection],
    batch: list[RecordedEvent],
    sequence: int,
) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        applied = sum(apply_batch(db, p, batch, sequence) for p in projections)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return applied


class Projector:
    def __init__(
        self,
        nc: NATS,
        db: Database,
        projections: list[Projection],
        *,
        batch: int = DEFAULT_BATCH,
        on_commit: CommitHook | None = None,
        keep_context: bool = False,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._db = db
        self.projections = projections
        self.name = "+".join(p.name for p in projections)
        #: The event types some projection here applies: the only ones traced and timed
        #: (which also keeps the ``event_type`` label to known types).
        self._types = frozenset().union(*(p.event_types for p in projections))
        self._batch = batch
        #: Called with each batch once it is committed (benchmarks observe latency here;
        #: tests inject faults).
        self.on_commit = on_commit
        #: Rebuild each event's metadata (correlation, trace) for ``on_commit``.
        self._keep_context = keep_context
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        self.restarts = 0

    async def start(self) -> None:
        await ensure_streams(self._js)
        self._task = asyncio.create_task(self._run(), name=f"projector-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def checkpoint(self) -> Checkpoint:
        """The least advanced projection's checkpoint: where the feed must resume."""
        names = [p.name for p in self.projections]
        return await self._db.run(lambda db: min(checkpoint(db, n) for n in names))

    async def _report_positions(self) -> None:
        """Each projection's checkpointed position, as a gauge, before the first batch."""
        names = [p.name for p in self.projections]
        positions = await self._db.run(lambda db: [checkpoint(db, n).position for n in names])
        for name, position in zip(names, positions, strict=True):
            projection_position.labels(name).set(position)

    async def _run(self) -> None:
        while True:
            try:
                await self._report_positions()
                cp = await self.checkpoint()
                # After EVENTS was recreated its sequences restart: read it all, skip by
                # position. (Until the relay recreates it, this fails and is retried.)
                last = (await self._js.stream_info(EVENTS_STREAM)).state.last_seq
                start = cp.sequence + 1 if cp.sequence <= last else 1
                async with PullFeed(
                    self._nc, EVENTS_STREAM, ALL_STORED, start_sequence=start
                ) as feed:
                    while True:
                        await self._handle(await feed.batch(self._batch))
            except asyncio.CancelledError:
                raise
            except FeedLost as exc:
                # The server restarted, or the consumer or EVENTS was deleted: a new feed
                # from the checkpoint, after a pause (a feed refused at once must not spin).
                self.restarts += 1
                logger.warning("projector {} lost its feed ({}); resuming", self.name, exc)
                await asyncio.sleep(RESTART_DELAY)
            except Exception as exc:
                # e.g. the read-model file is locked by a rebuild: resume from the checkpoint.
                self.restarts += 1
                logger.opt(exception=exc).error(
                    "projector {} failed; resuming from its checkpoint", self.name
                )
                await asyncio.sleep(RESTART_DELAY)

    async def _handle(self, msgs: list[Msg]) -> None:
        received: list[tuple[Msg, RecordedEvent]] = []
        for msg in msgs:
            try:
                received.append((msg, recorded_from_msg(msg, context=self._keep_context)))
            except (KeyError, ValueError) as exc:
                await dead_letter(self._js, msg, self.name, f"no ordermesh event headers ({exc})")
        sequence = msgs[-1].metadata.sequence.stream
        batch = [recorded for _msg, recorded in received]
        spans = self._spans(received)
        started = time.perf_counter()
        try:
            self.applied += await self._apply(batch, sequence)
        except _POISON:
            # One event no longer decodes: apply the batch one by one, setting it aside.
            for msg, recorded in received:
                try:
                    self.applied += await self._apply([recorded], msg.metadata.sequence.stream)
                except _POISON as exc:
                    await dead_letter(self._js, msg, self.name, f"cannot apply: {exc}")
                    await self._skip(msg.metadata.sequence.stream)
        finally:
            elapsed = time.perf_counter() - started
            for (_msg, recorded), span in zip(received, spans, strict=True):
                if recorded.type not in self._types:
                    continue  # not this consumer's business: no span, no sample
                trace_id = None
                if span is not None:
                    trace_id = tracing.trace_id_of(span)
                    span.end()
                observe(event_processing, elapsed, recorded.type, self.name, trace_id=trace_id)
        if batch:
            lag = max(0.0, time.time() - batch[-1].recorded_at.timestamp())
            for projection in self.projections:
                projection_lag.labels(projection.name).set(lag)
                projection_position.labels(projection.name).set(batch[-1].position)
        projection_backlog.labels(self.name).set(msgs[-1].metadata.num_pending)
        if self.on_commit is not None:
            self.on_commit(batch)

    async def _apply(self, batch: list[RecordedEvent], sequence: int) -> int:
        projections = self.projections
        return await self._db.run(
            lambda db: _apply_in_transaction(db, projections, batch, sequence)
        )

    async def _skip(self, sequence: int) -> None:
        """Record that the feed got past a dead letter: its ``EVENTS`` sequence, not its
        store position, which nothing vouches for (a later real event may carry it)."""
        projections = self.projections

        def skip(db: sqlite3.Connection) -> None:
            for projection in projections:
                advance(
                    db, projection, Checkpoint(checkpoint(db, projection.name).position, sequence)
                )

        await self._db.run(skip)

    def _spans(self, received: list[tuple[Msg, RecordedEvent]]) -> list[Span | None]:
        """One consumer span per event, child of the relay's publish of it."""
        if not tracing.enabled():
            return [None] * len(received)
        return [
            None
            if recorded.type not in self._types
            else tracing.start_span(
                f"{recorded.type} process",
                kind=SpanKind.CONSUMER,
                traceparent=(msg.headers or {}).get(ce.H_TRACEPARENT),
                tracestate=(msg.headers or {}).get(ce.H_TRACESTATE),
                attributes=tracing.messaging_attributes(
                    msg.subject,
                    "process",
                    str(recorded.id),
                    (msg.headers or {}).get(ce.H_CORRELATION),
                )
                | {
                    "messaging.consumer.group.name": self.name,
                    "messaging.batch.message_count": len(received),
                },
            )
            for msg, recorded in received
        ]
