"""One tapped message, decoded as far as it will go and never further.

Anything may arrive on a tapped subject: our CloudEvents, a plain ``nats pub``, binary
junk, the partners' requests (FastStream's conventions rather than CloudEvents: a
``correlation_id`` header, no ``ce-*``). Decoding never raises; what is not ours is kept
raw.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from broker import cloudevents as ce
from broker.subjects import (
    COMMANDS_PREFIX,
    DLQ_PREFIX,
    EVENTS_PREFIX,
    PARTNERS_PREFIX,
    QUERIES_PREFIX,
    SAGAS_PREFIX,
    type_from_subject,
)
from domain.metadata import trace_id_of

KINDS = {
    COMMANDS_PREFIX: "command",
    EVENTS_PREFIX: "event",
    QUERIES_PREFIX: "query",
    SAGAS_PREFIX: "saga",
    DLQ_PREFIX: "dlq",
    PARTNERS_PREFIX: "partner",
}
#: Kinds whose messages are requests: a reply to one is matched to it.
REQUEST_KINDS = frozenset({"command", "query", "partner"})
REPLY = "reply"
OTHER = "other"
#: The header FastStream reads and writes a correlation id in (the partners' requests
#: carry ours there, not in ``ce-correlationid``).
CORRELATION_HEADER = "correlation_id"


def kind_of(subject: str) -> str:
    for prefix, kind in KINDS.items():
        if subject.startswith(prefix):
            return kind
    return OTHER


_NOT_JSON = object()


@dataclass
class Request:
    """What a reply is matched to: the request it answers."""

    subject: str
    type: str
    correlation_id: str | None
    trace_id: str | None
    sent: float


@dataclass
class Tapped:
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    kind: str = OTHER
    sequence: int | None = None
    """Stream sequence, for messages replayed from JetStream."""
    request: Request | None = None
    """For a reply: the request it answers."""
    latency_ms: float | None = None
    reply: str | None = None
    """For a live request: the inbox its reply will arrive on (the reply's ``subject``), so
    that a consumer can tie the reply to this very message, ``ce-id`` or not."""

    @cached_property
    def body(self) -> Any:
        """The decoded JSON body, or ``_NOT_JSON``."""
        if not self.data:
            return None
        try:
            return json.loads(self.data)
        except ValueError:
            return _NOT_JSON

    @property
    def is_json(self) -> bool:
        return self.body is not _NOT_JSON

    @property
    def type(self) -> str:
        """``ce-type``, else from the subject: ``commands.order.place`` → ``order.place``,
        a partner's ``partners.payment.charge`` → ``payment.charge`` (the type of its
        request model); a reply is ``<request type> reply``."""
        if self.request is not None:
            return f"{self.request.type} reply"
        found = self.headers.get(ce.H_TYPE)
        if found:
            return found
        if self.kind == "partner":
            return self.subject.removeprefix(PARTNERS_PREFIX)
        return type_from_subject(self.subject) if self.kind != OTHER else ""

    @property
    def aggregate_id(self) -> str | None:
        if ce.H_SUBJECT in self.headers:
            return self.headers[ce.H_SUBJECT]
        body = self.body
        if isinstance(body, dict):
            for key in ("order_id", "product_id", "saga_id"):
                if isinstance(body.get(key), str):
                    return str(body[key])
        return None

    @property
    def correlation_id(self) -> str | None:
        """``ce-correlationid``, else FastStream's ``correlation_id`` header (a partner
        request carries the command's correlation id there); a reply has its request's."""
        if self.request is not None:
            return self.request.correlation_id
        headers = self.headers
        return headers.get(ce.H_CORRELATION) or headers.get(CORRELATION_HEADER)

    @property
    def trace_id(self) -> str | None:
        if self.request is not None:
            return self.request.trace_id
        return trace_id_of(self.headers.get(ce.H_TRACEPARENT))

    @property
    def failed(self) -> bool:
        """A reply saying ``ok: false`` (or a dead letter)."""
        if self.kind == "dlq":
            return True
        body = self.body
        return isinstance(body, dict) and body.get("ok") is False

    def raw_text(self) -> str:
        try:
            return self.data.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(self.data).decode()

    def as_json(self) -> dict[str, Any]:
        """One JSON object per message, for ``jq``: everything, decoded where possible."""
        out: dict[str, Any] = {
            "subject": self.subject,
            "kind": self.kind,
            "type": self.type or None,
            "received": self.received.isoformat(timespec="microseconds"),
            "headers": self.headers,
        }
        if self.is_json:
            out["body"] = self.body
        else:
            try:
                out["raw"] = self.data.decode()
            except UnicodeDecodeError:
                out["raw_base64"] = base64.b64encode(self.data).decode()
        if self.sequence is not None:
            out["sequence"] = self.sequence
        if self.request is not None:
            out["request_subject"] = self.request.subject
            out["latency_ms"] = self.latency_ms
        return out
