"""Sending ordermesh a command from an extension, as its own services send them.

    product = await send_command(broker, Restock(product_id="p-1", quantity=10))

The request carries the CloudEvents headers ordermesh reads (docs/protocol.md): a new
``ce-id`` (the command's idempotency key), ``ce-type``, ``ce-source`` (the extension),
``ce-subject`` (the aggregate id) and, when the command is a consequence of an event,
that event's ``ce-correlationid`` and the event's id as ``ce-causationid``, so the
command and everything it causes belong to the same business flow. Sent while a handler
of the kit handles an event, that event is the cause without being named.

The trace goes along too: the request's ``traceparent`` names the current span (with
tracing on, the span of the request itself, a child of the event's consumer span), or,
with tracing off, the cause's own ``traceparent``, so the command service still joins
the order's trace.

The reply ``{"ok": true, "data": …}`` returns ``data``; ``{"ok": false, "error": …}``
raises :class:`CommandRefused` with the error's stable ``code``; no reply at all raises
:class:`CommandNotAnswered` (``timeout`` or ``no_responders``).
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, ValidationError

from broker.cloudevents import (
    H_CORRELATION,
    H_ID,
    H_TRACEPARENT,
    H_TRACESTATE,
    encode_context,
)
from broker.subjects import command_subject
from domain.ids import new_id
from domain.messages import Command
from domain.metadata import MessageContext
from ordermesh.kit.broker import SERVICE_KEY
from ordermesh.kit.context import handled_message_context
from sagas.order_fulfillment import NO_RESPONDERS, TIMEOUT
from telemetry.tracing import span_context_of

#: ``ce-source`` of commands from a broker not made by ``make_broker``.
DEFAULT_SOURCE = "ordermesh.kit"
#: A reply that is not ordermesh's envelope (something else answers the subject).
MALFORMED_REPLY = "malformed_reply"

_AGGREGATE_ID_FIELDS = ("order_id", "product_id", "saga_id")
_PROPAGATOR = TraceContextTextMapPropagator()


class CommandError(Exception):
    """A command that did not succeed. ``code`` is one of docs/protocol.md's error codes
    (clients branch on it, never on ``message``); ``command_id`` is the ``ce-id`` it was
    sent with: sending it again with that id is safe, ordermesh carries it out once."""

    def __init__(
        self, command_type: str, command_id: str, code: str, message: str, details: Any = None
    ) -> None:
        super().__init__(f"{command_type}: {code}: {message}")
        self.command_type = command_type
        self.command_id = command_id
        self.code = code
        self.message = message
        self.details = details


class CommandRefused(CommandError):
    """The service answered ``{"ok": false}``: nothing was written."""


class CommandNotAnswered(CommandError):
    """No reply: ``no_responders`` (nothing serves the subject; not carried out) or
    ``timeout`` (perhaps carried out: send it again with the same ``command_id``)."""


class _Error(BaseModel):
    code: str
    message: str = ""
    details: Any = None


class _Reply(BaseModel):
    ok: bool
    data: dict[str, Any] | None = None
    error: _Error | None = None


async def send_command(
    broker: NatsBroker,
    command: Command,
    *,
    timeout: float = 5.0,
    cause: MessageContext | None = None,
    command_id: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Request ``commands.<type>`` and return the reply's ``data``.

    ``cause`` is the message this command follows from; by default, the ordermesh event
    the calling handler is handling, if any. ``command_id`` is the idempotency key (a new
    one by default). ``source`` defaults to the service ``make_broker`` was given.
    ``timeout`` is in seconds (FastStream's own default, 0.5 s, is short for a command
    that waits on the event store).
    """
    if cause is None:
        cause = handled_message_context(broker)
    message_id = command_id or new_id()
    token = _join_trace_of(cause)
    try:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        ctx = MessageContext(
            id=message_id,
            type=command.TYPE,
            source=source or broker.context.get(SERVICE_KEY) or DEFAULT_SOURCE,
            correlation_id=cause.correlation_id if cause else message_id,
            causation_id=cause.id if cause else None,
            subject=_aggregate_id(command),
            traceparent=carrier.get(H_TRACEPARENT),
            tracestate=carrier.get(H_TRACESTATE),
            baggage=cause.baggage if cause else None,
        )
        response = await _request(broker, command, encode_context(ctx), timeout)
    finally:
        if token is not None:
            otel_context.detach(token)
    return _data_of(command.TYPE, message_id, response)


async def _request(
    broker: NatsBroker, command: Command, headers: dict[str, str], timeout: float
) -> bytes:
    """The reply's body; a request answered "no responders" is sent once more."""
    subject = command_subject(command.TYPE)
    body = command.model_dump_json().encode()
    command_id = headers[H_ID]
    for attempt in (1, 2):
        try:
            response = await broker.request(
                body,
                subject,
                headers=headers,
                correlation_id=headers[H_CORRELATION],
                timeout=timeout,
            )
        except NoRespondersError:
            # A fresh connection's first request is now and then answered "no
            # responders" although a responder is there (broker/connection.py); nothing
            # was carried out, so once more is safe.
            if attempt == 2:
                raise CommandNotAnswered(
                    command.TYPE, command_id, NO_RESPONDERS, f"nobody serves {subject}"
                ) from None
        except NatsTimeoutError:
            raise CommandNotAnswered(
                command.TYPE, command_id, TIMEOUT, f"no reply on {subject} in {timeout:g} s"
            ) from None
        else:
            body_of_reply: bytes = response.body
            return body_of_reply
    raise AssertionError("unreachable")


def _join_trace_of(cause: MessageContext | None) -> Token[Context] | None:
    """Make the cause's span the current parent, unless a span is current already (the
    consumer's span, with tracing on): then the request's span, and its ``traceparent``,
    belong to the cause's trace whoever makes them. The token to detach, or None."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    if cause is None or not cause.traceparent:
        return None
    remote = span_context_of(cause.traceparent, cause.tracestate)
    if remote is None:
        return None
    return otel_context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))


def _aggregate_id(command: Command) -> str | None:
    for name in _AGGREGATE_ID_FIELDS:
        value = getattr(command, name, None)
        if isinstance(value, str):
            return value
    return None


def _data_of(command_type: str, command_id: str, raw: bytes) -> dict[str, Any]:
    try:
        reply = _Reply.model_validate_json(raw)
    except ValidationError as exc:
        raise CommandError(
            command_type, command_id, MALFORMED_REPLY, f"not ordermesh's reply envelope: {exc}"
        ) from None
    if reply.ok:
        return reply.data or {}
    error = reply.error or _Error(code=MALFORMED_REPLY, message="refused without an error")
    raise CommandRefused(command_type, command_id, error.code, error.message, error.details)
