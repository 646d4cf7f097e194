"""What travels with a message besides its body: ids that chain causes, and trace context.

Commands arrive with a :class:`MessageContext` (decoded from CloudEvents headers by the
broker); events are stored with :func:`event_metadata` so that the relay and every
consumer can restore the same correlation chain and trace long after the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json, to_json


@dataclass(slots=True)
class MessageContext:
    """CloudEvents attributes of one incoming message, with blanks already filled in.

    Never mutated once made (``with_traceparent`` makes another); not ``frozen`` because
    that made it four times dearer to build, and every message builds one.
    """

    id: str
    type: str
    source: str
    correlation_id: str
    time: str | None = None
    causation_id: str | None = None
    subject: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    baggage: str | None = None
    digest: str | None = None
    """Of a command's body (``Command.digest``), once the service has decoded it."""

    @property
    def trace_id(self) -> str | None:
        return trace_id_of(self.traceparent)

    def with_traceparent(self, traceparent: str | None) -> MessageContext:
        """The same message seen from a new span."""
        return self._with(traceparent, self.digest)

    def with_digest(self, digest: str) -> MessageContext:
        """The same message, with its body's digest."""
        return self._with(self.traceparent, digest)

    def _with(self, traceparent: str | None, digest: str | None) -> MessageContext:
        """A copy with those two fields: ``dataclasses.replace`` costs several times more,
        and this runs for every traced message and every command."""
        return MessageContext(
            self.id,
            self.type,
            self.source,
            self.correlation_id,
            self.time,
            self.causation_id,
            self.subject,
            traceparent,
            self.tracestate,
            self.baggage,
            digest,
        )


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C ``traceparent`` (``00-<trace>-<span>-<flags>``)."""
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return None
    return parts[1]


def event_metadata(ctx: MessageContext, source: str, traceparent: str | None = None) -> bytes:
    """Metadata stored with every event a command caused: its cause and its trace.

    ``traceparent`` (the span that appended, when tracing) defaults to the command's own.
    """
    meta: dict[str, Any] = {
        "correlation_id": ctx.correlation_id,
        "causation_id": ctx.id,
        "source": source,
    }
    traceparent = traceparent or ctx.traceparent
    if traceparent:
        meta["traceparent"] = traceparent
        # ``00-<32 hex>-<16 hex>-<2 hex>``, by position: this runs for every traced append.
        if len(traceparent) == 55 and traceparent[2] == traceparent[35] == traceparent[52] == "-":
            # KurrentDB's clients write ids as ``f"{int:#x}"``: ``0x``, no zero padding.
            meta["$traceId"] = "0x" + (traceparent[3:35].lower().lstrip("0") or "0")
            meta["$spanId"] = "0x" + (traceparent[36:52].lower().lstrip("0") or "0")
    if ctx.tracestate:
        meta["tracestate"] = ctx.tracestate
    if ctx.baggage:
        meta["baggage"] = ctx.baggage
    return to_json(meta)


def parse_metadata(raw: bytes) -> dict[str, Any]:
    """Stored metadata as a dict; metadata written by foreign tools may be empty or odd."""
    if not raw:
        return {}
    try:
        value = from_json(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
