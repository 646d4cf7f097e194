"""The live monitor's memory: the last messages seen on NATS, statistics per topic and per
message type, and live delivery to subscribers (the GraphQL subscriptions).

Everything here runs on the event-loop thread (the tap's callbacks add, resolvers read,
subscribers await), so nothing takes a lock. Nothing in :meth:`MessageBuffer.add` waits
either: a subscriber that cannot keep up misses messages, counted in
``ordermesh_monitor_dropped_total{reason="subscriber_full"}``, rather than slow the feed,
and the feed never pushes back on NATS. Every structure is bounded: the ring, each
subscriber's queue, the statistics' time buckets, the number of message types, and the
requests awaiting their reply.

A reply is not a message of its own: it is matched to its request (through the inbox
the tap saw on the request) and the request's stored message is *replaced* in the ring
by a copy carrying ``latency_ms`` and ``ok`` (messages are immutable, so a reader never
sees one half-updated). Subscribers received the request when it arrived, without them;
queries of the buffer (``pubsubMessages``) show them once the reply is in. The requests
are the commands, the queries, and the command service's calls to the partners
(``partners.>``, FastStream services: see :func:`reply_ok` for what their ``ok`` means).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from broker import cloudevents as ce
from ordermesh.tap.message import Tapped
from telemetry.metrics import monitor_dropped, monitor_messages

#: A topic is a subject's first token; these, and nothing else, are kept. New topics go
#: last, so that a client reading ``pubsubStats`` by position is not misled.
TOPICS = ("commands", "events", "queries", "sagas", "dlq", "partners")
#: Topics whose messages are requests: their replies are matched to them.
REQUEST_TOPICS = frozenset({"commands", "queries", "partners"})
PAYLOAD_CAP = 4096
#: A foreign publisher may send anything: headers are kept, within these bounds.
MAX_HEADERS = 64
HEADER_VALUE_CAP = 1024
#: Distinct (topic, type) pairs with statistics of their own; the rest share one entry.
MAX_TYPES = 500
OTHER_TYPE = "(other)"
#: Requests remembered until their reply arrives (the oldest are forgotten first).
MAX_AWAITING = 10_000
SUBSCRIBER_FULL = "subscriber_full"
BASE64 = "base64:"
#: nats-py's header for a status message (a "no responders" 503 arrives as a reply).
_STATUS = "Status"


@dataclass(frozen=True, slots=True)
class MonitoredMessage:
    """One message as the monitor shows it (GraphQL ``PubsubMessage``)."""

    id: str
    """``ce-id``; for a dead letter its ``Nats-Msg-Id`` (one per consumer and message,
    where the ``ce-id`` is the original event's); else ``<subject>#<stream sequence>``
    or a random uuid."""
    topic: str
    subject: str
    type: str
    source: str | None
    timestamp: datetime
    """``ce-time`` (UTC), or when it was received."""
    received_at: datetime
    trace_id: str | None
    correlation_id: str | None
    """``ce-correlationid``, else the ``correlation_id`` header (a partner request's)."""
    aggregate_id: str | None
    payload: str
    """The body's text, at most the cap in bytes (cut on a character boundary); a body
    that is not UTF-8 as ``base64:<...>``."""
    truncated: bool
    headers: Mapping[str, str]
    latency_ms: float | None = None
    """Request to reply, as the monitor saw them; None until the reply (or without one)."""
    ok: bool | None = None
    """Whether the reply was a success (:func:`reply_ok`); False for a dead letter; None
    otherwise."""


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    count: int
    """Messages since the buffer started."""
    rate_per_minute: float
    """Over the sliding window (to the second)."""
    last_seen: datetime | None
    errors: int
    """Replies to this topic's requests that :func:`reply_ok` calls failed."""


@dataclass(frozen=True, slots=True)
class TypeStats:
    topic: str
    type: str
    count: int
    rate_per_minute: float
    last_seen: datetime | None
    errors: int


def topic_of(subject: str) -> str | None:
    """``commands.order.place`` → ``commands``, ``partners.payment.charge`` →
    ``partners``; None for anything else (``_INBOX.*``, heartbeats, a foreign
    ``foo.bar``)."""
    head, dot, _rest = subject.partition(".")
    return head if dot and head in TOPICS else None


def cap_payload(data: bytes, cap: int = PAYLOAD_CAP) -> tuple[str, bool]:
    """The body as text of at most ``cap`` bytes, and whether it was cut.

    Text is cut on a UTF-8 character boundary. Whether a long body is text is decided on
    the part that is kept (a body that turns binary after the cap is shown as text). A
    body that is not UTF-8 becomes ``base64:`` and as much of the body as fits in ``cap``.
    """
    cut = len(data) > cap
    head = data[:cap] if cut else data
    try:
        return head.decode(), cut
    except UnicodeDecodeError as exc:
        if cut and exc.reason == "unexpected end of data":
            return head[: exc.start].decode(), True  # a character split by the cap
    room = max(0, (cap - len(BASE64)) // 4 * 3)
    return BASE64 + base64.b64encode(data[:room]).decode(), len(data) > room


def _bounded(headers: dict[str, str]) -> dict[str, str]:
    if len(headers) <= MAX_HEADERS and all(len(v) <= HEADER_VALUE_CAP for v in headers.values()):
        return headers
    return {k: v[:HEADER_VALUE_CAP] for k, v in itertools.islice(headers.items(), MAX_HEADERS)}


def _timestamp(value: str | None, received: datetime) -> datetime:
    if not value:
        return received
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return received
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _message_id(tapped: Tapped, topic: str) -> str:
    headers = tapped.headers
    if topic == "dlq":
        letter = headers.get(ce.NATS_MSG_ID)
        if letter:
            return letter
    found = headers.get(ce.H_ID)
    if found:
        return found
    if tapped.sequence is not None:
        return f"{tapped.subject}#{tapped.sequence}"
    return uuid.uuid4().hex


def monitored(tapped: Tapped, *, cap: int = PAYLOAD_CAP) -> MonitoredMessage | None:
    """What the monitor keeps of a tapped message; None for a reply (it is attached to
    its request instead) and for anything outside :data:`TOPICS`."""
    if tapped.request is not None:
        return None
    topic = topic_of(tapped.subject)
    if topic is None:
        return None
    headers = tapped.headers
    payload, truncated = cap_payload(tapped.data, cap)
    return MonitoredMessage(
        id=_message_id(tapped, topic),
        topic=topic,
        subject=tapped.subject,
        type=tapped.type,
        source=headers.get(ce.H_SOURCE),
        timestamp=_timestamp(headers.get(ce.H_TIME), tapped.received),
        received_at=tapped.received,
        trace_id=tapped.trace_id,
        correlation_id=tapped.correlation_id,
        aggregate_id=tapped.aggregate_id,
        payload=payload,
        truncated=truncated,
        headers=_bounded(headers),
        ok=False if topic == "dlq" else None,
    )


def reply_ok(reply: Tapped) -> bool:
    """Whether a reply was a success: not when it says ``ok: false``, nor when it is the
    server's "no responders" status.

    The same rule holds for the partners, whose answers have no ``{"ok": …}`` envelope: a
    ``ChargeReply`` with ``status: declined``, a ``BookingReply`` with ``refused``, even
    ``unavailable`` (try again later) are the partner's answer to a request it read, given
    in the normal course of business, and count as ok. They are not the monitor's to
    judge: the command that asked turns them into its own refusal (``payment_declined``,
    ``payment_unavailable``), which the commands topic counts as an error once. What
    fails on the partners topic is what only it can see: a partner that could not read
    the request (``{"ok": false, "error": …}``), and "no responders". The monitor's own
    subscription is interest enough for the server, though, so while the monitor watches
    ``partners.>`` that status never comes: partners that are down, like a partner that
    never answers (``slow-card``), leave their calls without a reply (``ok`` None), as a
    lost command does; their node on the service map turns unhealthy instead.
    """
    return not reply.failed and reply.headers.get(_STATUS) != "503"


class _Tally:
    """Counts of one topic or type: in total, and per second for the sliding window (a
    bucket per second, at most the window's length of them)."""

    __slots__ = ("buckets", "count", "errors", "last_seen")

    def __init__(self, span: int) -> None:
        self.count = 0
        self.errors = 0
        self.last_seen: datetime | None = None
        self.buckets: deque[list[int]] = deque(maxlen=span)

    def hit(self, second: int, when: datetime) -> None:
        self.count += 1
        self.last_seen = when
        buckets = self.buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        else:
            buckets.append([second, 1])

    def recent(self, second: int, span: int) -> int:
        """Messages in the window ending with this second."""
        oldest = second - span
        return sum(n for s, n in self.buckets if s > oldest)


class Subscription:
    """Live messages (of one topic, or all), through a bounded queue: ``async for`` them,
    and :meth:`close` (or leave ``async with``) to stop. A message that finds the queue
    full is dropped for this subscriber (``dropped``), never waited for."""

    def __init__(self, buffer: MessageBuffer, topic: str | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a subscription's queue holds at least one message")
        self.topic = topic
        self.dropped = 0
        self._buffer = buffer
        self._queue: asyncio.Queue[MonitoredMessage | None] = asyncio.Queue(maxsize)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        """Messages queued and not yet taken."""
        return self._queue.qsize()

    def offer(self, msg: MonitoredMessage) -> bool:
        """Queue ``msg`` if there is room (the buffer calls this; it never waits)."""
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        """Stop receiving; an ``async for`` waiting on this subscription ends."""
        if self._closed:
            return
        self._closed = True
        self._buffer._unsubscribe(self)
        if self._queue.full():
            self._queue.get_nowait()  # make room for the end marker: we are done anyway
        self._queue.put_nowait(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> MonitoredMessage:
        if self._closed:
            raise StopAsyncIteration
        msg = await self._queue.get()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class MessageBuffer:
    """The last ``capacity`` messages (a ring: the oldest goes first), statistics per
    topic and type over a sliding window of ``window_seconds``, and fan-out to
    subscribers. ``clock`` (monotonic seconds) times the window; tests pass a fake one."""

    def __init__(
        self,
        capacity: int = 1000,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        payload_cap: int = PAYLOAD_CAP,
        max_types: int = MAX_TYPES,
        max_awaiting: int = MAX_AWAITING,
    ) -> None:
        if capacity < 1:
            raise ValueError("a buffer holds at least one message")
        if window_seconds <= 0:
            raise ValueError("the statistics' window must be positive")
        self._ring: deque[MonitoredMessage] = deque(maxlen=capacity)
        self._span = max(1, math.ceil(window_seconds))
        self._clock = clock
        self._payload_cap = payload_cap
        self._max_types = max_types
        self._max_awaiting = max_awaiting
        self._topics = {topic: _Tally(self._span) for topic in TOPICS}
        self._types: dict[tuple[str, str], _Tally] = {}
        #: A request's reply inbox → its message as stored, until the reply arrives.
        self._awaiting: OrderedDict[str, MonitoredMessage] = OrderedDict()
        self._subscribers: dict[str | None, set[Subscription]] = {}
        self._taken = {topic: monitor_messages.labels(topic) for topic in TOPICS}
        self._dropped = monitor_dropped.labels(SUBSCRIBER_FULL)

    @property
    def capacity(self) -> int:
        maxlen = self._ring.maxlen
        assert maxlen is not None
        return maxlen

    @property
    def window_seconds(self) -> int:
        """The statistics' window, in whole seconds."""
        return self._span

    def __len__(self) -> int:
        return len(self._ring)

    # -- taking messages in -----------------------------------------------------------------

    def take(self, tapped: Tapped) -> None:
        """The tap's sink: a message is stored, a reply attached to its request, and
        anything else ignored."""
        if tapped.request is not None:
            self._reply(tapped)
            return
        msg = monitored(tapped, cap=self._payload_cap)
        if msg is not None:
            self.add(msg, reply_subject=tapped.reply if msg.topic in REQUEST_TOPICS else None)

    def add(self, msg: MonitoredMessage, *, reply_subject: str | None = None) -> None:
        """Store ``msg``, count it, and offer it to its subscribers. ``reply_subject``:
        the inbox a reply to it will arrive on."""
        tally = self._topics.get(msg.topic)
        if tally is None:
            raise ValueError(f"not a topic: {msg.topic!r} (one of {', '.join(TOPICS)})")
        self._ring.append(msg)
        second = int(self._clock())
        tally.hit(second, msg.received_at)
        self._type_tally(msg.topic, msg.type).hit(second, msg.received_at)
        self._taken[msg.topic].value += 1
        if reply_subject:
            awaiting = self._awaiting
            awaiting[reply_subject] = msg
            if len(awaiting) > self._max_awaiting:
                awaiting.popitem(last=False)  # one in, one out: no loop needed
        for key in (None, msg.topic):
            subscribers = self._subscribers.get(key)
            if subscribers:
                for subscriber in subscribers:
                    if not subscriber.offer(msg):
                        self._dropped.value += 1

    def _reply(self, reply: Tapped) -> None:
        request = reply.request
        assert request is not None
        topic = topic_of(request.subject)
        if topic is None:
            return
        ok = reply_ok(reply)
        if not ok:
            self._topics[topic].errors += 1
            self._type_tally(topic, request.type).errors += 1
        asked = self._awaiting.pop(reply.subject, None)
        if asked is not None:
            self._replace(asked, replace(asked, latency_ms=reply.latency_ms, ok=ok))

    def _replace(self, old: MonitoredMessage, new: MonitoredMessage) -> None:
        """Put ``new`` where ``old`` is in the ring, if it still is (a request is
        usually among the newest when its reply comes: the scan starts there)."""
        ring = self._ring
        for back, entry in enumerate(reversed(ring)):
            if entry is old:
                ring[len(ring) - 1 - back] = new
                return

    def _type_tally(self, topic: str, type_: str) -> _Tally:
        key = (topic, type_)
        tally = self._types.get(key)
        if tally is None:
            if len(self._types) >= self._max_types:
                key = (topic, OTHER_TYPE)  # a foreign publisher must not grow this without end
                tally = self._types.get(key)
            if tally is None:
                tally = self._types[key] = _Tally(self._span)
        return tally

    # -- reading ------------------------------------------------------------------------------

    def messages(self, topic: str | None = None, limit: int = 100) -> list[MonitoredMessage]:
        """The newest ``limit`` messages (of ``topic``, or all), **oldest first**, as a
        stream reads: the last item is the newest."""
        if limit <= 0:
            return []
        ring = self._ring
        if topic is None:
            return list(itertools.islice(ring, max(0, len(ring) - limit), None))
        found: list[MonitoredMessage] = []
        for msg in reversed(ring):
            if msg.topic == topic:
                found.append(msg)
                if len(found) >= limit:
                    break
        found.reverse()
        return found

    def _rate(self, tally: _Tally, second: int) -> float:
        return tally.recent(second, self._span) * 60.0 / self._span

    def topic_stats(self) -> list[TopicStats]:
        """Every topic, in the order of :data:`TOPICS`, seen or not."""
        second = int(self._clock())
        return [
            TopicStats(topic, t.count, self._rate(t, second), t.last_seen, t.errors)
            for topic, t in self._topics.items()
        ]

    def type_stats(self, topic: str | None = None) -> list[TypeStats]:
        """Every type seen (of ``topic``, or all), by topic (in the order of
        :data:`TOPICS`) and then type."""
        second = int(self._clock())
        order = {name: i for i, name in enumerate(TOPICS)}
        keys = sorted(
            (k for k in self._types if topic is None or k[0] == topic),
            key=lambda k: (order[k[0]], k[1]),
        )
        stats = []
        for key in keys:
            t = self._types[key]
            stats.append(TypeStats(*key, t.count, self._rate(t, second), t.last_seen, t.errors))
        return stats

    # -- live delivery ------------------------------------------------------------------------

    def subscribe(self, topic: str | None = None, *, maxsize: int = 1000) -> Subscription:
        """Messages from now on (of ``topic``, or all), as they are added."""
        if topic is not None and topic not in self._topics:
            raise ValueError(f"not a topic: {topic!r} (one of {', '.join(TOPICS)})")
        subscription = Subscription(self, topic, maxsize)
        self._subscribers.setdefault(topic, set()).add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.topic)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.topic]


__all__ = [
    "PAYLOAD_CAP",
    "TOPICS",
    "MessageBuffer",
    "MonitoredMessage",
    "Subscription",
    "TopicStats",
    "TypeStats",
    "cap_payload",
    "monitored",
    "reply_ok",
    "topic_of",
]
