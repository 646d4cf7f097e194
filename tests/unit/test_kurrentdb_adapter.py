"""What the KurrentDB adapter can prove without a server.

Behaviour against a real server is the shared conformance suite's job (it runs when
``ORDERMESH_EVENTSTORE_URL`` points at one; none can run on the CI machine). Here: the
translations, and that an absent server surfaces as ``EventStoreUnavailable`` quickly
rather than as a library error or a hang.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

import pytest
from kurrentdbclient import AsyncKurrentDBClient
from kurrentdbclient import RecordedEvent as KdbRecordedEvent
from kurrentdbclient import StreamState as KdbStreamState
from kurrentdbclient.connection_spec import ConnectionSpec
from kurrentdbclient.exceptions import ConsumerTooSlowError, InvalidCommitPositionError

from domain.event_store import EventStoreUnavailable, NewEvent, StreamState
from infra.eventstore.kurrentdb import (
    KurrentDBEventStore,
    client_uri,
    is_system_event,
    to_current_version,
    to_recorded_event,
)

# kurrentdbclient retries a refused append (reconnect, then one more try after 0.5 s):
# measured at ~0.7 s here. The bound leaves room for a slow machine.
FAIL_FAST_SECONDS = 5.0


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def store() -> AsyncIterator[KurrentDBEventStore]:
    # A single non-discover target connects lazily, so connect() succeeds without a server.
    store = await KurrentDBEventStore.connect(f"esdb://127.0.0.1:{_unused_port()}?tls=false")
    yield store
    await store.close()


def _event() -> NewEvent:
    return NewEvent(type="OrderPlaced", data=b'{"order_id": "o-1"}')


async def test_append_without_server_raises_unavailable_quickly(
    store: KurrentDBEventStore,
) -> None:
    started = time.monotonic()
    async with asyncio.timeout(10):
        with pytest.raises(EventStoreUnavailable):
            await store.append("order-1", [_event()], StreamState.NO_STREAM)
    assert time.monotonic() - started < FAIL_FAST_SECONDS


async def test_reads_without_server_raise_unavailable(store: KurrentDBEventStore) -> None:
    async with asyncio.timeout(10):
        with pytest.raises(EventStoreUnavailable):
            await store.read_stream("order-1")
        with pytest.raises(EventStoreUnavailable):
            await store.read_all()
        subscription = store.subscribe_all()
        try:
            with pytest.raises(EventStoreUnavailable):
                await anext(subscription)
        finally:
            await subscription.aclose()


async def test_failed_discovery_raises_unavailable_on_connect() -> None:
    uri = f"esdb+discover://127.0.0.1:{_unused_port()}?tls=false&MaxDiscoverAttempts=1"
    async with asyncio.timeout(10):
        with pytest.raises(EventStoreUnavailable):
            await KurrentDBEventStore.connect(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:2113",  # not an EventStoreDB scheme
        "esdb://127.0.0.1:2113",  # TLS is the default, and then credentials are required
    ],
)
async def test_malformed_uri_is_a_configuration_error(uri: str) -> None:
    with pytest.raises(ValueError):
        await KurrentDBEventStore.connect(uri)


async def test_close_is_idempotent_and_later_calls_fail(store: KurrentDBEventStore) -> None:
    await store.close()
    await store.close()
    with pytest.raises(EventStoreUnavailable, match="closed"):
        await store.append("order-1", [_event()], StreamState.ANY)
    with pytest.raises(EventStoreUnavailable, match="closed"):
        await store.read_stream("order-1")
    with pytest.raises(EventStoreUnavailable, match="closed"):
        await store.read_all()
    with pytest.raises(EventStoreUnavailable, match="closed"):
        await anext(store.subscribe_all())


async def test_empty_append_is_rejected_before_any_io(store: KurrentDBEventStore) -> None:
    with pytest.raises(ValueError):
        await store.append("order-1", [], StreamState.ANY)


@pytest.mark.parametrize(
    ("expected", "current_version"),
    [
        (StreamState.ANY, KdbStreamState.ANY),
        (StreamState.NO_STREAM, KdbStreamState.NO_STREAM),
        (StreamState.EXISTS, KdbStreamState.EXISTS),
        (0, 0),
        (41, 41),
    ],
)
def test_expected_revision_mapping(
    expected: int | StreamState, current_version: int | KdbStreamState
) -> None:
    assert to_current_version(expected) == current_version


def test_negative_expected_revision_is_rejected() -> None:
    with pytest.raises(ValueError):
        to_current_version(-1)


def _kdb_event(
    *, type_: str = "OrderPlaced", stream: str = "order-1", recorded_at: datetime | None = None
) -> KdbRecordedEvent:
    return KdbRecordedEvent(
        type=type_,
        data=b'{"order_id": "o-1"}',
        metadata=b'{"correlation_id": "c-1"}',
        content_type="application/json",
        id=uuid.uuid4(),
        stream_name=stream,
        stream_position=3,
        commit_position=12345,
        prepare_position=12345,
        recorded_at=recorded_at,
    )


def test_recorded_event_translation() -> None:
    stamp = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    source = _kdb_event(recorded_at=stamp)
    event = to_recorded_event(source)
    assert (event.id, event.stream, event.revision, event.position) == (
        str(source.id),
        "order-1",
        3,
        12345,
    )
    assert (event.type, event.data, event.metadata) == (
        "OrderPlaced",
        source.data,
        source.metadata,
    )
    assert event.recorded_at == stamp


def test_missing_recorded_at_falls_back_to_an_aware_now() -> None:
    before = datetime.now(UTC)
    event = to_recorded_event(_kdb_event(recorded_at=None))
    assert event.recorded_at.tzinfo is not None
    assert before <= event.recorded_at <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("type_", "stream", "system"),
    [
        ("OrderPlaced", "order-1", False),
        ("Result", "order-1", False),  # hidden by kurrentdbclient's default filter
        ("$metadata", "order-1", True),
        ("OrderPlaced", "$ce-order", True),
        ("PersistentConfig1", "$persistentSubscriptionConfig", True),
    ],
)
def test_system_events_are_recognised(type_: str, stream: str, system: bool) -> None:
    assert is_system_event(_kdb_event(type_=type_, stream=stream)) is system


# -- $all paging and resumption, against a stand-in for the client ---------------------
# The stand-in replays what kurrentdbclient 1.3.5's source and README say the server does
# (read_all's commit_position is inclusive); it checks the adapter's own bookkeeping only.


class _FakeSource:
    def __init__(self, events: list[KdbRecordedEvent], error: Exception | None) -> None:
        self._events = iter(events)
        self._error = error
        self.stopped = False

    def __aiter__(self) -> _FakeSource:
        return self

    async def __anext__(self) -> KdbRecordedEvent:
        for event in self._events:
            return event
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    async def stop(self, **_: object) -> None:
        self.stopped = True


class _FakeClient:
    def __init__(self, log: list[KdbRecordedEvent], fail_first_with: Exception | None) -> None:
        self._log = log
        self._fail_first_with = fail_first_with
        self.starts: list[int | None] = []
        self.sources: list[_FakeSource] = []

    async def _open(self, commit_position: int | None, *, inclusive: bool) -> _FakeSource:
        self.starts.append(commit_position)
        events = [
            e
            for e in self._log
            if commit_position is None
            or e.commit_position > commit_position
            or (inclusive and e.commit_position == commit_position)
        ]
        error, self._fail_first_with = self._fail_first_with, None
        source = _FakeSource(events[:2] if error else events, error)
        self.sources.append(source)
        return source

    async def read_all(self, *, commit_position: int | None, **_: object) -> _FakeSource:
        return await self._open(commit_position, inclusive=True)

    async def subscribe_to_all(self, *, commit_position: int | None, **_: object) -> _FakeSource:
        return await self._open(commit_position, inclusive=False)

    async def close(self) -> None:
        pass


def _log() -> list[KdbRecordedEvent]:
    def at(position: int, type_: str = "OrderPlaced", stream: str = "order-1") -> KdbRecordedEvent:
        event = _kdb_event(type_=type_, stream=stream)
        return replace(event, commit_position=position, prepare_position=position)

    return [at(100), at(200, "$metadata"), at(300), at(400, stream="$ce-order"), at(500), at(600)]


def _store(client: _FakeClient) -> KurrentDBEventStore:
    return KurrentDBEventStore(cast(AsyncKurrentDBClient, client))


async def test_read_all_is_exclusive_skips_system_events_and_stops_the_read() -> None:
    client = _FakeClient(_log(), fail_first_with=None)
    page = await _store(client).read_all(after=100, limit=2)
    assert [e.position for e in page] == [300, 500]
    assert client.starts == [100]
    assert all(source.stopped for source in client.sources)
    assert [e.position for e in await _store(client).read_all()] == [100, 300, 500, 600]
    assert client.starts[-1] is None  # after=0 reads from the start, not from position 0


async def test_read_all_from_a_non_event_position_rescans_from_the_start() -> None:
    client = _FakeClient(_log(), fail_first_with=InvalidCommitPositionError("no such position"))
    page = await _store(client).read_all(after=250)
    assert [e.position for e in page] == [300, 500, 600]
    assert client.starts == [250, None]


async def test_subscription_resumes_after_the_server_drops_a_slow_consumer() -> None:
    client = _FakeClient(_log(), fail_first_with=ConsumerTooSlowError("Consumer too slow"))
    subscription = _store(client).subscribe_all()
    try:
        seen = [(await anext(subscription)).position for _ in range(4)]
    finally:
        await subscription.aclose()
    assert seen == [100, 300, 500, 600]
    assert client.starts == [None, 100]  # resumed after the last event it yielded
    assert all(source.stopped for source in client.sources)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # A cluster named by its nodes: gossip seeds for kurrentdbclient.
        (
            "kurrentdb+discover://a:2113,b:2113,c:2113?tls=false",
            "kurrentdb://a:2113,b:2113,c:2113?tls=false",
        ),
        ("esdb+discover://admin:changeit@a,b,c", "esdb://admin:changeit@a,b,c"),
        # One host (a cluster's DNS name), or no +discover: as they are.
        (
            "esdb+discover://cluster.local:2113?tls=false",
            "esdb+discover://cluster.local:2113?tls=false",
        ),
        ("kurrentdb://a:2113,b:2113?tls=false", "kurrentdb://a:2113,b:2113?tls=false"),
    ],
)
def test_cluster_uris_reach_kurrentdbclient_in_a_form_it_takes(uri: str, expected: str) -> None:
    converted = client_uri(uri)
    assert converted == expected
    ConnectionSpec(converted)  # kurrentdbclient's own parser accepts it (it refused `uri`)


async def test_a_cluster_of_several_nodes_is_discovered_from_them() -> None:
    """Three nodes nobody serves: discovery from all three fails as an outage, not as the
    configuration error kurrentdbclient gives ``+discover`` with several hosts."""
    ports = [_unused_port() for _ in range(3)]
    nodes = ",".join(f"127.0.0.1:{p}" for p in ports)
    uri = f"kurrentdb+discover://{nodes}?tls=false&MaxDiscoverAttempts=1"
    async with asyncio.timeout(20):
        with pytest.raises(EventStoreUnavailable):
            await KurrentDBEventStore.connect(uri)
