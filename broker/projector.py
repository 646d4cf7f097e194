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

An event that cannot be applied (its body no longer decodes, or a projection raises on
it) is delivered again, alone, up to ``max_deliveries`` times with a doubling pause, in
case the cause passes; then it is set aside in ``DLQ`` (``broker.dead_letters``) and the
feed moves on. A read-model database that is locked or unreachable is not the event's
fault: that is never set aside, the feed restarts from its checkpoint until the database
answers. Each projector also answers ``ordermesh.dlq.retry.<its name>``: apply again an
event it set aside, once the cause is fixed (``ordermesh dlq retry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol, TypeVar

from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError
from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError

from broker import cloudevents as ce
from broker import replies
from broker.dead_letters import H_CONSUMER, dead_letter, describe
from broker.dlq import (
    CANNOT_APPLY,
    DATABASE_UNAVAILABLE,
    NOT_AN_EVENT,
    NOT_FOUND,
    NOT_SET_ASIDE,
    WRONG_CONSUMER,
    Outcome,
    RetryRefused,
    RetryRequest,
    outcome_reply,
)
from broker.jetstream import ensure_streams
from broker.pull_feed import FeedLost, PullFeed
from broker.subjects import (
    ALL_STORED,
    DLQ_STREAM,
    EVENTS_STREAM,
    dlq_retry_subject,
    reply_allowed,
)
from broker.tasks import cancel_and_wait
from domain.catalog import decode_event
from domain.event_store import RecordedEvent
from projections.base import (
    CHECKPOINT_SCHEMA,
    Checkpoint,
    Projection,
    applied_from,
    apply_batch,
    apply_set_aside,
    checkpoint,
    set_aside,
    set_aside_records,
)
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
#: An event that cannot be applied is tried this many times, alone, before it is set aside.
DEFAULT_MAX_DELIVERIES = 5
#: The pause after its first failed delivery, doubled after each next one up to
#: ``MAX_BACKOFF``: 0.05 + 0.1 + 0.2 + 0.4 s, so a poison event holds the feed 0.75 s.
DEFAULT_BACKOFF = 0.05
MAX_BACKOFF = 0.4
#: Replicas of one consumer share its retry requests: one of them applies each.
RETRY_QUEUE = "ordermesh-dlq-retry"

_CONTEXT_HEADERS = (
    (ce.H_CORRELATION, "correlation_id"),
    (ce.H_CAUSATION, "causation_id"),
    (ce.H_SOURCE, "source"),
    (ce.H_TRACEPARENT, "traceparent"),
    (ce.H_TRACESTATE, "tracestate"),
    (ce.H_BAGGAGE, "baggage"),
)

CommitHook = Callable[[list[RecordedEvent]], None]


def database_unavailable(exc: BaseException) -> bool:
    """The read-model database failed (locked by a rebuild, unreachable, out of space),
    not the event: retried until it answers, never set aside.

    SQLite reports all of those as ``OperationalError``; so does SQL a projection got
    wrong (``no such column``), which therefore stalls the feed loudly rather than
    emptying it into ``DLQ``.
    """
    return isinstance(exc, sqlite3.OperationalError)


class Database(Protocol):
    """What a projector and the query service need of the read-model database."""

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


def recorded_from(
    headers: Mapping[str, str], data: bytes, *, context: bool = False
) -> RecordedEvent:
    """Rebuild the stored event from the relay's headers; raises ``KeyError`` if not ours.

    With ``context``, the metadata is rebuilt from the headers the relay derived from it,
    so a consumer that acts on an event (the saga) can carry its correlation and trace
    onwards; read models need none of it.
    """
    h = headers
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
        data=data,
        metadata=metadata,
        recorded_at=datetime.fromisoformat(h[ce.H_TIME]),
    )


def recorded_from_msg(msg: Msg, *, context: bool = False) -> RecordedEvent:
    """:func:`recorded_from` a message of ``EVENTS``."""
    return recorded_from(msg.headers or {}, msg.data, context=context)


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


