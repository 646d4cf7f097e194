"""The extension kit: a FastStream service that follows ordermesh's events in a few lines.

    from faststream import FastStream
    from domain.order import OrderCancelled, OrderConfirmed
    from ordermesh.kit import EventContext, event_subscriber, make_broker

    broker = make_broker(service="notifications")
    app = FastStream(broker)

    @event_subscriber(broker, OrderConfirmed, OrderCancelled, durable="notifications")
    async def notify(event: OrderConfirmed | OrderCancelled, ctx: EventContext) -> None:
        ...

One concept per module: :mod:`~ordermesh.kit.broker` (the broker with ordermesh's
conventions), :mod:`~ordermesh.kit.events` (the durable consumer of ``EVENTS``),
:mod:`~ordermesh.kit.context` (the ``ce-*`` headers as a ``MessageContext``),
:mod:`~ordermesh.kit.commands` (sending a command), :mod:`~ordermesh.kit.redelivery`
(retrying a failed event), :mod:`~ordermesh.kit.tracing` (the extension's
``TracerProvider``). docs/extending.md tells the whole story.
"""

from ordermesh.kit.broker import make_broker, nats_url
from ordermesh.kit.commands import (
    CommandError,
    CommandNotAnswered,
    CommandRefused,
    send_command,
)
from ordermesh.kit.context import EventContext, handled_message_context, message_context
from ordermesh.kit.events import UnexpectedEvent, event_subscriber
from ordermesh.kit.redelivery import Redelivery
from ordermesh.kit.tracing import tracer_provider

__all__ = [
    "CommandError",
    "CommandNotAnswered",
    "CommandRefused",
    "EventContext",
    "Redelivery",
    "UnexpectedEvent",
    "event_subscriber",
    "handled_message_context",
    "make_broker",
    "message_context",
    "nats_url",
    "send_command",
    "tracer_provider",
]
