"""The message being handled, for log records: set by whoever handles a message.

Log lines then carry its trace and correlation ids without every call site binding
them, and the ids are right even when tracing is off (taken from the message itself).
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from domain.metadata import MessageContext, trace_id_of
from telemetry.tracing import current_ids

_current: ContextVar[MessageContext | None] = ContextVar("ordermesh_message", default=None)


class handling:
    """``with handling(ctx):`` the message whose ids log lines take. A class, not a
    generator context manager: it is entered once per message and costs a third."""

    __slots__ = ("_ctx", "_token")

    def __init__(self, ctx: MessageContext) -> None:
        self._ctx = ctx
        self._token: Token[MessageContext | None] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._ctx)

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _current.reset(self._token)


def log_ids() -> dict[str, str | None]:
    """``trace_id``, ``span_id`` and ``correlation_id`` as known right now."""
    ctx = _current.get()
    ids = current_ids()
    trace_id: str | None
    span_id: str | None
    if ids is not None:
        trace_id, span_id = ids
    elif ctx is not None and ctx.traceparent:
        # Tracing is off: the trace is the sender's, and there is no span of our own.
        trace_id, span_id = trace_id_of(ctx.traceparent), None
    else:
        trace_id = span_id = None
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "correlation_id": ctx.correlation_id if ctx is not None else None,
    }
