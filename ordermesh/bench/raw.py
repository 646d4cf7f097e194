"""Raw nats-py baselines: what NATS itself allows from Python on this machine, now."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import PubAck, StorageType, StreamConfig

from broker.connection import connect, request_served
from ordermesh.bench.measure import Result, closed_loop

BODY = b"x" * 200
DRAIN_TIMEOUT = 10.0


async def drive_requests(
    client: NATS, subject: str, body: bytes, *, concurrency: int, duration: float
) -> tuple[int, float]:
    """The request driver of every echo case: nats-py ``request`` with ``concurrency`` in
    flight, a short warm-up, then ``duration`` measured. Sharing it means two echo cases
    differ only in who answers. Returns (requests answered, elapsed seconds)."""

    async def op(_: int) -> None:
        await client.request(subject, body, timeout=5)

    await closed_loop(op, concurrency=concurrency, duration=min(duration, 0.3))  # warm-up
    return await closed_loop(op, concurrency=concurrency, duration=duration)


async def request_reply(
    url: str, *, concurrency: int, duration: float, body: bytes = BODY
) -> Result:
    """nats-py's own responder echoing ``body`` (its content does not matter to it, its
    size does: callers comparing with a JSON service pass that service's body)."""
    responder = await connect(url)
    client = await connect(url)
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await responder.subscribe("bench.raw.echo", cb=echo)
        await responder.flush()
        # Measuring should not start, or fail, on a first "no responders".
        await request_served(client, "bench.raw.echo", body, timeout=5, attempts=50)
        done, elapsed = await drive_requests(
            client, "bench.raw.echo", body, concurrency=concurrency, duration=duration
        )
    finally:
        await client.close()
        await responder.close()
    return Result(
        f"raw.request_reply.c{concurrency}",
        "raw",
        "rate",
        done / elapsed,
        "req/s",
        ops=done,
        seconds=elapsed,
    )


#: A consumer under test: subscribe on ``subject`` with this connection, call ``counted``
#: once per message, and return what stops it.
Attach = Callable[[NATS, str, Callable[[], None]], Awaitable[Callable[[], Awaitable[None]]]]


async def _raw_subscriber(
    nc: NATS, subject: str, counted: Callable[[], None]
) -> Callable[[], Awaitable[None]]:
    async def count(_msg: Msg) -> None:
        counted()

    sub = await nc.subscribe(subject, cb=count, pending_msgs_limit=-1, pending_bytes_limit=-1)
    return sub.unsubscribe


async def publish_subscribe(
    url: str,
    *,
    duration: float,
    name: str = "raw.publish_subscribe",
    headers: dict[str, str] | None = None,
    attach: Attach = _raw_subscriber,
    baseline: str | None = None,
    target: float | None = None,
) -> Result:
    """Publish as fast as possible for ``duration``; rate is what the consumer received."""
    subscriber = await connect(url, pending_size=512 * 1024 * 1024)
    publisher = await connect(url)
    received = 0
    last = 0.0
    expected: int | None = None
    all_in = asyncio.Event()
    subject = f"bench.fan.{name}"

    def counted() -> None:
        nonlocal received, last
        received += 1
        last = time.perf_counter()
        if expected is not None and received >= expected:
            all_in.set()

    try:
        stop = await attach(subscriber, subject, counted)
        await subscriber.flush()
        sent = 0
        start = time.perf_counter()
        deadline = start + duration
        while time.perf_counter() < deadline:
            for _ in range(500):
                await publisher.publish(subject, BODY, headers=headers)
            sent += 500
            await asyncio.sleep(0)  # let the subscriber's callbacks run
        await publisher.flush()
        expected = sent
        if received >= sent:
            all_in.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await all_in.wait()
        await stop()
    finally:
        await publisher.close()
        await subscriber.close()
    elapsed = (last or time.perf_counter()) - start
    return Result(
        name,
        "raw" if baseline is None else "tap",
        "rate",
        received / elapsed,
        "msg/s",
        ops=received,
        seconds=elapsed,
        baseline=baseline,
        target=target,
        extra={"sent": sent, "lost": sent - received},
    )


async def jetstream_publish(
    url: str, *, in_flight: int, duration: float, variant: str = "", baseline: str | None = None
) -> Result:
    nc = await connect(url)
    js = nc.jetstream(publish_async_max_pending=max(in_flight, 1))
    stream = f"BENCH_RAW_{in_flight}"
    await js.add_stream(
        StreamConfig(name=stream, subjects=[f"bench.js{in_flight}.>"], storage=StorageType.FILE)
    )
    subject = f"bench.js{in_flight}.x"
    try:
        if in_flight == 1:

            async def op(_: int) -> None:
                await js.publish(subject, BODY)

            done, elapsed = await closed_loop(op, concurrency=1, duration=duration)
        else:
            done, elapsed = await _pipelined(js, subject, in_flight, duration)
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return Result(
        f"raw.jetstream_publish.w{in_flight}{variant}",
        "raw",
        "rate",
        done / elapsed,
        "msg/s",
        ops=done,
        seconds=elapsed,
        baseline=baseline,
    )


async def _pipelined(
    js: nats.js.JetStreamContext, subject: str, window: int, duration: float
) -> tuple[int, float]:
    slots = asyncio.Semaphore(window)
    acked = 0
    failed = 0

    def on_ack(future: asyncio.Future[PubAck]) -> None:
        nonlocal acked, failed
        slots.release()
        if future.cancelled() or future.exception() is not None:
            failed += 1
        else:
            acked += 1

    start = time.perf_counter()
    deadline = start + duration
    pending: list[asyncio.Future[PubAck]] = []
    while time.perf_counter() < deadline:
        await slots.acquire()
        future = await js.publish_async(subject, BODY)
        future.add_done_callback(on_ack)
        pending.append(future)
        if len(pending) > 10 * window:
            pending = [f for f in pending if not f.done()]
    await asyncio.gather(*pending, return_exceptions=True)
    if failed:
        raise RuntimeError(f"{failed} JetStream publishes failed")
    return acked, time.perf_counter() - start
