"""Pre-encoded headers and pipelined JetStream acks, against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from nats import errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError

from broker import wire
from broker.acked_publisher import AckedPublisher
from broker.jetstream import ensure_streams
from broker.subjects import EVENTS_STREAM

HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "0b7e4f3a-6d1c-4d7e-9a55-2f0d5b1c9e01",
    "Nats-Msg-Id": "0b7e4f3a-6d1c-4d7e-9a55-2f0d5b1c9e01",
    "ce-type": "order.placed",
    "ce-time": "2026-11-29T12:00:00.000000Z",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


async def _received(nc: NATS, subject: str, count: int) -> tuple[list[Msg], asyncio.Future[None]]:
    got: list[Msg] = []
    all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def keep(msg: Msg) -> None:
        got.append(msg)
        if len(got) == count and not all_in.done():
            all_in.set_result(None)

    await nc.subscribe(subject, cb=keep)
    await nc.flush()
    return got, all_in


def test_the_fast_path_is_the_one_in_use() -> None:
    # If a nats-py upgrade drops the internals, publishing still works (the public path)
    # but this fails, so the slowdown cannot pass unnoticed.
    assert wire.FAST_PATH


async def test_an_encoded_block_reads_back_like_nats_py_own(nc: NATS) -> None:
    headers = HEADERS | {"ce-source": "evil\r\nInjected: yes", "baggage": "  k=v  "}
    got, all_in = await _received(nc, "wire.test", 2)
    await wire.publish_encoded(nc, "wire.test", b"body", headers)
    await nc.publish("wire.test", b"body", headers=dict(headers))
    async with asyncio.timeout(5):
        await all_in
    ours, theirs = got
    assert ours.data == theirs.data == b"body"
    assert ours.headers == theirs.headers
    assert ours.headers is not None
    assert ours.headers["ce-source"] == "evil  Injected: yes"  # no header was injected
    assert "Injected" not in ours.headers
    assert ours.headers["baggage"] == "k=v"


async def test_without_the_internals_the_public_publish_carries_the_same_headers(
    nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    got, all_in = await _received(nc, "wire.test", 2)
    await wire.publish_encoded(nc, "wire.test", b"fast", HEADERS)
    monkeypatch.setattr(wire, "FAST_PATH", False)
    await wire.publish_encoded(nc, "wire.test", b"public", HEADERS)
    async with asyncio.timeout(5):
        await all_in
    fast, public = got
    assert (fast.data, public.data) == (b"fast", b"public")
    assert fast.headers == public.headers == HEADERS


async def test_bad_keys_and_oversized_payloads_are_refused(nc: NATS) -> None:
    with pytest.raises(errors.BadHeaderError):
        await wire.publish_encoded(nc, "wire.test", b"", {"bad key": "v"})
    with pytest.raises(errors.MaxPayloadError):
        await wire.publish_encoded(nc, "wire.test", b"x" * (nc.max_payload + 1), HEADERS)


async def test_a_closed_connection_is_refused(nc: NATS) -> None:
    await nc.close()
    with pytest.raises(errors.ConnectionClosedError):
        await wire.publish_encoded(nc, "wire.test", b"", HEADERS)


async def test_acks_come_back_in_order_and_duplicates_are_flagged(nc: NATS) -> None:
    await ensure_streams(nc.jetstream())
    publisher = AckedPublisher(nc)
    await publisher.start()
    try:
        futures = [
            await publisher.publish(
                "events.order.placed",
                f'{{"n":{i}}}'.encode(),
                HEADERS | {"Nats-Msg-Id": f"wire-{i}", "ce-position": str(i)},
            )
            for i in range(1, 51)
        ]
        again = await publisher.publish(
            "events.order.placed", b"{}", HEADERS | {"Nats-Msg-Id": "wire-7"}
        )
        async with asyncio.timeout(10):
            acks = await asyncio.gather(*futures)
            repeat = await again
        assert [a.seq for a in acks] == list(range(1, 51))
        assert {a.stream for a in acks} == {EVENTS_STREAM}
        assert not any(a.duplicate for a in acks)
        assert repeat.duplicate and repeat.seq == 7
        assert publisher.in_flight == 0
        stored = await nc.jetstream().get_msg(EVENTS_STREAM, 50)
        assert stored.headers is not None and stored.headers["ce-position"] == "50"
        assert stored.headers["traceparent"] == HEADERS["traceparent"]
    finally:
        await publisher.stop()


async def test_no_stream_fails_the_publish_not_the_publisher(nc: NATS) -> None:
    publisher = AckedPublisher(nc)
    await publisher.start()
    try:
        future = await publisher.publish("nostream.here", b"{}", HEADERS)
        with pytest.raises(NoStreamResponseError):
            async with asyncio.timeout(5):
                await future
        assert publisher.in_flight == 0
    finally:
        await publisher.stop()


async def test_stop_cancels_what_is_still_waiting(nc: NATS) -> None:
    publisher = AckedPublisher(nc)
    with pytest.raises(RuntimeError):
        await publisher.publish("events.order.placed", b"{}", HEADERS)
    await publisher.start()
    # A stream that never answers: nobody listens and no responders are reported for
    # a plain subscriber, so the ack stays pending until stop().
    silent = await nc.subscribe("silent.subject")
    future = await publisher.publish("silent.subject", b"{}", HEADERS)
    await nc.flush()
    assert publisher.in_flight == 1
    await publisher.stop()
    assert future.cancelled()
    await silent.unsubscribe()
