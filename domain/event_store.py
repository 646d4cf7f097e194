"""The event-store port: the small surface every store adapter implements.

The shape follows EventStoreDB (streams with per-stream revisions, one global
position, optimistic concurrency on append, catch-up subscription to ``$all``) so
that the EventStoreDB adapter stays a thin translation and the embedded SQLite
adapter cannot grow features production would lack.

The records below are slotted dataclasses that nothing mutates once made, but not
``frozen``: a frozen dataclass sets each field through ``object.__setattr__``, which
made building one about four times dearer, and one is built for every event.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from domain.ids import new_event_id


class StreamState(enum.Enum):
    """Expected-revision sentinels, as EventStoreDB names them."""

    ANY = "any"
    NO_STREAM = "no_stream"
    EXISTS = "exists"


#: Seconds a command id stays recorded by default (``ORDERMESH_IDEMPOTENCY_WINDOW``): well
#: past JetStream's 2-minute duplicate window, within which clients resend.
DEFAULT_IDEMPOTENCY_WINDOW = 600.0

ExpectedRevision = int | StreamState
"""An ``int`` is the revision of the stream's last event (0-based)."""


@dataclass(slots=True)
class NewEvent:
    """An event about to be appended; ``data`` and ``metadata`` are JSON bytes."""

    type: str
    data: bytes
    metadata: bytes = b"{}"
    id: str = field(default_factory=new_event_id)
    """A UUID in its canonical text form (stores and headers carry it as text anyway);
    new ones are time-ordered (version 7), which every store's id index prefers."""


@dataclass(slots=True)
class CommandRecord:
    """The command an append carries out: its id (the ``ce-id``) and a digest of its body.

    Stores keep these, system-wide and for a window of time, so that a command id means
    one command whichever stream it names: a resend is answered from the first append,
    and the id reused for another body is refused (:class:`DuplicateCommand`).
    """

    id: str
    digest: str | None = None
    """``None``: the sender cannot say (a saga's own transitions); any body matches."""


@dataclass(slots=True)
class StoredCommand:
    """Where a command's events landed: the last one's stream and revision."""

    id: str
    digest: str | None
    stream: str
    revision: int

    def same_body(self, digest: str | None) -> bool:
        return self.digest is None or digest is None or self.digest == digest


@dataclass(slots=True)
class RecordedEvent:
    """An event as stored: its stream revision and its global position are fixed."""

    id: str
    stream: str
    revision: int
    position: int
    type: str
    data: bytes
    metadata: bytes
    recorded_at: datetime


@dataclass(slots=True)
class AppendResult:
    """Where the last appended event landed."""

    revision: int
    position: int


class EventStoreError(Exception):
    """Base class of every error an adapter raises."""


class WrongExpectedRevision(EventStoreError):
    """Another writer appended first: the caller must reload and decide again."""

    def __init__(self, stream: str, expected: ExpectedRevision, actual: int | None) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream!r}: expected revision {expected!r}, actual {actual!r}")


class DuplicateCommand(EventStoreError):
    """The command was carried out before (within the store's idempotency window): nothing
    was written; ``first`` says where its events are."""

    def __init__(self, first: StoredCommand) -> None:
        self.first = first
        super().__init__(
            f"command {first.id!r} was stored before, in {first.stream!r}"
            f" at revision {first.revision}"
        )


class EventStoreUnavailable(EventStoreError):
    """The store cannot be reached; nothing was written."""


class EventStore(Protocol):
    """The port. Positions are exclusive lower bounds: ``after=0`` means from the start."""

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_revision: ExpectedRevision,
        command: CommandRecord | None = None,
    ) -> AppendResult:
        """Append atomically, or raise ``WrongExpectedRevision`` and write nothing.

        With ``command``, the command is recorded with the events, in the same write; if
        the store holds it already (within its idempotency window), nothing is written and
        ``DuplicateCommand`` is raised, whichever stream the first one went to.
        """
        ...

    async def stored_command(self, command_id: str) -> StoredCommand | None:
        """The record of a command within the idempotency window, else ``None``."""
        ...

    async def read_stream(self, stream: str, from_revision: int = 0) -> list[RecordedEvent]:
        """Events of one stream from ``from_revision`` on; an unknown stream is empty."""
        ...

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Up to ``limit`` events with global position greater than ``after``, in order."""
        ...

    def subscribe_all(self, after: int = 0) -> AsyncIterator[RecordedEvent]:
        """Every event after ``after`` in global order, then new ones as they are stored."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...
