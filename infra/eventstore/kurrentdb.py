"""EventStoreDB / KurrentDB adapter: a thin translation onto ``kurrentdbclient``'s asyncio client.

The port was shaped after EventStoreDB, so almost everything maps one to one. The few
places where the library's defaults differ from the port's contract are handled here
and commented where they happen:

* ``append_to_stream`` returns only the commit position, so the revision is derived
  from the expected revision, or read back when the caller gave up concurrency control.
* ``read_all(commit_position=p)`` includes the event at ``p``, whereas the port's
  ``after`` is exclusive, so events at or before ``after`` are dropped here.
* The library's default ``$all`` filter also hides user event types named ``Result`` or
  ``PersistentConfig<n>``, so this adapter passes its own filter (``$``-streams only) and
  drops ``$``-typed events on the client.
* kurrentdbclient documents that a ``$all`` read must start at an existing event's
  position. If ``after`` is not one, reading falls back to the beginning and skips.
* A command's record (global idempotency) is one event in its own stream,
  ``ordermesh-command-<id>``, written with the command's events in one multi-stream
  append (KurrentDB 25.1 and later), so the record exists exactly when the events do.
  The record stream is created expecting no stream: a second command with that id
  fails the append, and the record says where the first one went. A record past the
  window is written over (expecting its revision).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from uuid import UUID

from kurrentdbclient import AsyncKurrentDBClient
from kurrentdbclient import NewEvent as KdbNewEvent
from kurrentdbclient import NewEvents as KdbNewEvents
from kurrentdbclient import RecordedEvent as KdbRecordedEvent
from kurrentdbclient import StreamState as KdbStreamState
from kurrentdbclient.common import AsyncRecordedEventIterator
from kurrentdbclient.exceptions import (
    ConsumerTooSlowError,
    DiscoveryFailedError,
    InvalidCommitPositionError,
    KurrentDBClientError,
    NotFoundError,
    ServiceUnavailableError,
    WrongCurrentVersionError,
)

from domain.event_store import (
    DEFAULT_IDEMPOTENCY_WINDOW,
    AppendResult,
    CommandRecord,
    DuplicateCommand,
    EventStoreError,
    EventStoreUnavailable,
    ExpectedRevision,
    NewEvent,
    RecordedEvent,
    StoredCommand,
    StreamState,
    WrongExpectedRevision,
)
from telemetry.metrics import timed

_STREAM_STATES: dict[StreamState, KdbStreamState] = {
    StreamState.ANY: KdbStreamState.ANY,
    StreamState.NO_STREAM: KdbStreamState.NO_STREAM,
    StreamState.EXISTS: KdbStreamState.EXISTS,
}

# Server-side filter on stream names: kurrentdbclient anchors each pattern as a full
# match, so this excludes every stream whose name starts with "$".
#: Streams of command records, one per command id, and the record's event type: kept out
#: of ``$all`` reads like system streams (they are the store's bookkeeping, not events).
COMMAND_STREAM_PREFIX = "ordermesh-command-"
_EXCLUDE_SYSTEM_STREAMS = (r"\$.+", COMMAND_STREAM_PREFIX + ".+")
COMMAND_RECORDED = "ordermesh.command_recorded"


def command_stream(command_id: str) -> str:
    return COMMAND_STREAM_PREFIX + command_id


def to_current_version(expected: ExpectedRevision) -> int | KdbStreamState:
    """Translate the port's expected revision; both count from 0, so ints pass through.

    A negative int is rejected here because kurrentdbclient would only ``assert`` on it.
    """
    if isinstance(expected, StreamState):
        return _STREAM_STATES[expected]
    if expected < 0:
        raise ValueError(f"expected revision must be >= 0 or a StreamState, got {expected!r}")
    return expected


def is_system_event(event: KdbRecordedEvent) -> bool:
    """System events (and command records) are kept out of ``read_all``/``subscribe_all``:
    no projection wants them."""
    return (
        event.type.startswith("$")
        or event.stream_name.startswith("$")
        or event.stream_name.startswith(COMMAND_STREAM_PREFIX)
    )


def to_recorded_event(event: KdbRecordedEvent) -> RecordedEvent:
    """Convert; ``recorded_at`` is missing only if the server omitted its ``created`` stamp."""
    return RecordedEvent(
        id=str(event.id),
        stream=event.stream_name,
        revision=event.stream_position,
        position=event.commit_position,
        type=event.type,
        data=event.data,
        metadata=event.metadata,
        recorded_at=event.recorded_at or datetime.now(UTC),
    )


def client_uri(uri: str) -> str:
    """The URI as ``kurrentdbclient`` takes it. ``kurrentdb+discover://a,b,c`` names a
    cluster by its nodes, as other EventStoreDB clients take it, but kurrentdbclient
    accepts ``+discover`` with one host only (a DNS name for the cluster) and reads several
    hosts without it as gossip seeds, from which it discovers the cluster all the same:
    so the several-host form drops ``+discover``. Anything else is passed as it is."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme.endswith("+discover"):
        return uri
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = authority.rpartition("@")[2]
    if "," not in hosts:
        return uri
    return f"{scheme.removesuffix('+discover')}://{rest}"


