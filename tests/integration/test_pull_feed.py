"""The pull feed over a real nats-server: order, the window it never exceeds, and how it
reports a consumer that is gone."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from broker.pull_feed import FeedLost, PullFeed
from infra.nats_server import EmbeddedNatsServer
from tests.conftest import eventually

STREAM = "FEEDTEST"


async def _stream_with(nc: NATS, count: int) -> None:
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=["feed.>"])
    for i in range(count):
        await js.publish(f"feed.{i % 3}", str(i).encode())


async def _consumer_state(nc: NATS, feed: PullFeed) -> tuple[int, int, int]:
    """What the server has delivered to the feed, still holds for it, and waits to send."""
    info = await nc.jetstream().consumer_info(STREAM, feed._consumer or "")
    return info.delivered.stream_seq or 0, info.num_pending or 0, info.num_waiting or 0


async def test_delivers_in_stream_order_from_the_start_sequence(nc: NATS) -> None:
    await _stream_with(nc, 700)
    async with PullFeed(nc, STREAM, "feed.>", start_sequence=51, window=64) as feed:
        received: list[int] = []
        sizes: list[int] = []
        while len(received) < 650:
            batch = await feed.batch(50)
            sizes.append(len(batch))
            received += [m.metadata.sequence.stream for m in batch]
        assert received == list(range(51, 701))
        assert [m.data for m in batch][-1] == b"699"
        assert max(sizes) <= 50
        assert feed.pulls > 650 // 64, "the window was topped up, not asked for at once"


async def test_holds_no_more_than_its_window_however_far_behind(nc: NATS) -> None:
    await _stream_with(nc, 500)
    async with PullFeed(nc, STREAM, "feed.>", start_sequence=1, window=40) as feed:
        taken: list[int] = []
        while len(taken) < 10:
            taken += [m.metadata.sequence.stream for m in await feed.batch(10 - len(taken))]

        # The server sent the window and holds the rest until asked: no pull waits.
        async def window_sent() -> bool:
            return await _consumer_state(nc, feed) == (40, 460, 0)

        await eventually(window_sent)
        # However the batches fall, the server never got ahead of what was taken by more
        # than the window.
        while len(taken) < 500:
            taken += [m.metadata.sequence.stream for m in await feed.batch(25)]
            delivered, _pending, _waiting = await _consumer_state(nc, feed)
            assert delivered <= len(taken) + 40, (delivered, len(taken))
            assert feed.in_flight <= 40
        assert taken == list(range(1, 501))


async def test_an_expired_pull_is_replaced(nc: NATS) -> None:
    await _stream_with(nc, 0)
    short = {"window": 8, "expires": 0.3, "heartbeat": 0.1}
    async with PullFeed(nc, STREAM, "feed.>", start_sequence=1, **short) as feed:
        waiting = asyncio.create_task(feed.batch(8))

        async def repulled() -> bool:
            return feed.pulls >= 2

        await eventually(repulled)
        await nc.jetstream().publish("feed.late", b"late")
        batch = await waiting
        assert [m.data for m in batch] == [b"late"]


async def test_a_deleted_consumer_is_reported(nc: NATS) -> None:
    await _stream_with(nc, 0)
    async with PullFeed(nc, STREAM, "feed.>", start_sequence=1) as feed:
        waiting = asyncio.create_task(feed.batch(8))
        await eventually(lambda: _has_waiting_pull(nc, feed))
        await nc.jetstream().delete_consumer(STREAM, feed._consumer or "")
        with pytest.raises(FeedLost, match="409"):
            await waiting


async def _has_waiting_pull(nc: NATS, feed: PullFeed) -> bool:
    return (await _consumer_state(nc, feed))[2] > 0


async def test_a_silent_server_is_reported(nats_server: EmbeddedNatsServer, nc: NATS) -> None:
    await _stream_with(nc, 0)
    async with PullFeed(nc, STREAM, "feed.>", start_sequence=1, heartbeat=0.2) as feed:
        waiting = asyncio.create_task(feed.batch(8))
        await eventually(lambda: _has_waiting_pull(nc, feed))
        assert nats_server.pid is not None
        os.kill(nats_server.pid, signal.SIGSTOP)  # alive, connected, and saying nothing
        try:
            with pytest.raises(FeedLost, match="no message or heartbeat"):
                await waiting
        finally:
            os.kill(nats_server.pid, signal.SIGCONT)


async def test_a_feed_that_cannot_open_says_why(nc: NATS) -> None:
    with pytest.raises(NotFoundError):
        async with PullFeed(nc, "NO_SUCH_STREAM", "feed.>", start_sequence=1):
            pass