def _set_aside(
    db: sqlite3.Connection,
    projections: list[Projection],
    recorded: RecordedEvent,
    sequence: int,
    dlq_sequence: int,
) -> None:
    """Move every projection past a dead letter, noting it, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for projection in projections:
            set_aside(db, projection, recorded, sequence, dlq_sequence)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _apply_again(
    db: sqlite3.Connection,
    projections: list[Projection],
    recorded: RecordedEvent,
    dlq_sequence: int,
) -> Outcome | None:
    """Apply an event set aside here to each projection that has not applied it since,
    in one transaction. ``None``: no projection here set it aside, nothing done.

    The feed is past the event, so its position check would skip it; the records of what
    was set aside, updated in this transaction, keep it from being applied twice.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        records = {r.projection: r.applied for r in set_aside_records(db, projections, recorded.id)}
        missing = [p for p in projections if records.get(p.name) is False]
        if missing:
            event = decode_event(recorded.type, recorded.data)
            for projection in missing:
                apply_set_aside(db, projection, event, recorded, dlq_sequence)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    if not records:
        return None
    return Outcome.RETRIED if missing else Outcome.ALREADY_APPLIED


def _ensure_schema(db: sqlite3.Connection) -> None:
    """Checkpoints and set-aside records, in a database made before the latter existed."""
    for statement in CHECKPOINT_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


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
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        backoff: float = DEFAULT_BACKOFF,
        replicas: int = 1,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("an event is delivered at least once")
        self._nc = nc
        self._js = nc.jetstream()
        #: Copies of ``EVENTS`` and ``DLQ`` asked for when the projector creates them.
        self._replicas = replicas
        self._db = db
        self.projections = projections
        #: The consumer's name: in the ``DLQ`` headers, the ledger and the retry subject.
        self.name = "+".join(p.name for p in projections)
        #: The event types some projection here applies: the only ones traced and timed
        #: (which also keeps the ``event_type`` label to known types).
        self._types = frozenset().union(*(p.event_types for p in projections))
        self._batch = batch
        #: Called with the events of each batch once committed, less those set aside, and
        #: with an event a retry applied (benchmarks observe latency here; the saga starts
        #: its sagas; tests inject faults).
        self.on_commit = on_commit
        #: Rebuild each event's metadata (correlation, trace) for ``on_commit``.
        self._keep_context = keep_context
        self.max_deliveries = max_deliveries
        self.backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._retries: Subscription | None = None
        self.applied = 0
        self.restarts = 0
        self.set_aside = 0

    async def start(self) -> None:
        await ensure_streams(self._js, replicas=self._replicas)
        await self._db.run(_ensure_schema)
        self._retries = await self._nc.subscribe(
            dlq_retry_subject(self.name), queue=RETRY_QUEUE, cb=self._on_retry
        )
        self._task = asyncio.create_task(self._run(), name=f"projector-{self.name}")

    async def stop(self) -> None:
        if self._retries is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._retries.unsubscribe()
            self._retries = None
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
                # Not an event at all: no delivery could change that.
                await dead_letter(self._js, msg, self.name, f"no ordermesh event headers ({exc})")
                self.set_aside += 1
        sequence = msgs[-1].metadata.sequence.stream
        batch = [recorded for _msg, recorded in received]
        committed = batch
        spans = self._spans(received)
        started = time.perf_counter()
        try:
            self.applied += await self._apply(batch, sequence)
        except Exception as exc:
            if database_unavailable(exc):
                raise
            # Some event cannot be applied: one by one, each alone, setting it aside.
            committed = await self._apply_each(received)
            self.applied += await self._apply([], sequence)  # past any foreign message too
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
            self.on_commit(committed)

    async def _apply_each(self, received: list[tuple[Msg, RecordedEvent]]) -> list[RecordedEvent]:
        """Apply a failed batch event by event; returns those applied (the others went to
        ``DLQ``)."""
        applied: list[RecordedEvent] = []
        for msg, recorded in received:
            sequence = msg.metadata.sequence.stream
            failure = await self._deliver(recorded, sequence)
            if failure is None:
                applied.append(recorded)
                continue
            reason = f"cannot apply: {describe(failure)}"
            dlq_sequence = await dead_letter(
                self._js, msg, self.name, reason, deliveries=self.max_deliveries
            )
            await self._db.run(
                functools.partial(
                    _set_aside,
                    projections=self.projections,
                    recorded=recorded,
                    sequence=sequence,
                    dlq_sequence=dlq_sequence,
                )
            )
            self.set_aside += 1
        return applied

    async def _deliver(self, recorded: RecordedEvent, sequence: int) -> Exception | None:
        """Apply one event, up to ``max_deliveries`` times with a doubling pause between;
        returns the last failure, or ``None`` once applied. A database that is unavailable
        is raised at once: the feed restarts, and no delivery is counted."""
        pause = self.backoff
        for delivery in range(1, self.max_deliveries + 1):
            try:
                self.applied += await self._apply([recorded], sequence)
                return None
            except Exception as exc:
                if database_unavailable(exc):
                    raise
                if delivery == self.max_deliveries:
                    return exc
                logger.info(
                    "{} could not apply {} {} (delivery {} of {}): {}; again in {:g} s",
                    self.name,
                    recorded.type,
                    recorded.id,
                    delivery,
                    self.max_deliveries,
                    describe(exc),
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
        raise AssertionError("unreachable: max_deliveries >= 1")

    async def _apply(self, batch: list[RecordedEvent], sequence: int) -> int:
        projections = self.projections
        return await self._db.run(
            lambda db: _apply_in_transaction(db, projections, batch, sequence)
        )

    async def _on_retry(self, msg: Msg) -> None:
        """Serve one ``ordermesh.dlq.retry.<name>`` request; always reply."""
        try:
            request = RetryRequest.model_validate_json(msg.data)
            outcome, event_id = await self.retry(request.sequence)
            reply = outcome_reply(outcome, request.sequence, event_id)
        except ValidationError as exc:
            reply = replies.error(replies.VALIDATION_ERROR, describe(exc))
        except RetryRefused as exc:
            reply = replies.error(exc.code, str(exc))
        except Exception as exc:  # NATS trouble reading or deleting the message
            logger.opt(exception=exc).error("{} could not serve a DLQ retry", self.name)
            reply = replies.error(replies.INTERNAL_ERROR, describe(exc))
        if msg.reply and reply_allowed(msg.reply):
            await msg.respond(reply)

    async def retry(self, dlq_sequence: int) -> tuple[Outcome, str]:
        """Apply the event of ``DLQ`` message ``dlq_sequence``, set aside by this consumer,
        and remove the message; raises :class:`RetryRefused` and leaves it there if the
        event cannot be applied. Applies it at most once, however often it is asked:
        returns ``ALREADY_APPLIED`` (and removes any copy still in ``DLQ``) after that.
        """
        name, projections = self.name, self.projections
        earlier = await self._db.run(lambda db: applied_from(db, projections, dlq_sequence))
        if earlier is not None:
            return Outcome.ALREADY_APPLIED, earlier
        try:
            raw = await self._js.get_msg(DLQ_STREAM, dlq_sequence)
        except NotFoundError:
            raise RetryRefused(NOT_FOUND, f"no message {dlq_sequence} in DLQ") from None
        headers: dict[str, str] = dict(raw.headers or {})
        owner = headers.get(H_CONSUMER)
        if owner != name:
            raise RetryRefused(
                WRONG_CONSUMER,
                f"message {dlq_sequence} was set aside by {owner!r}, not by {name!r}",
            )
        try:
            recorded = recorded_from(headers, raw.data or b"", context=self._keep_context)
        except (KeyError, ValueError) as exc:
            raise RetryRefused(
                NOT_AN_EVENT, f"not an ordermesh event ({describe(exc)}): nothing can apply it"
            ) from None
        try:
            outcome = await self._db.run(
                lambda db: _apply_again(db, projections, recorded, dlq_sequence)
            )
        except Exception as exc:
            code = DATABASE_UNAVAILABLE if database_unavailable(exc) else CANNOT_APPLY
            raise RetryRefused(code, describe(exc)) from None
        if outcome is None:
            raise RetryRefused(
                NOT_SET_ASIDE,
                f"{name} has no record of setting event {recorded.id} aside: it has not"
                " reached it yet, applied it itself (replaying EVENTS after a schema change),"
                " or set it aside before retries existed; nothing to retry",
            )
        if outcome is Outcome.RETRIED:
            self.applied += 1
            logger.info("{} applied {} {} from DLQ", name, recorded.type, recorded.id)
            if self.on_commit is not None:
                try:
                    self.on_commit([recorded])
                except Exception:
                    logger.exception("{} failed after applying {} again", name, recorded.id)
        with contextlib.suppress(NotFoundError):  # purged meanwhile
            await self._js.delete_msg(DLQ_STREAM, dlq_sequence)
        return outcome, recorded.id

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
