"""The saga service: starts a fulfilment saga for every placed order, and resumes the
unfinished ones after a restart.

Run one instance (like the relay): two would both drive every saga. Their appends
would conflict harmlessly and every command is idempotent, but the work would double.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from loguru import logger
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from broker.command_bus import NatsCommandBus
from broker.projector import Projector
from broker.tasks import cancel_and_wait
from domain.event_store import RecordedEvent
from domain.metadata import MessageContext, parse_metadata
from domain.order import OrderPlaced
from handlers.executor import CommandExecutor
from infra.sqlite_worker import SQLiteWorker
from projections.base import CHECKPOINT_SCHEMA
from sagas import inbox
from sagas.order_fulfillment import SAGA_TYPE, stream_name
from sagas.policy import SagaPolicy
from sagas.runner import SagaRunner, declare_metrics
from telemetry.context import handling
from telemetry.metrics import saga_active

RETRY_DELAY = 1.0
DEFAULT_CONCURRENCY = 1000


def open_saga_db(path: Path) -> SQLiteWorker:
    return SQLiteWorker(path, CHECKPOINT_SCHEMA + inbox.SagaInbox.schema, name="sagas")


def trigger_context(event_id: str, metadata: bytes) -> MessageContext:
    """The ``order.placed`` event's context, from the metadata it was stored with."""
    meta = parse_metadata(metadata)

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) and value else None

    return MessageContext(
        id=event_id,
        type=OrderPlaced.TYPE,
        source=text("source") or "ordermesh",
        correlation_id=text("correlation_id") or event_id,
        causation_id=text("causation_id"),
        traceparent=text("traceparent"),
        tracestate=text("tracestate"),
        baggage=text("baggage"),
    )


class SagaService:
    """Sagas wait in a queue for one of ``concurrency`` workers: a burst of ten thousand
    orders costs ten thousand queue entries, not ten thousand suspended tasks."""

    def __init__(
        self,
        nc: NATS,
        executor: CommandExecutor,
        db: SQLiteWorker,
        policy: SagaPolicy | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        replicas: int = 1,
    ) -> None:
        self.runner = SagaRunner(executor, NatsCommandBus(nc), policy)
        self._db = db
        self._projector = Projector(
            nc,
            db,
            [inbox.SagaInbox()],
            on_commit=self._on_commit,
            keep_context=True,
            replicas=replicas,
        )
        self._concurrency = concurrency
        self._queue: asyncio.Queue[tuple[OrderPlaced, MessageContext]] = asyncio.Queue()
        self._owed: set[str] = set()
        """Sagas queued or being driven: each is driven by one worker at a time."""
        self._workers: list[asyncio.Task[None]] = []
        #: When this service was last stopped, and the time each saga in flight then is
        #: owed on its current step once driven again.
        self._paused_at: float | None = None
        self._grace: dict[str, float] = {}
        self.finished = 0
        self._finishing = asyncio.Event()

    async def wait_finished(self, count: int) -> None:
        """Until ``count`` sagas have ended in this process (benchmarks, tests)."""
        while self.finished < count:
            await self._finishing.wait()

    @property
    def active(self) -> int:
        return len(self._owed)

    async def start(self) -> None:
        declare_metrics()
        # Started again in this process after standing down (its lease could not be
        # renewed: NATS was out of reach): the sagas in flight were not driven meanwhile,
        # and that time is not their steps' (see SagaRunner.run).
        paused, self._paused_at = self._paused_at, None
        grace = time.monotonic() - paused if paused is not None else 0.0
        for row in await self._db.run(inbox.pending):
            if grace:
                self._grace[row.saga_id] = grace
            self._enqueue(row.event, trigger_context(row.event_id, row.metadata))
        if self._owed:
            logger.info("saga service resuming {} unfinished saga(s)", len(self._owed))
        self._workers = [
            asyncio.create_task(self._work(), name=f"saga-worker-{i}")
            for i in range(self._concurrency)
        ]
        await self._projector.start()

    async def stop(self) -> None:
        self._paused_at = time.monotonic()
        await self._projector.stop()
        for worker in self._workers:
            await cancel_and_wait(worker)
        self._workers.clear()

    def _on_commit(self, batch: list[RecordedEvent]) -> None:
        for recorded in batch:
            if recorded.type == OrderPlaced.TYPE:
                try:
                    placed = OrderPlaced.model_validate_json(recorded.data)
                except ValidationError:
                    continue  # never here: the projector passes on only what it applied
                self._enqueue(placed, trigger_context(str(recorded.id), recorded.metadata))

    def _enqueue(self, placed: OrderPlaced, ctx: MessageContext) -> None:
        if placed.order_id in self._owed:
            return
        self._owed.add(placed.order_id)
        self._queue.put_nowait((placed, ctx))
        saga_active.labels(SAGA_TYPE).set(len(self._owed))

    async def _work(self) -> None:
        while True:
            placed, ctx = await self._queue.get()
            try:
                await self._drive(placed, ctx)
            finally:
                self._owed.discard(placed.order_id)
                saga_active.labels(SAGA_TYPE).set(len(self._owed))

    async def _drive(self, placed: OrderPlaced, ctx: MessageContext) -> None:
        """Run one saga until it ends; anything unexpected is logged and retried, since
        the saga's stream always says where to pick up."""
        saga_id = placed.order_id
        while True:
            try:
                saga = await self.runner.run(placed, ctx, grace=self._grace.pop(saga_id, 0.0))
                # An ended saga is never written again: keep the cache for live ones.
                self.runner.executor.forget(stream_name(saga_id))
                await self._db.run(lambda db: inbox.done(db, saga_id))
                self.finished += 1
                finishing, self._finishing = self._finishing, asyncio.Event()
                finishing.set()
                logger.debug("saga {} {}", saga_id, saga.status)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                with handling(ctx):
                    logger.exception("saga {} failed unexpectedly; retrying", saga_id)
                await asyncio.sleep(RETRY_DELAY)
