"""Load → decide → append, with optimistic concurrency and idempotency on the command id.

Every command touches exactly one stream. The executor folds it into the aggregate
(kept in a cache between commands), lets the domain decide, and appends with the
folded revision as the expected revision. Another writer in between (another process,
another replica) makes the append fail; the executor folds the new events and decides
again, a bounded number of times.

Idempotency has two layers. The store records every command id with a digest of its
body, system-wide, in the same write as its events, for a window of time
(``CommandRecord``): a resend is refused by the store whichever stream it names, and
answered from the state the first one produced; the id reused for another body is
refused with ``idempotency_conflict``. In front of that, each cached stream remembers
the ids of its latest commands (from the events' ``causation_id``), so the usual resend
is answered without an append; that memory is bounded (``CAUSED_KEEP`` per stream).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from opentelemetry.trace import Span, SpanKind

from domain.catalog import decode_event
from domain.errors import CodedError
from domain.event_store import (
    CommandRecord,
    DuplicateCommand,
    EventStore,
    NewEvent,
    RecordedEvent,
    StreamState,
    WrongExpectedRevision,
)
from domain.messages import Event
from domain.metadata import MessageContext, event_metadata, parse_metadata
from telemetry import tracing
from telemetry.metrics import appended_position, count, event_stored

DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_CACHE_SIZE = 10_000
#: Command ids each cached stream remembers; older resends are caught by the store's
#: record (one append attempt later), so this bounds memory without losing anything.
CAUSED_KEEP = 256


class Aggregate(Protocol):
    def apply(self, event: Event) -> None: ...


A = TypeVar("A", bound=Aggregate)


class ConcurrencyConflict(CodedError):
    """Still losing the race after every attempt; the client may retry later."""

    code = "concurrency_conflict"

    def __init__(self, stream: str, attempts: int) -> None:
        super().__init__(
            f"stream {stream!r} kept changing; gave up after {attempts} attempts",
            {"stream": stream, "attempts": attempts},
        )


class IdempotencyConflict(CodedError):
    """The command id was used before for another body: one id means one command."""

    code = "idempotency_conflict"

    def __init__(self, command_id: str, stream: str) -> None:
        super().__init__(
            f"command id {command_id!r} was used before for another command; use a new id",
            {"id": command_id, "stream": stream},
        )


@dataclass(slots=True)
class Outcome:
    """What a command did: its reply data and whether it was a resend."""

    data: dict[str, Any]
    events: list[Event]
    duplicate: bool = False


@dataclass(slots=True)
class _Snapshot:
    """An aggregate folded up to ``revision`` (-1: no stream yet), and who changed it."""

    state: Any
    revision: int = -1
    caused: OrderedDict[str, int] = field(default_factory=OrderedDict)
    """Command id → revision of the last event it caused, for the latest ``CAUSED_KEEP``
    commands: the fast path of idempotency (the store's record is the authority)."""
    checked: float = -math.inf
    """When the store last confirmed this state (a read or our own append), monotonic."""

    def fold(self, recorded: RecordedEvent) -> None:
        self.state.apply(decode_event(recorded.type, recorded.data))
        self.revision = recorded.revision
        cause = parse_metadata(recorded.metadata).get("causation_id")
        if isinstance(cause, str):
            self.remember(cause, recorded.revision)

    def remember(self, command_id: str, revision: int) -> None:
        caused = self.caused
        caused[command_id] = revision
        if len(caused) > CAUSED_KEEP:
            caused.popitem(last=False)


class _Turn:
    """One stream's turn: commands on it run one at a time, in arrival order.

    Every command takes one, so a free turn is taken without an await (``asyncio.Lock``'s
    acquire and release are coroutines, about 5k instructions a command); a taken one is
    handed straight to the next waiter. The executor drops a turn nobody holds or waits
    for, so the map stays as small as the number of streams in use right now.
    """

    __slots__ = ("_waiters", "taken", "users")

    def __init__(self) -> None:
        self.taken = False
        self.users = 0
        self._waiters: deque[asyncio.Future[None]] | None = None

    def take(self) -> bool:
        """Take the turn if it is free; False if it must be waited for."""
        if self.taken:
            return False
        self.taken = True
        return True

    async def wait(self) -> None:
        """Wait until the turn is handed over (after ``take`` said False)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed over just as we were cancelled: pass it on
            raise

    def give_back(self) -> None:
        """Hand the turn to the longest waiter still waiting, or free it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter is done, and skipped
                waiter.set_result(None)
                return
        self.taken = False


class CommandExecutor:
    """Runs decisions against the store; one per command service.

    Aggregates stay in an LRU cache between commands. A command decides on the cached
    state and appends with its revision as the expected revision, so the common case
    costs one store round trip and no read: if another process wrote meanwhile, the
    append fails, the executor reads just the new events and decides again. Only an
    append proves a cached state current, so a refusal or a no-op decided on a cached
    state is checked against a fresh read before it is answered.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        source: str = "ordermesh.command",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.store = store
        self.source = source
        self.max_attempts = max_attempts
        self.cache_size = cache_size
        #: Appends lost to another writer (each one retried); a contention gauge.
        self.conflicts = 0
        #: ``db.system.name`` of the appends' spans.
        self.store_system = getattr(store, "system", "eventstore")
        self._cache: OrderedDict[str, _Snapshot] = OrderedDict()
        # Commands on one stream within this process queue up instead of racing:
        # conflicts are then left to other processes, where retries are cheap.
        self._turns: dict[str, _Turn] = {}

    def _enter(self, stream: str) -> _Turn:
        turn = self._turns.get(stream)
        if turn is None:
            turn = self._turns[stream] = _Turn()
        turn.users += 1
        return turn

    def _leave(self, stream: str, turn: _Turn) -> None:
        turn.users -= 1
        if not turn.users:
            del self._turns[stream]

    @asynccontextmanager
    async def _lock(self, stream: str) -> AsyncIterator[None]:
        turn = self._enter(stream)
        try:
            if not turn.take():
                await turn.wait()
            try:
                yield
            finally:
                turn.give_back()
        finally:
            self._leave(stream, turn)

    def _cached(self, stream: str) -> _Snapshot | None:
        snap = self._cache.get(stream)
        if snap is not None:
            self._cache.move_to_end(stream)
        return snap

    def _remember(self, stream: str, snap: _Snapshot) -> None:
        self._cache[stream] = snap
        self._cache.move_to_end(stream)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _refresh(self, stream: str, snap: _Snapshot) -> _Snapshot:
        """Fold the events stored after the snapshot's revision (all of them when new)."""
        for recorded in await self.store.read_stream(stream, from_revision=snap.revision + 1):
            snap.fold(recorded)
        snap.checked = time.monotonic()
        self._remember(stream, snap)
        return snap

    def forget(self, stream: str) -> None:
        """Drop a stream from the cache: it will not be written again (an ended saga), or
        its cached state can no longer be trusted."""
        self._cache.pop(stream, None)

    def recent(self, stream: str, max_age: float) -> Any:
        """The cached state of a stream if the store confirmed it at most ``max_age``
        seconds ago, else None: :meth:`load` without a coroutine, for the common case."""
        snap = self._cached(stream)
        if snap is not None and time.monotonic() - snap.checked <= max_age:
            return snap.state
        return None

    async def load(self, stream: str, new_state: Callable[[], A], *, max_age: float = 0.0) -> A:
        """The state of a stream for a read-only use, such as pricing an order.

        With ``max_age`` a cached state the store confirmed at most that many seconds ago
        (by a read, or by an append from this process) is used without asking the store
        again: another process's change may then be seen up to ``max_age`` late.
        """
        cached: A | None = self.recent(stream, max_age)
        if cached is not None:
            return cached
        async with self._lock(stream):
            snap = self._cached(stream) or _Snapshot(new_state())
            state: A = (await self._refresh(stream, snap)).state
            return state

    async def execute(
        self,
        stream: str,
        new_state: Callable[[], A],
        decide: Callable[[A], list[Event]],
        result: Callable[[A], dict[str, Any]],
        ctx: MessageContext,
    ) -> Outcome:
        # One coroutine for the turn, the decisions and the append: each coroutine between
        # the service's task and the store is re-entered whenever the task resumes.
        turn = self._enter(stream)
        held = False
        try:
            if not turn.take():
                await turn.wait()
            held = True
            snap = self._cached(stream)
            # Not cached: decide on a new, empty state without reading. A command that
            # makes a stream (the usual case here: a new order) then costs one append;
            # if the stream exists after all, the append expecting none fails and we
            # read it, as after any conflict, and a refusal or a no-op is checked
            # against a read before it stands.
            blind = snap is None
            if snap is None:
                snap = _Snapshot(new_state())
            fresh = False
            # The blind guess is not an attempt: a stream that exists gets them all.
            for attempt in range(self.max_attempts + blind):
                if ctx.id in snap.caused:
                    if ctx.digest is not None:
                        first = await self.store.stored_command(ctx.id)
                        if first is not None and not first.same_body(ctx.digest):
                            raise IdempotencyConflict(ctx.id, first.stream)
                    revision = snap.caused[ctx.id]
                    data = await self._result_at(stream, snap, revision, new_state, result)
                    return Outcome(data, [], duplicate=True)
                try:
                    events = decide(snap.state)
                except CodedError:
                    if fresh:
                        raise
                    snap, fresh = await self._refresh(stream, snap), True
                    continue
                if not events:
                    if fresh:
                        return Outcome(result(snap.state), [])
                    snap, fresh = await self._refresh(stream, snap), True
                    continue
                expected = snap.revision if snap.revision >= 0 else StreamState.NO_STREAM
                try:
                    # The stored metadata points at the append's span, so the relay's
                    # publish of each event continues the trace from there.
                    with self._append_span(stream) as span:
                        batch = self._new_events(events, ctx, tracing.traceparent_of(span))
                        appended = await self.store.append(
                            stream, batch, expected, CommandRecord(ctx.id, ctx.digest)
                        )
                except DuplicateCommand as exc:
                    first = exc.first
                    if not first.same_body(ctx.digest):
                        raise IdempotencyConflict(ctx.id, first.stream) from None
                    if first.stream == stream:
                        snap = await self._refresh(stream, snap)
                        data = await self._result_at(
                            stream, snap, first.revision, new_state, result
                        )
                    else:  # the same body, another stream: an id the service generated
                        data = await self._result_at(
                            first.stream, None, first.revision, new_state, result
                        )
                    return Outcome(data, [], duplicate=True)
                except WrongExpectedRevision:
                    if snap.checked != -math.inf:  # a real race, not a stream never read
                        self.conflicts += 1
                        await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                    snap, fresh = await self._refresh(stream, snap), True
                    continue
                for e in events:
                    count(event_stored, e.TYPE)
                    snap.state.apply(e)
                snap.revision = appended.revision
                appended_position.offer(appended.position)
                snap.remember(ctx.id, appended.revision)
                snap.checked = time.monotonic()
                self._remember(stream, snap)
                return Outcome(result(snap.state), events)
            raise ConcurrencyConflict(stream, self.max_attempts)
        except CodedError:
            raise  # a refusal wrote nothing: the cached state is still right
        except BaseException:
            # A failed append may still have been written (a timeout): forget the cache.
            self.forget(stream)
            raise
        finally:
            if held:
                turn.give_back()
            self._leave(stream, turn)

    def _append_span(self, stream: str) -> AbstractContextManager[Span]:
        """The span of one append: a leaf, nothing is traced inside it."""
        attributes = (
            {
                "db.system.name": self.store_system,
                "db.operation.name": "append",
                "db.collection.name": stream,
            }
            if tracing.enabled()
            else None
        )
        return tracing.leaf("eventstore.append", kind=SpanKind.CLIENT, attributes=attributes)

    def _new_events(
        self, events: list[Event], ctx: MessageContext, traceparent: str | None
    ) -> list[NewEvent]:
        """The events as stored, with the command's cause and (when given, the append
        span's) trace in their metadata."""
        metadata = event_metadata(ctx, self.source, traceparent=traceparent)
        # The serializer itself: bytes at once, without model_dump_json's str and wrapper.
        return [
            NewEvent(e.TYPE, type(e).__pydantic_serializer__.to_json(e), metadata) for e in events
        ]

    async def _result_at(
        self,
        stream: str,
        snap: _Snapshot | None,
        revision: int,
        new_state: Callable[[], A],
        result: Callable[[A], dict[str, Any]],
    ) -> dict[str, Any]:
        """The reply a command gave: the state right after its own events. ``stream`` may
        be another than the command names now (``snap`` is then None): an id the service
        generated differs in the resend, and the stream's first event names the aggregate."""
        if snap is not None and revision == snap.revision:
            return result(snap.state)
        past = _Snapshot(new_state())
        for recorded in await self.store.read_stream(stream):
            if recorded.revision > revision:
                break
            past.fold(recorded)
        return result(past.state)
