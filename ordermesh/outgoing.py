"""A message as ``ordermesh publish`` and ``ordermesh request`` send it: a CloudEvent in
NATS binary mode, in a trace of its own or joined to a caller's.

Kept out of the CLI so that other senders (the demo takes its traceparents from here)
build what the services expect.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.cloudevents import H_CORRELATION, H_ID, H_TRACEPARENT, encode_context
from broker.subjects import type_from_subject
from domain.ids import new_id
from domain.metadata import MessageContext, trace_id_of

SOURCE = "cli"
_ID_FIELDS = ("order_id", "product_id", "saga_id")


class BadBody(ValueError):
    """The body is not JSON; the services would refuse it, so it is not sent."""


@dataclass(frozen=True)
class Outgoing:
    subject: str
    body: bytes
    headers: dict[str, str]
    context: MessageContext

    @property
    def message_id(self) -> str:
        """As sent: a ``-H ce-id:…`` wins over the generated one."""
        return self.headers[H_ID]

    @property
    def correlation_id(self) -> str:
        return self.headers[H_CORRELATION]

    @property
    def trace_id(self) -> str | None:
        return trace_id_of(self.headers.get(H_TRACEPARENT))


def child_traceparent(parent: str | None) -> str:
    """A new span id in the parent's trace (keeping its sampling flag), or a new sampled
    trace: the W3C format by hand, so a CLI without an exporter still starts a trace the
    services continue."""
    span_id = f"{random.getrandbits(64) or 1:016x}"
    trace_id = trace_id_of(parent) if parent else None
    if trace_id is None or parent is None:
        return f"00-{random.getrandbits(128) or 1:032x}-{span_id}-01"
    flags = parent.split("-")[3][:2]
    return f"00-{trace_id}-{span_id}-{flags}"


def build(
    subject: str,
    text: str,
    *,
    traceparent: str,
    correlation_id: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    source: str = SOURCE,
) -> Outgoing:
    """Validate ``text`` as JSON and wrap it; ``traceparent`` is the sending span's."""
    try:
        decoded: Any = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise BadBody(f"the body is not JSON: {exc}") from None
    message_id = new_id()
    aggregate = None
    if isinstance(decoded, dict):
        aggregate = next((str(decoded[k]) for k in _ID_FIELDS if k in decoded), None)
    context = MessageContext(
        id=message_id,
        type=type_from_subject(subject),
        source=source,
        correlation_id=correlation_id or message_id,
        subject=aggregate,
        traceparent=traceparent,
    )
    headers = encode_context(context)
    headers.update(extra_headers or {})
    return Outgoing(subject, json.dumps(decoded).encode(), headers, context)


def parse_header(text: str) -> tuple[str, str]:
    """``-H KEY:VALUE`` as the ``nats`` CLI takes it."""
    key, sep, value = text.partition(":")
    if not sep or not key.strip():
        raise ValueError(f"{text!r}: use KEY:VALUE")
    return key.strip(), value.strip()
