"""CloudEvents 1.0 in NATS binary mode: attributes in ``ce-*`` headers, JSON body.

Decoding is lenient on purpose: a plain ``nats req commands.order.place '{…}'`` has no
headers at all, and must still work, so every missing attribute gets a sensible value.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from broker.subjects import stream_id, type_from_subject
from domain.event_store import RecordedEvent
from domain.ids import new_id
from domain.metadata import MessageContext, parse_metadata

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
NATS_MSG_ID = "Nats-Msg-Id"

H_SPECVERSION = "ce-specversion"
H_ID = "ce-id"
H_SOURCE = "ce-source"
H_TYPE = "ce-type"
H_TIME = "ce-time"
H_SUBJECT = "ce-subject"
H_CORRELATION = "ce-correlationid"
H_CAUSATION = "ce-causationid"
H_STREAM = "ce-stream"
H_REVISION = "ce-revision"
H_POSITION = "ce-position"
H_CONTENT_TYPE = "content-type"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
H_BAGGAGE = "baggage"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def decode_context(
    subject: str, headers: Mapping[str, str] | None, *, subject_type: str | None = None
) -> MessageContext:
    """Attributes of an incoming message; blanks become a new id, the subject's type, …
    (``subject_type``: that type, when the caller has it already)."""
    if not headers:  # a plain `nats req`: nothing to look up
        message_id = new_id()
        type_ = subject_type or type_from_subject(subject)
        return MessageContext(message_id, type_, "unknown", message_id)
    h = headers
    message_id = h.get(H_ID) or new_id()
    return MessageContext(
        id=message_id,
        type=h.get(H_TYPE) or subject_type or type_from_subject(subject),
        source=h.get(H_SOURCE) or "unknown",
        time=h.get(H_TIME),
        correlation_id=h.get(H_CORRELATION) or message_id,
        causation_id=h.get(H_CAUSATION),
        subject=h.get(H_SUBJECT),
        traceparent=h.get(H_TRACEPARENT),
        tracestate=h.get(H_TRACESTATE),
        baggage=h.get(H_BAGGAGE),
    )


def encode_context(ctx: MessageContext) -> dict[str, str]:
    """Headers for an outgoing message built from its context."""
    headers = {
        H_SPECVERSION: SPECVERSION,
        H_ID: ctx.id,
        H_SOURCE: ctx.source,
        H_TYPE: ctx.type,
        H_TIME: ctx.time or now_iso(),
        H_CONTENT_TYPE: CONTENT_TYPE,
        H_CORRELATION: ctx.correlation_id,
    }
    optional = {
        H_CAUSATION: ctx.causation_id,
        H_SUBJECT: ctx.subject,
        H_TRACEPARENT: ctx.traceparent,
        H_TRACESTATE: ctx.tracestate,
        H_BAGGAGE: ctx.baggage,
    }
    headers.update({k: v for k, v in optional.items() if v})
    return headers


def event_headers(event: RecordedEvent) -> dict[str, str]:
    """Headers of a stored event as the relay publishes it on ``events.<type>``."""
    meta = parse_metadata(event.metadata)
    event_id = event.id
    headers = {
        H_SPECVERSION: SPECVERSION,
        H_ID: event_id,
        NATS_MSG_ID: event_id,
        H_SOURCE: str(meta.get("source", "ordermesh")),
        H_TYPE: event.type,
        H_TIME: event.recorded_at.isoformat().replace("+00:00", "Z"),
        H_SUBJECT: stream_id(event.stream),
        H_CONTENT_TYPE: CONTENT_TYPE,
        H_STREAM: event.stream,
        H_REVISION: str(event.revision),
        H_POSITION: str(event.position),
        H_CORRELATION: str(meta.get("correlation_id") or event_id),
    }
    for header, key in (
        (H_CAUSATION, "causation_id"),
        (H_TRACEPARENT, "traceparent"),
        (H_TRACESTATE, "tracestate"),
        (H_BAGGAGE, "baggage"),
    ):
        if meta.get(key):
            headers[header] = str(meta[key])
    return headers