class KurrentDBEventStore:
    """The server adapter; create it with :meth:`connect`, which owns the client."""

    system = "kurrentdb"

    def __init__(
        self, client: AsyncKurrentDBClient, idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    ) -> None:
        self._client = client
        self._closed = False
        self.idempotency_window = idempotency_window

    @classmethod
    async def connect(
        cls, uri: str, *, idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    ) -> KurrentDBEventStore:
        """Connect to ``esdb://``/``kurrentdb://`` (``+discover`` too, with one host or a
        cluster's several: :func:`client_uri`).

        With a single non-discover target this does no I/O (gRPC connects lazily), so an
        absent server shows up on the first operation; cluster discovery fails here. A
        malformed URI raises ``ValueError`` unchanged: it is a configuration bug, not an
        outage.
        """
        client = AsyncKurrentDBClient(client_uri(uri))
        try:
            await client.connect()
        except KurrentDBClientError as exc:
            raise EventStoreUnavailable(f"cannot connect to event store: {exc}") from exc
        return cls(client, idempotency_window)

    # -- append ---------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_revision: ExpectedRevision,
        command: CommandRecord | None = None,
    ) -> AppendResult:
        """Append atomically; event ids make the library's own retries idempotent."""
        if not events:
            raise ValueError("append needs at least one event")
        current_version = to_current_version(expected_revision)
        self._check_open()
        new_events = [
            KdbNewEvent(
                type=event.type,
                data=event.data,
                metadata=event.metadata,
                id=UUID(event.id),
                content_type="application/json",
            )
            for event in events
        ]
        try:
            with timed("append"):
                if command is None:
                    position = await self._client.append_to_stream(
                        stream, events=new_events, current_version=current_version
                    )
                else:
                    position = await self._append_with_record(
                        stream, new_events, current_version, command
                    )
        except WrongCurrentVersionError as exc:
            actual = exc.actual_version
            # The library reports a missing stream as StreamState.NO_STREAM; the port as None.
            raise WrongExpectedRevision(
                stream, expected_revision, actual if isinstance(actual, int) else None
            ) from exc
        except KurrentDBClientError as exc:
            raise self._error(exc) from exc

        # Success under an int or NO_STREAM pins down where the batch landed; under ANY or
        # EXISTS only the stream itself knows, so look for our last event from the end.
        if isinstance(expected_revision, int):
            revision = expected_revision + len(events)
        elif expected_revision is StreamState.NO_STREAM:
            revision = len(events) - 1
        else:
            revision = await self._revision_of(stream, events[-1].id, position)
        return AppendResult(revision=revision, position=position)

    async def _append_with_record(
        self,
        stream: str,
        new_events: list[KdbNewEvent],
        current_version: int | KdbStreamState,
        command: CommandRecord,
    ) -> int:
        """The events and the command's record in one multi-stream append; a record
        already there means a duplicate, unless it has left the window."""
        record_version: int | KdbStreamState = KdbStreamState.NO_STREAM
        for _ in range(2):  # at most: the first try, then once over an expired record
            record = KdbNewEvent(
                type=COMMAND_RECORDED,
                data=json.dumps(
                    {
                        "digest": command.digest,
                        "stream": stream,
                        "last_event_id": str(new_events[-1].id),
                        "recorded_at": time.time(),
                    }
                ).encode(),
            )
            try:
                position: int = await self._client.multi_append_to_stream(
                    [
                        KdbNewEvents(stream, new_events, current_version),
                        KdbNewEvents(command_stream(command.id), [record], record_version),
                    ]
                )
                return position
            except WrongCurrentVersionError:
                found = await self._command_record(command.id)
                if found is None:
                    raise  # the record stream is free: it was the events' stream
                first, revision, fresh = found
                if fresh:
                    raise DuplicateCommand(first) from None
                record_version = revision
        raise EventStoreError(f"command {command.id!r}: its record kept changing")

    async def stored_command(self, command_id: str) -> StoredCommand | None:
        found = await self._command_record(command_id)
        return found[0] if found is not None and found[2] else None

    async def _command_record(self, command_id: str) -> tuple[StoredCommand, int, bool] | None:
        """The record of a command, its revision, and whether it is within the window."""
        records = await self._read_stream(command_stream(command_id), 0)
        if not records:
            return None
        last = records[-1]
        doc = json.loads(last.data)
        revision = await self._revision_of(doc["stream"], doc["last_event_id"], last.position)
        first = StoredCommand(command_id, doc.get("digest"), doc["stream"], revision)
        fresh = float(doc["recorded_at"]) >= time.time() - self.idempotency_window
        return first, last.revision, fresh

    async def _revision_of(self, stream: str, event_id: str, position: int) -> int:
        """Find the revision of an event known to be stored near the end of ``stream``."""
        try:
            source = await self._client.read_stream(stream, backwards=True)
            try:
                async for event in source:
                    if str(event.id) == event_id:
                        return event.stream_position
            finally:
                await source.stop()
        except KurrentDBClientError as exc:
            # Not EventStoreUnavailable: the events *were* written.
            raise EventStoreError(
                f"appended to {stream!r} at position {position}, but reading back its"
                f" revision failed: {exc}"
            ) from exc
        raise EventStoreError(f"appended event {event_id} not found in {stream!r}")

    # -- reads ----------------------------------------------------------------------------

    async def read_stream(self, stream: str, from_revision: int = 0) -> list[RecordedEvent]:
        """Read one stream; the server answers "not found" for a stream never written."""
        with timed("read_stream"):
            return await self._read_stream(stream, from_revision)

    async def _read_stream(self, stream: str, from_revision: int) -> list[RecordedEvent]:
        self._check_open()
        try:
            source = await self._client.read_stream(stream, stream_position=max(from_revision, 0))
            try:
                return [to_recorded_event(event) async for event in source]
            finally:
                await source.stop()
        except NotFoundError:
            return []
        except KurrentDBClientError as exc:
            raise self._error(exc) from exc

    async def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Read a page of ``$all``.

        No server-side limit is set because some events are dropped on the client after
        the server has counted them; the read is stopped as soon as the page is full.
        """
        if limit <= 0:
            return []
        with timed("read_all"):
            return await self._read_page(after, limit)

    async def _read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        page: list[RecordedEvent] = []
        events = self._events(after, live=False)
        try:
            async for event in events:
                page.append(event)
                if len(page) >= limit:
                    break
        finally:
            await events.aclose()
        return page

    def subscribe_all(self, after: int = 0) -> AsyncGenerator[RecordedEvent, None]:
        """Catch up from ``after``, then follow live events until the iterator is closed.

        Close it (``aclose()``, or leave an ``async for`` that owns it) to cancel the
        server-side subscription promptly instead of at garbage collection.
        """
        return self._events(after, live=True)

    async def _events(self, after: int, *, live: bool) -> AsyncGenerator[RecordedEvent, None]:
        """Yield non-system events with position > ``after`` from ``$all``.

        ``skip_to`` follows the last yielded position so that restarting the read (after
        an inexact start position, or after the server dropped a slow live subscriber)
        never repeats an event.
        """
        self._check_open()
        skip_to = after
        start: int | None = after or None  # None reads from the very first event
        while True:
            source: AsyncRecordedEventIterator
            try:
                if live:
                    # subscribe_to_all's commit_position is exclusive.
                    with timed("subscribe"):
                        source = await self._client.subscribe_to_all(
                            commit_position=start,
                            filter_exclude=_EXCLUDE_SYSTEM_STREAMS,
                            filter_by_stream_name=True,
                        )
                else:
                    # read_all's commit_position is inclusive; skip_to drops that event.
                    source = await self._client.read_all(
                        commit_position=start,
                        filter_exclude=_EXCLUDE_SYSTEM_STREAMS,
                        filter_by_stream_name=True,
                    )
                try:
                    async for event in source:
                        if is_system_event(event):
                            continue
                        if skip_to > 0 and event.commit_position <= skip_to:
                            continue
                        skip_to = event.commit_position
                        yield to_recorded_event(event)
                finally:
                    await source.stop()
            except InvalidCommitPositionError as exc:
                if start is None:
                    raise self._error(exc) from exc
                start = None
                continue
            except ConsumerTooSlowError as exc:
                if not live:
                    raise self._error(exc) from exc
                start = skip_to or None
                continue
            except KurrentDBClientError as exc:
                raise self._error(exc) from exc
            if not live:
                return
            # A catch-up subscription never ends by itself; the server or channel went away.
            self._check_open()
            raise EventStoreUnavailable("the $all subscription was ended by the server")

    # -- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the client; later calls then fail as EventStoreUnavailable.

        Without the flag they would hit the closed client, which deletes its connection
        and answers the next call with an ``AttributeError``.
        """
        if self._closed:
            return
        self._closed = True
        await self._client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EventStoreUnavailable("event store is closed")

    def _error(self, exc: KurrentDBClientError) -> EventStoreError:
        """Map a library error onto the port, which promises only EventStoreError subclasses.

        Timeouts stay plain ``EventStoreError``: an append may have been written.
        """
        if self._closed:
            return EventStoreUnavailable("event store is closed")
        if isinstance(exc, ServiceUnavailableError | DiscoveryFailedError):
            return EventStoreUnavailable(str(exc))
        return EventStoreError(f"{type(exc).__name__}: {exc}")
