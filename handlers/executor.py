"""Load → decide → append, with optimistic concurrency and idempotency on the command id.

Every command touches exactly one stream. The executor reads it, folds it into the
aggregate, lets the domain decide, and appends with the revision it read as the
expected revision. Another writer in between (another process, another replica)
makes the append fail; we reload and decide again a bounded number of times.

Idempotency needs no extra table: each stored event records the id of the command
that caused it. A resent command finds its own events in the stream it has to read
anyway, and answers from the state they produced: the first result, not a new one.
"""

from __future__ import annotations

import asyncio
import json
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from domain.catalog import decode_event
from domain.errors import CodedError
from domain.event_store import (
    EventStore,
    NewEvent,
    RecordedEvent,
    StreamState,
    WrongExpectedRevision,
)
from domain.messages import Event
from domain.metadata import MessageContext, event_metadata

DEFAULT_MAX_ATTEMPTS = 10


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did: its reply data and whether it was a resend."""

    data: dict[str, Any]
    events: list[Event]
    duplicate: bool = False


def _caused_by(event: RecordedEvent, command_id: str) -> bool:
    return bool(json.loads(event.metadata or b"{}").get("causation_id") == command_id)


class CommandExecutor:
    """Runs decisions against the store; one per command service."""

    def __init__(
        self,
        store: EventStore,
        *,
        source: str = "ordermesh.command",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.store = store
        self.source = source
        self.max_attempts = max_attempts
        #: Appends lost to another writer (each one retried); a contention gauge.
        self.conflicts = 0
        # Commands on one stream within this process queue up instead of racing:
        # conflicts are then left to other processes, where retries are cheap.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, stream: str) -> asyncio.Lock:
        lock = self._locks.get(stream)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[stream] = lock
        return lock

    async def load(self, stream: str, state: A) -> A:
        """Fold a whole stream into ``state`` (read-only use, e.g. a catalogue lookup)."""
        for recorded in await self.store.read_stream(stream):
            state.apply(decode_event(recorded.type, recorded.data))
        return state

    async def execute(
        self,
        stream: str,
        new_state: Callable[[], A],
        decide: Callable[[A], list[Event]],
        result: Callable[[A], dict[str, Any]],
        ctx: MessageContext,
    ) -> Outcome:
        async with self._lock(stream):
            for attempt in range(self.max_attempts):
                recorded = await self.store.read_stream(stream)
                state = new_state()
                done_at = next(
                    (i for i in reversed(range(len(recorded))) if _caused_by(recorded[i], ctx.id)),
                    None,
                )
                if done_at is not None:
                    for rec in recorded[: done_at + 1]:
                        state.apply(decode_event(rec.type, rec.data))
                    return Outcome(result(state), [], duplicate=True)
                for rec in recorded:
                    state.apply(decode_event(rec.type, rec.data))
                events = decide(state)
                if not events:
                    return Outcome(result(state), [])
                expected = recorded[-1].revision if recorded else StreamState.NO_STREAM
                metadata = event_metadata(ctx, self.source)
                batch = [
                    NewEvent(type=e.TYPE, data=e.model_dump_json().encode(), metadata=metadata)
                    for e in events
                ]
                try:
                    await self.store.append(stream, batch, expected)
                except WrongExpectedRevision:
                    self.conflicts += 1
                    await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                    continue
                for e in events:
                    state.apply(e)
                return Outcome(result(state), events)
        raise ConcurrencyConflict(stream, self.max_attempts)
