"""Sends commands as NATS requests with CloudEvents headers; the saga's way out."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry.trace import SpanKind

from broker.cloudevents import encode_context
from broker.subjects import command_subject
from domain.messages import Command
from domain.metadata import MessageContext
from sagas.order_fulfillment import NO_RESPONDERS, TIMEOUT, UNAVAILABLE
from sagas.runner import Reply
from telemetry import tracing

#: How often ``until_connected`` looks at the connection (nats-py reconnects on its own).
RECONNECT_POLL = 0.1


class NatsCommandBus:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    def _reconnects(self) -> int:
        return int(self._nc.stats["reconnects"])

    async def until_connected(self) -> None:
        # nats-py tells of a reconnect only through the callback given to ``connect``,
        # which belongs to whoever connected: look at the connection instead.
        while not self._nc.is_connected:  # noqa: ASYNC110
            await asyncio.sleep(RECONNECT_POLL)

    async def send(self, command: Command, ctx: MessageContext, timeout: float) -> Reply:
        subject = command_subject(command.TYPE)
        with tracing.span(
            f"{command.TYPE} send",
            kind=SpanKind.PRODUCER,
            attributes=tracing.messaging_attributes(subject, "send", ctx.id, ctx.correlation_id),
        ) as span:
            if span.is_recording():
                ctx = ctx.with_traceparent(tracing.traceparent_of(span))
            reply = await self._request(subject, command, ctx, timeout)
            if not reply.ok:
                tracing.fail(span, reply.code, reply.message)
            return reply

    async def _request(
        self, subject: str, command: Command, ctx: MessageContext, timeout: float
    ) -> Reply:
        """A request, or ``UNAVAILABLE`` at once while NATS is out of reach, or when the
        connection was lost while waiting (the reply may only have been delayed)."""
        if not self._nc.is_connected:
            return Reply(False, code=UNAVAILABLE, message="NATS is out of reach")
        reconnects = self._reconnects()
        try:
            msg = await self._nc.request(
                subject,
                command.model_dump_json().encode(),
                timeout=timeout,
                headers=encode_context(ctx),
            )
        except NatsTimeout:
            if not self._nc.is_connected or self._reconnects() != reconnects:
                return Reply(False, code=UNAVAILABLE, message="NATS connection lost meanwhile")
            return Reply(False, code=TIMEOUT, message=f"no reply on {subject} in {timeout:.3g} s")
        except NoRespondersError:
            return Reply(False, code=NO_RESPONDERS, message=f"nobody serves {subject}")
        body = json.loads(msg.data)
        if body.get("ok"):
            return Reply(True, data=body.get("data"))
        error = body.get("error") or {}
        return Reply(False, code=str(error.get("code")), message=str(error.get("message", "")))
