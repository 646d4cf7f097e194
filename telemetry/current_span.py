"""Which span is current: OpenTelemetry's context, read and set without its API layers.

``opentelemetry.context`` keeps the current ``Context`` in one ``ContextVar`` behind
three layers of calls (``attach`` → runtime context → variable, ``set_span_in_context``
→ ``set_value`` → ``get_current`` → …). Making a span current and finding the current
span went through nine Python calls each way, more than starting and ending the span.
Here the same variable is read and set directly, with the same ``Context`` values, so
everything that uses the API (``trace.get_current_span()``, other instrumentation, our
log records) sees exactly what it would have seen.

The variable is OpenTelemetry's private ``_RUNTIME_CONTEXT._current_context``. If a
release moves it, or ``OTEL_PYTHON_CONTEXT`` selects another runtime context, every
function here falls back to the public API: slower, never different. A test pins
which path runs.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.trace.propagation import _SPAN_KEY

_runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
_var = getattr(_runtime, "_current_context", None)

#: OpenTelemetry's current-context variable, or None when only the API can be used.
CURRENT: ContextVar[Context] | None = _var if isinstance(_var, ContextVar) else None


def current_span_or_none() -> Any:
    """What the current context holds as its span (None if nothing), unchecked."""
    if CURRENT is None:
        span = trace.get_current_span()
        return None if span is trace.INVALID_SPAN else span
    return CURRENT.get().get(_SPAN_KEY)


def make_current(span: trace.Span) -> Token[Context] | object:
    """``otel_context.attach(trace.set_span_in_context(span))``; the token for
    :func:`restore`."""
    if CURRENT is None:
        return otel_context.attach(trace.set_span_in_context(span))
    context = Context(CURRENT.get())
    dict.__setitem__(context, _SPAN_KEY, span)  # a Context is read-only once made
    return CURRENT.set(context)


def restore(token: Token[Context] | object) -> None:
    """``otel_context.detach(token)`` for a token of :func:`make_current`."""
    if CURRENT is None:
        otel_context.detach(token)  # type: ignore[arg-type]
    else:
        CURRENT.reset(token)  # type: ignore[arg-type]
