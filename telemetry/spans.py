"""A lean span: the OpenTelemetry span API, recorded straight into the SDK's export form.

The SDK's own span guards every field with a lock, validates each attribute, keeps
bounded collections and copies itself into a ``ReadableSpan`` when it ends: about
26 µs a span here, against 5 µs for this one. On a command path that makes two spans
per message that difference decides whether tracing costs a fifth or two fifths of the
throughput. Everything downstream is the SDK's: its samplers decide, its processors
batch, its exporters receive ``ReadableSpan`` objects as always (a lean span is one).

Attributes are trusted, not validated: only ordermesh's code sets them, with strings,
numbers and booleans.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, sampling
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util.types import Attributes

from telemetry.current_span import current_span_or_none

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class LeanSpan(trace.Span, ReadableSpan):
    """A span that is its own ``ReadableSpan``: it fills the fields the SDK's exporters
    read (the same names) and hands itself to the processors when it ends, instead of
    copying itself into one. Changes after the end are ignored, as the SDK's span does."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_kind",
        "_name",
        "_parent",
        "_start_time",
        "_trace_hex",
        "_traceparent",
        "_tracer",
    )

    # What most spans never change, shared until one does (then kept in its __dict__).
    _status: Status = _UNSET
    _events: Sequence[Event] = ()
    _links: Sequence[Link] = ()
    _instrumentation_info = None
    _context: SpanContext  # never None, unlike a ReadableSpan's

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any] | None,
        trace_hex: str | None = None,
    ) -> None:
        # ReadableSpan.__init__ is not called: it would build a Resource for nothing.
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        # The span's own (see ``LeanTracer.start``): not copied.
        self._attributes: dict[str, Any] = {} if attributes is None else attributes
        self._start_time = time.time_ns()
        self._end_time: int | None = None
        #: The trace id in hex, handed down from a parent that had it formatted already.
        self._trace_hex = trace_hex
        # A slot, not a shared default: nearly every span is named by its traceparent,
        # and the first field set outside the slots makes the span a __dict__.
        self._traceparent: str | None = None

    @property
    def resource(self) -> Resource:
        return self._tracer.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` naming this span, formatted once: a command needs it
        for its children, its stored events and its exemplar. ``bytes.hex`` rather than
        ``f"{id:032x}"`` (a third of the cost), and the trace id from the parent when it
        has it: two spans a command, these strings were 4 µs of a traced one."""
        traceparent = self._traceparent
        if traceparent is None:
            c = self._context
            trace_hex = self._trace_hex
            if trace_hex is None:
                trace_hex = self._trace_hex = c.trace_id.to_bytes(16).hex()
            flags = c.trace_flags
            flags_hex = "01" if flags == 1 else "00" if flags == 0 else f"{flags:02x}"
            traceparent = f"00-{trace_hex}-{c.span_id.to_bytes(8).hex()}-{flags_hex}"
            self._traceparent = traceparent
        return traceparent

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is None:
            event = Event(name, attributes, timestamp or time.time_ns())
            if isinstance(self._events, list):
                self._events.append(event)
            else:
                self._events = [event]

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        """Links are not used by ordermesh; accepted and dropped."""

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is StatusCode.UNSET or self._status.status_code is StatusCode.OK:
            return
        self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        details: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            details.update(attributes)
        self.add_event("exception", details, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        for processor in self._tracer.processors:
            processor.on_end(self)


class LeanTracer(trace.Tracer):
    """Starts :class:`LeanSpan`\\ s under the SDK's sampler, ends them into its processors."""

    def __init__(
        self,
        resource: Resource,
        sampler: sampling.Sampler,
        processors: Sequence[SpanProcessor],
        scope: InstrumentationScope,
        *,
        parent_based: bool | None = None,
    ) -> None:
        """``parent_based`` decides without asking the sampler, for the two samplers whose
        answer is known in advance: ``always_on`` (False: always sampled) and
        ``parentbased_always_on`` (True: as the parent, sampled at a root)."""
        self.resource = resource
        self.sampler = sampler
        self.scope = scope
        self.processors = tuple(processors)
        self._parent_based = parent_based

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        return self.start(name, parent, kind, dict(attributes) if attributes else None)

    def start(
        self,
        name: str,
        parent: SpanContext | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
    ) -> trace.Span:
        """The message path's entry: the parent as a span context (None: the current
        span), with no OpenTelemetry ``Context`` built unless a sampler needs one.
        ``attributes`` become the span's own, not copied: pass a dict nobody else keeps."""
        trace_hex = None
        if parent is None:
            # The current span, read inline: a leaf span does this on every command.
            current = current_span_or_none()
            if type(current) is LeanSpan:
                parent, trace_hex = current._context, current._trace_hex
            elif current is None:
                parent = trace.INVALID_SPAN_CONTEXT
            else:
                parent = trace.get_current_span().get_span_context()
        span_id = random.getrandbits(64) or 1
        # A SpanContext is a tuple: unpacked once instead of five property calls.
        parent_trace_id, _, _, parent_flags, parent_state, parent_valid = parent
        if parent_valid:
            parent_context: SpanContext | None = parent
            trace_id, trace_state = parent_trace_id, parent_state
        else:
            parent_context, trace_hex = None, None
            trace_id, trace_state = random.getrandbits(128) or 1, None
        if self._parent_based is not None:
            sampled = parent_context is None or not self._parent_based or parent_flags & 1
            if not sampled:
                return trace.NonRecordingSpan(
                    SpanContext(trace_id, span_id, False, _NOT_SAMPLED, trace_state)
                )
            # ``SpanContext(trace_id, span_id, False, _SAMPLED, trace_state)`` without the
            # constructor's checks (the ids are non-zero random bits or a valid parent's):
            # a SpanContext is a tuple of these six; a test holds the two equal.
            context: SpanContext = tuple.__new__(
                SpanContext,
                (trace_id, span_id, False, _SAMPLED, trace_state or DEFAULT_TRACE_STATE, True),
            )
            return LeanSpan(self, name, context, parent_context, kind, attributes, trace_hex)
        ctx = (
            trace.set_span_in_context(trace.NonRecordingSpan(parent))
            if parent_context is not None
            else None
        )
        result = self.sampler.should_sample(ctx, trace_id, name, kind, attributes)
        decision = result.decision
        sampled = decision is sampling.Decision.RECORD_AND_SAMPLE
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        span_context = SpanContext(
            trace_id, span_id, False, flags, result.trace_state or trace_state
        )
        if decision is sampling.Decision.DROP:
            return trace.NonRecordingSpan(span_context)
        return LeanSpan(self, name, span_context, parent_context, kind, attributes)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("use telemetry.tracing.span()")
