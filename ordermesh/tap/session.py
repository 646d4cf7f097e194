"""A tap: live subscriptions (with replies matched to their requests), or a replay of a
JetStream stream that then follows it live.

Callbacks only decode, filter and hand each message to a sink; nothing in them waits.
That, and generous pending limits, keep the tap reading the socket as fast as the
server writes, so it is not cut off as a slow consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from broker.subjects import (
    ALL_COMMANDS,
    ALL_EVENTS,
    ALL_PARTNERS,
    ALL_QUERIES,
    ALL_SAGAS,
    ALL_STORED,
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENTS_STREAM,
)
from broker.tasks import cancel_and_wait
from ordermesh.tap.filters import Filter
from ordermesh.tap.message import REPLY, REQUEST_KINDS, Request, Tapped, kind_of

#: What a tap with no subject watches: the requests (commands, queries, the command
#: service's calls to the partners), whose replies it matches, and the stored events.
#: Dead letters are not among them; ``ordermesh tap --since 1h 'dlq.>'`` reads them.
DEFAULT_SUBJECTS = (ALL_COMMANDS, ALL_EVENTS, ALL_QUERIES, ALL_SAGAS, ALL_PARTNERS)
REPLAY_SUBJECTS = (ALL_EVENTS, ALL_SAGAS)
REPLY_SUBJECTS = "_INBOX.>"
PENDING_MSGS = 2_000_000
PENDING_BYTES = 1024 * 1024 * 1024
REQUEST_MEMORY = 100_000

Sink = Callable[[Tapped], None]


@dataclass(frozen=True)
class Replay:
    since: timedelta | None = None
    from_seq: int | None = None
    last: int | None = None
    follow: bool = True


@dataclass
class TapOptions:
    subjects: Sequence[str] = DEFAULT_SUBJECTS
    replies: bool = True
    filter: Filter = field(default_factory=Filter)
    count: int | None = None
    timeout: float | None = None
    replay: Replay | None = None


def stream_for(subjects: Sequence[str]) -> str:
    """The stream a replay reads: ``DLQ`` for ``dlq.*`` subjects, ``EVENTS`` otherwise."""
    dlq = [s.startswith(DLQ_PREFIX) for s in subjects]
    if any(dlq) and not all(dlq):
        raise ValueError("replay either dlq.* subjects (DLQ) or event subjects (EVENTS), not both")
    return DLQ_STREAM if dlq and all(dlq) else EVENTS_STREAM


def deliver_config(replay: Replay, last_seq: int) -> ConsumerConfig:
    if replay.from_seq is not None:
        return ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, replay.from_seq)
        )
    if replay.last is not None:
        start = max(1, last_seq - replay.last + 1)
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    if replay.since is not None:
        return ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.now(UTC) - replay.since,
        )
    return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)


class Tap:
    def __init__(self, nc: NATS, options: TapOptions, sink: Sink) -> None:
        self._nc = nc
        self.options = options
        self._sink = sink
        self.shown = 0
        self.seen = 0
        self._done = asyncio.Event()
        self._requests: OrderedDict[str, Request] = OrderedDict()
        self._subs: list[Subscription] = []
        #: Set once every subscription is in place: from then on nothing is missed.
        self.ready = asyncio.Event()

    @property
    def complete(self) -> bool:
        """``--count`` reached (or a no-follow replay caught up)."""
        return self._done.is_set()

    async def run(self) -> None:
        """Tap until ``--count`` is reached, ``--timeout`` passes, or the task is cancelled."""
        try:
            await self._subscribe()
            self.ready.set()
            waiter = asyncio.create_task(self._done.wait())
            try:
                if self.options.timeout is not None:
                    await asyncio.wait({waiter}, timeout=self.options.timeout)
                else:
                    await waiter
            finally:
                await cancel_and_wait(waiter)
        finally:
            for sub in self._subs:
                with contextlib.suppress(Exception):  # the connection may already be gone
                    await sub.unsubscribe()

    async def _subscribe(self) -> None:
        if self.options.replay is not None:
            await self._replay(self.options.replay)
            return
        for subject in self.options.subjects:
            self._subs.append(
                await self._nc.subscribe(
                    subject,
                    cb=self._on_live,
                    pending_msgs_limit=PENDING_MSGS,
                    pending_bytes_limit=PENDING_BYTES,
                )
            )
        if self.options.replies:
            self._subs.append(
                await self._nc.subscribe(
                    REPLY_SUBJECTS,
                    cb=self._on_reply,
                    pending_msgs_limit=PENDING_MSGS,
                    pending_bytes_limit=PENDING_BYTES,
                )
            )
        await self._nc.flush()

    async def _replay(self, replay: Replay) -> None:
        js = self._nc.jetstream()
        stream = stream_for(self.options.subjects)
        info = await js.stream_info(stream)
        sub = await js.subscribe(
            ALL_STORED,
            stream=stream,
            ordered_consumer=True,
            config=deliver_config(replay, info.state.last_seq),
            cb=self._on_replayed,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )
        self._subs.append(sub)
        if not replay.follow:
            consumer = await sub.consumer_info()
            delivered = consumer.delivered.stream_seq if consumer.delivered else 0
            if consumer.num_pending == 0 and not delivered:
                self._done.set()  # nothing stored in that range

    def _show(self, tapped: Tapped) -> None:
        self.seen += 1
        if self._done.is_set() or not self.options.filter(tapped):
            return
        self._sink(tapped)
        self.shown += 1
        if self.options.count is not None and self.shown >= self.options.count:
            self._done.set()

    async def _on_live(self, msg: Msg) -> None:
        tapped = Tapped(
            msg.subject,
            msg.data,
            dict(msg.headers or {}),
            kind=kind_of(msg.subject),
            reply=msg.reply or None,
        )
        if msg.reply and tapped.kind in REQUEST_KINDS:
            self._requests[msg.reply] = Request(
                msg.subject,
                tapped.type,
                tapped.correlation_id,
                tapped.trace_id,
                time.perf_counter(),
            )
            while len(self._requests) > REQUEST_MEMORY:
                self._requests.popitem(last=False)
        self._show(tapped)

    async def _on_reply(self, msg: Msg) -> None:
        request = self._requests.pop(msg.subject, None)
        if request is None:
            return  # someone else's inbox traffic (JetStream acks, API replies)
        tapped = Tapped(
            msg.subject,
            msg.data,
            dict(msg.headers or {}),
            kind=REPLY,
            request=request,
            latency_ms=(time.perf_counter() - request.sent) * 1000,
        )
        self._show(tapped)

    async def _on_replayed(self, msg: Msg) -> None:
        meta = msg.metadata
        tapped = Tapped(
            msg.subject,
            msg.data,
            dict(msg.headers or {}),
            kind=kind_of(msg.subject),
            sequence=meta.sequence.stream,
        )
        self._show(tapped)
        replay = self.options.replay
        if replay is not None and not replay.follow and meta.num_pending == 0:
            self._done.set()


__all__ = ["DEFAULT_SUBJECTS", "REPLAY_SUBJECTS", "Replay", "Tap", "TapOptions"]
