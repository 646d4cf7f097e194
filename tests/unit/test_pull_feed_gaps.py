"""The pull feed's one check on what the server sends: deliveries without a hole.

Its consumer acknowledges nothing, so a message the server pushed to a connection that
died is never sent again; the next one then carries a delivery number past the hole. The
real thing happens when a cluster node dies under the client (tests/integration/
test_nats_cluster.py, make chaos); here the messages are made to measure."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.msg import Msg

from broker.pull_feed import FeedLost, PullFeed


class _Publisher:
    """Where the feed sends its pull requests: nowhere, counted."""

    def __init__(self) -> None:
        self.requests = 0

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.requests += 1


def delivery(stream_seq: int, consumer_seq: int) -> Msg:
    reply = f"$JS.ACK.EVENTS.c1.1.{stream_seq}.{consumer_seq}.1700000000000000000.0"
    return Msg(None, subject="events.order.placed", reply=reply, data=b"{}")  # type: ignore[arg-type]


def feed() -> PullFeed:
    nc: Any = _Publisher()
    return PullFeed(nc, "EVENTS", ">", start_sequence=1, window=8)


async def test_deliveries_in_sequence_are_handed_over() -> None:
    f = feed()
    for seq in (1, 2, 3):
        await f._on_msg(delivery(10 + seq, seq))
    assert [m.metadata.sequence.stream for m in await f.batch(10)] == [11, 12, 13]


async def test_a_hole_hands_over_what_came_before_then_loses_the_feed() -> None:
    f = feed()
    for stream_seq, consumer_seq in ((11, 1), (12, 2), (15, 5), (16, 6)):
        await f._on_msg(delivery(stream_seq, consumer_seq))
    assert [m.metadata.sequence.stream for m in await f.batch(10)] == [11, 12]
    with pytest.raises(FeedLost, match="delivery 5 after 2"):
        await f.batch(10)
