"""Feeds one projection from ``EVENTS`` through a durable JetStream pull consumer.

Each fetched batch is applied in one read-model transaction together with the
checkpoint, and only then acknowledged. A crash before the ack means redelivery, which
the checkpoint turns into a no-op: the read model sees every event exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVar

from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker import cloudevents as ce
from broker.jetstream import ensure_streams
from broker.subjects import ALL_EVENTS, EVENTS_STREAM
from domain.event_store import RecordedEvent
from projections.base import Projection, apply_batch

T = TypeVar("T")

DEFAULT_BATCH = 256
FETCH_TIMEOUT = 1.0
RESTART_DELAY = 1.0


class Database(Protocol):
    """What a projector and the query service need of the read-model database."""

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


def consumer_name(projection: Projection) -> str:
    return f"projection-{projection.name}"


def recorded_from_msg(msg: Msg) -> RecordedEvent:
    """Rebuild the stored event from the relay's headers; raises ``KeyError`` if not ours."""
    h = msg.headers or {}
    return RecordedEvent(
        id=uuid.UUID(h[ce.H_ID]),
        stream=h[ce.H_STREAM],
        revision=int(h[ce.H_REVISION]),
        position=int(h[ce.H_POSITION]),
        type=h[ce.H_TYPE],
        data=msg.data,
        metadata=b"",
        recorded_at=datetime.fromisoformat(h[ce.H_TIME]),
    )


def _apply_in_transaction(
    db: sqlite3.Connection, projection: Projection, batch: list[RecordedEvent]
) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        applied = apply_batch(db, projection, batch)
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
        projection: Projection,
        *,
        batch: int = DEFAULT_BATCH,
        before_ack: Callable[[list[RecordedEvent]], None] | None = None,
    ) -> None:
        self._js = nc.jetstream()
        self._db = db
        self.projection = projection
        self._batch = batch
        self._before_ack = before_ack
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self.applied = 0

    async def start(self) -> None:
        await ensure_streams(self._js)
        sub = await self._js.pull_subscribe(
            ALL_EVENTS,
            durable=consumer_name(self.projection),
            stream=EVENTS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=self._batch * 4,
                ack_wait=30,
            ),
        )
        self._sub = sub
        self._task = asyncio.create_task(self._run(sub), name=f"projector-{self.projection.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await sub.fetch(self._batch, timeout=FETCH_TIMEOUT)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.opt(exception=exc).error("projector {} fetch failed", self.projection.name)
                await asyncio.sleep(RESTART_DELAY)
                continue
            try:
                await self._handle(msgs)
            except Exception as exc:
                # e.g. the read-model file is locked by a rebuild: retry soon, lose nothing.
                logger.opt(exception=exc).error("projector {} apply failed", self.projection.name)
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=RESTART_DELAY)

    async def _handle(self, msgs: list[Msg]) -> None:
        batch: list[RecordedEvent] = []
        ours: list[Msg] = []
        for msg in msgs:
            try:
                batch.append(recorded_from_msg(msg))
                ours.append(msg)
            except (KeyError, ValueError):
                logger.warning(
                    "projector {} skipped {} without ordermesh headers",
                    self.projection.name,
                    msg.subject,
                )
                await msg.term()
        if not batch:
            return
        projection = self.projection
        self.applied += await self._db.run(lambda db: _apply_in_transaction(db, projection, batch))
        if self._before_ack is not None:
            self._before_ack(batch)
        for msg in ours:
            await msg.ack()
