"""Commands and queries sent by the API: CloudEvents over NATS request/reply, each in a
trace of its own (the span of the send when tracing is on), with ``ce-source: api``.

A refusal becomes :class:`Refused` with the service's code, so a GraphQL error can carry
the same ``code`` a NATS client would have seen.
"""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanKind

from broker.subjects import command_subject, query_subject
from ordermesh.outgoing import build, child_traceparent
from telemetry import tracing

SOURCE = "api"
UNAVAILABLE = "unavailable"
TIMEOUT = 10.0


class Refused(Exception):
    """An ``ok: false`` reply, or no reply at all (``no_responders``, ``timeout``)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


async def send(nc: NATS, subject: str, body: dict[str, Any], timeout: float = TIMEOUT) -> Any:
    """Send ``body`` to ``subject`` and return the reply's ``data``; raise :class:`Refused`."""
    msg_type = subject.split(".", 1)[1]
    with tracing.span(
        f"{msg_type} send",
        kind=SpanKind.PRODUCER,
        attributes=tracing.messaging_attributes(subject, "send", None, None)
        if tracing.enabled()
        else None,
    ) as span:
        traceparent = tracing.traceparent_of(span) or child_traceparent(None)
        out = build(subject, json.dumps(body), traceparent=traceparent, source=SOURCE)
        if not nc.is_connected:
            # nats-py would buffer the request until it reconnects, and the caller would
            # wait its whole timeout: say at once that NATS is out of reach.
            tracing.fail(span, UNAVAILABLE, subject)
            raise Refused(UNAVAILABLE, "NATS is out of reach; try again shortly")
        try:
            reply = await nc.request(subject, out.body, timeout=timeout, headers=out.headers)
        except NoRespondersError:
            tracing.fail(span, "no_responders", subject)
            raise Refused("no_responders", f"nothing serves {subject}") from None
        except (NatsTimeoutError, TimeoutError):
            tracing.fail(span, "timeout", subject)
            raise Refused("timeout", f"no reply from {subject} within {timeout} s") from None
        decoded = json.loads(reply.data)
        if not decoded.get("ok"):
            error = decoded.get("error") or {}
            code = str(error.get("code", "error"))
            tracing.fail(span, code, str(error.get("message", "")))
            raise Refused(code, str(error.get("message", code)), error.get("details"))
        return decoded.get("data")


async def command(nc: NATS, command_type: str, body: dict[str, Any]) -> Any:
    return await send(nc, command_subject(command_type), body)


async def query(nc: NATS, query_type: str, body: dict[str, Any]) -> Any:
    return await send(nc, query_subject(query_type), body)
