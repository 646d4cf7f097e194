"""Subscribing to ordermesh's events: a durable JetStream consumer on ``EVENTS``.

    @event_subscriber(broker, OrderConfirmed, OrderCancelled, durable="notifications")
    async def notify(event: OrderConfirmed | OrderCancelled, ctx: EventContext) -> None: ...

What :func:`event_subscriber` sets up, so that an extension does not have to know it:

- a pull consumer named ``durable`` on the stream ``EVENTS``, which ordermesh owns: the
  kit binds to it and never declares or changes it, filtered on the subjects of the given
  event types (``events.order.confirmed``…, spelled by :mod:`broker.subjects`);
- explicit acknowledgement, sent only once the handler returned: a handler that raises
  leaves the event to be delivered again (:mod:`ordermesh.kit.redelivery`), so delivery
  is at least once, and a restart resumes after the last acknowledged event;
- each message decoded by its CloudEvents ``ce-type`` into ordermesh's own pydantic event
  class (:mod:`domain.catalog`), and its ``ce-*`` headers into a ``MessageContext``
  (:data:`~ordermesh.kit.context.EventContext`); FastStream's message id and correlation
  id are the event's, so its logs and spans name the event;
- ordermesh's log context set while the handler runs, so log lines carry the event's
  correlation and trace ids as every ordermesh service's do.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

from faststream import Depends, StreamMessage
from faststream.exceptions import HandlerException, RejectMessage
from faststream.middlewares import AckPolicy
from faststream.nats import (
    ConsumerConfig,
    DeliverPolicy,
    JStream,
    NatsBroker,
    NatsMessage,
    NatsRouter,
    PullSub,
)
from faststream.nats.message import NatsMessage as NatsStreamMessage
from faststream.nats.subscriber.usecases import PullStreamSubscriber
from loguru import logger
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as ConsumerAckPolicy

from broker.cloudevents import H_CORRELATION, H_ID, H_TYPE
from broker.subjects import EVENTS_STREAM, event_subject, type_from_subject
from domain.catalog import EVENTS, decode_event
from domain.messages import Event
from ordermesh.kit.context import EventContext
from ordermesh.kit.redelivery import Redelivery, redeliver_later
from telemetry.context import handling

#: Where the kit's consumers receive their events (see ``inbox_prefix`` below).
KIT_INBOX = "_INBOX_KIT"
#: What JetStream accepts as a durable name and a subject token alike.
_DURABLE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UnexpectedEvent(Exception):
    """An event of a type the subscriber did not ask for: the durable consumer was
    created earlier with other filters (see :func:`event_subscriber`)."""


def event_subscriber(
    registrar: NatsBroker | NatsRouter,
    *event_types: type[Event],
    durable: str,
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    ack_wait: float = 30.0,
    max_deliver: int | None = None,
    redelivery: Redelivery | None = None,
    batch_size: int = 1,
    inbox_prefix: str | None = None,
    title: str | None = None,
    description: str | None = None,
) -> PullStreamSubscriber:
    """A FastStream subscriber of ``event_types``; decorate the handler with it.

    The handler's first parameter receives the event as its ordermesh class (annotate it
    with the class, or a union of the classes); a parameter annotated
    :data:`~ordermesh.kit.context.EventContext` receives its ids, cause and trace.

    ``durable`` names the consumer in JetStream: it keeps the position across restarts,
    and every replica using the same name shares the work. The consumer is created with
    these settings the first time and reused as it is afterwards: to change its event
    types, use a new name (or delete it: ``nats consumer rm EVENTS <durable>``).

    ``deliver_policy`` applies when the consumer is created: ``ALL`` (the default) starts
    at the oldest event ``EVENTS`` holds, ``NEW`` with the next one. ``ack_wait`` is how
    long a handler may take before JetStream assumes it died and delivers the event again.
    ``max_deliver`` bounds deliveries per event (unset: retried until handled; set, an
    event that fails that often is skipped for good). ``redelivery`` paces the retries.
    ``batch_size`` events are fetched at a time and handled concurrently; with 1, events
    are handled one at a time, in stream order.

    ``inbox_prefix`` is where JetStream delivers the events: ``_INBOX_KIT.<durable>`` by
    default, on purpose not under ``_INBOX.``. A pull request outlives the process that
    sent it by up to its expiry (5 s), and the server drops it only once nobody listens
    on its inbox: ordermesh's monitor and ``ordermesh tap`` listen on all of ``_INBOX.>``
    (to show replies), so an event arriving just after a stop would be handed to them,
    and reach the restarted extension only when ``ack_wait`` ran out. A NATS user with
    restricted permissions needs to subscribe below this prefix.
    """
    if not event_types:
        raise ValueError("name at least one event type")
    if not _DURABLE.match(durable):
        raise ValueError(f"durable name {durable!r}: use 1-64 of A-Z a-z 0-9 _ -")
    for cls in event_types:
        if EVENTS.get(getattr(cls, "TYPE", "")) is not cls:
            raise ValueError(f"{cls.__name__} is not an event ordermesh stores")
    policy = redelivery or Redelivery()
    subjects = sorted({event_subject(cls.TYPE) for cls in event_types})
    names = ", ".join(sorted(cls.TYPE for cls in event_types))
    return registrar.subscriber(
        # No subject of its own: the consumer reaches EVENTS through its filters, which
        # FastStream's AsyncAPI document also shows, one channel each.
        "",
        stream=JStream(EVENTS_STREAM, declare=False),
        durable=durable,
        config=ConsumerConfig(
            durable_name=durable,
            filter_subjects=subjects,
            deliver_policy=deliver_policy,
            ack_policy=ConsumerAckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
        ),
        pull_sub=PullSub(batch_size=batch_size),
        inbox_prefix=(inbox_prefix or f"{KIT_INBOX}.{durable}").rstrip(".").encode() + b".",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # A JetStream message is answered by its acknowledgement, never by a reply.
        no_reply=True,
        parser=_parse,
        decoder=_decoder(frozenset(event_types), policy),
        dependencies=[Depends(_scope(policy))],
        title=title or durable,
        description=description
        or f"Durable consumer {durable!r} of the stream {EVENTS_STREAM}: {names}.",
    )


async def _parse(
    msg: Msg, original: Callable[[Msg], Awaitable[StreamMessage[Msg]]]
) -> StreamMessage[Msg]:
    """FastStream's parsing, with the event's own id and correlation id as the message's,
    which FastStream puts in its log lines and span attributes."""
    message = await original(msg)
    if event_id := message.headers.get(H_ID):
        message.message_id = event_id
    if correlation_id := message.headers.get(H_CORRELATION):
        message.correlation_id = correlation_id
    return message


def _decoder(
    wanted: frozenset[type[Event]], policy: Redelivery
) -> Callable[[NatsStreamMessage], Awaitable[Event]]:
    async def decode(message: NatsStreamMessage) -> Event:
        """The event as its ordermesh class, chosen by ``ce-type`` (else the subject)."""
        event_type = message.headers.get(H_TYPE) or type_from_subject(message.raw_message.subject)
        cls = EVENTS.get(event_type)
        if cls is None or cls not in wanted:
            # Retrying cannot help: this consumer filters on other types than asked for.
            logger.error(
                "{} is not among the types this subscriber handles ({}); the durable "
                "consumer was created with other filters: rename it or delete it",
                event_type,
                ", ".join(sorted(c.TYPE for c in wanted)),
            )
            raise RejectMessage from UnexpectedEvent(event_type)
        try:
            return decode_event(event_type, message.body)
        except Exception:
            # Most likely a newer ordermesh added a field this version does not know:
            # keep the event, and retry, until the extension is upgraded.
            await redeliver_later(message, policy)
            raise

    return decode


def _scope(policy: Redelivery) -> Callable[..., AsyncIterator[None]]:
    async def event_scope(ctx: EventContext, message: NatsMessage) -> AsyncIterator[None]:
        """Around the handler: ordermesh's log context, and a paced retry on failure."""
        with handling(ctx):
            try:
                yield
            except HandlerException:
                raise  # the handler chose ack, nack or reject itself: FastStream does it
            except Exception:
                await redeliver_later(message, policy)
                raise

    return event_scope
