"""The CloudEvents attributes of the message being handled, as a :class:`MessageContext`.

ordermesh's events carry their ids, cause and trace in ``ce-*`` headers
(docs/protocol.md). A handler asks for them with one annotation, the FastStream way:

    async def handle(event: OrderConfirmed, ctx: EventContext) -> None: ...

and :func:`send_command <ordermesh.kit.commands.send_command>` finds the same context on
its own (:func:`handled_message_context`), so a command sent from a handler is caused by
the event and shares its correlation id and trace without being told.
"""

from __future__ import annotations

from typing import Annotated

from faststream import Depends, StreamMessage
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.msg import Msg

from broker.cloudevents import H_ID, decode_context
from domain.metadata import MessageContext


def message_context(message: NatsMessage) -> MessageContext:
    """The context of the message being handled; blanks filled in as ordermesh's own
    services do (a new id, the type from the subject)."""
    return context_of(message)


def context_of(message: StreamMessage[Msg]) -> MessageContext:
    """The context of any parsed NATS message, inside a handler or not."""
    return decode_context(message.raw_message.subject, message.headers)


EventContext = Annotated[MessageContext, Depends(message_context)]
"""A handler parameter annotated with this receives the event's :class:`MessageContext`:
``id`` (the event id), ``correlation_id``, ``causation_id``, ``subject`` (the aggregate
id), ``traceparent``…"""


def handled_message_context(broker: NatsBroker) -> MessageContext | None:
    """The context of the ordermesh message this task is handling, if any.

    FastStream keeps the message being handled in its context, per task; a message that
    is not an ordermesh message (no ``ce-id``: a plain request to the extension itself)
    is no cause, since nothing recorded it under that id.
    """
    message = broker.context.get_local("message")
    if not isinstance(message, StreamMessage) or not isinstance(message.raw_message, Msg):
        return None
    if not message.headers.get(H_ID):
        return None
    return context_of(message)
