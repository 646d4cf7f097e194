"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` variables.

The message path does not use OpenTelemetry's propagator API: the broker has already
decoded ``traceparent`` into a :class:`~domain.metadata.MessageContext`, so a parent is
rebuilt from that string and a child's ``traceparent`` is formatted back from its span
context. Spans are :mod:`telemetry.spans`' lean ones, exported by the SDK as usual.
With no exporter configured there is no tracer at all, and every helper here returns
at once: tracing that nobody reads costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from loguru import logger
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from telemetry.batching import SpanBatcher
from telemetry.current_span import make_current, restore
from telemetry.spans import LeanSpan, LeanTracer

INSTRUMENTATION = "ordermesh"

_provider: TracerProvider | None = None
_tracer: LeanTracer | None = None
_processors: Sequence[SpanProcessor] = ()


def enabled() -> bool:
    return _provider is not None


def _endpoint(environ: Mapping[str, str]) -> str | None:
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def configure_tracing(
    service_name: str,
    *,
    processors: Sequence[SpanProcessor] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TracerProvider | None:
    """Set up tracing for this process; returns the provider, or None when tracing is off.

    ``OTEL_SERVICE_NAME`` wins over ``service_name`` (the default, one per ``ordermesh
    run`` service set). Spans go to an OTLP exporter (http/protobuf, or gRPC with
    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc``) behind a batch processor when
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, and the sampler comes from
    ``OTEL_TRACES_SAMPLER``; ``processors`` replaces the exporter (tests, benchmarks).
    """
    global _provider, _tracer, _processors
    shutdown_tracing()
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if processors is None:
        if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
            return None
        if not _endpoint(environ):
            return None
        processors = [SpanBatcher(otlp_exporter(environ), environ=environ)]
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(
        sampler=sampler_from(environ),
        resource=Resource.create(attributes),
        shutdown_on_exit=False,
    )
    for processor in processors:
        provider.add_span_processor(processor)  # so that shutdown flushes them
    _provider = provider
    _processors = tuple(processors)
    _tracer = LeanTracer(
        provider.resource,
        provider.sampler,
        processors,
        InstrumentationScope(INSTRUMENTATION),
        parent_based=_KNOWN_DECISIONS.get(_sampler_name(environ)),
    )
    return provider


def provider_for(service_name: str) -> TracerProvider | None:
    """A provider for another service this process hosts (a partner: FastStream's
    telemetry middleware takes one), sampling as this process does and exporting where
    its spans go, under its own ``service.name``. None while tracing is off. Its
    processors are the process's: ``shutdown_tracing`` flushes them, so it is never shut
    down itself."""
    if _provider is None:
        return None
    provider = TracerProvider(
        sampler=_provider.sampler,
        resource=Resource.create({SERVICE_NAME: service_name}),
        shutdown_on_exit=False,
    )
    for processor in _processors:
        provider.add_span_processor(processor)
    return provider


def otlp_protocol(environ: Mapping[str, str]) -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``, else
    ``http/protobuf`` (the specification's default)."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(name, "").strip().lower()
        if value:
            return value
    return "http/protobuf"


def otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The SDK's OTLP exporter for the configured protocol: ``grpc`` (to port 4317; an
    ``http://`` endpoint means no TLS) or ``http/protobuf`` (to 4318). Each reads its
    endpoint, headers, timeout and TLS settings from the ``OTEL_EXPORTER_OTLP_*``
    variables itself. ``http/json``, which the SDK does not implement, falls back to
    ``http/protobuf`` with a warning."""
    protocol = otlp_protocol(environ)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol != "http/protobuf":
        logger.warning("OTLP protocol {!r} is not supported; using http/protobuf", protocol)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


#: Samplers whose decision is known without asking: parent-based or not.
_KNOWN_DECISIONS = {"always_on": False, "parentbased_always_on": True}


def _sampler_name(environ: Mapping[str, str]) -> str:
    return environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()


def sampler_from(environ: Mapping[str, str]) -> sampling.Sampler:
    """``OTEL_TRACES_SAMPLER`` (and ``_ARG``) as the SDK reads them, from ``environ``."""
    name = _sampler_name(environ)
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    samplers: dict[str, sampling.Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        logger.warning("unknown OTEL_TRACES_SAMPLER {!r}; using parentbased_always_on", name)
    return samplers.get(name, samplers["parentbased_always_on"])


def shutdown_tracing() -> None:
    """Flush what is buffered and turn tracing off."""
    global _provider, _tracer, _processors
    if _provider is not None:
        _provider.shutdown()
    _provider = None
    _tracer = None
    _processors = ()


def span_context_of(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The remote span named by a W3C ``traceparent``, or None if it is not one."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        span_context = SpanContext(
            trace_id=int(parts[1], 16),
            span_id=int(parts[2], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(parts[3][:2], 16)),
            trace_state=TraceState.from_header([tracestate]) if tracestate else None,
        )
    except ValueError:
        return None
    return span_context if span_context.is_valid else None


def traceparent_of(span: Span) -> str | None:
    if type(span) is LeanSpan:
        return span.traceparent
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def trace_id_of(span: Span) -> str | None:
    """The hex trace id of a recording span (for an exemplar), else None."""
    if type(span) is LeanSpan:
        return span.traceparent[3:35] if span.is_recording() else None
    if not span.is_recording():
        return None
    return f"{span.get_span_context().trace_id:032x}"


def current_ids() -> tuple[str, str] | None:
    """Hex trace and span id of the current span, for logs and exemplars."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return f"{sc.trace_id:032x}", f"{sc.span_id:016x}"


def messaging_attributes(
    destination: str, operation: str, message_id: str | None, conversation_id: str | None
) -> dict[str, Any]:
    """OpenTelemetry messaging semantic conventions for one NATS message."""
    attributes: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.destination.name": destination,
        "messaging.operation.type": operation,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    if conversation_id:
        attributes["messaging.message.conversation_id"] = conversation_id
    return attributes


class _Scope:
    """``with span(...)``: a class, not a generator, because this runs for every message;
    the SDK's ``start_as_current_span`` stacks three context managers per span."""

    __slots__ = (
        "_attributes",
        "_context",
        "_current",
        "_kind",
        "_name",
        "_span",
        "_token",
        "_tracer",
    )

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any] | None,
        *,
        current: bool = True,
    ) -> None:
        self._tracer, self._current = tracer, current
        self._name, self._context, self._kind, self._attributes = name, context, kind, attributes
        self._span: Span = trace.INVALID_SPAN
        self._token: object = None

    def __enter__(self) -> Span:
        self._span = self._tracer.start(self._name, self._context, self._kind, self._attributes)
        if self._current:
            self._token = make_current(self._span)
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, Exception):
            self._span.record_exception(exc)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        if self._current:
            restore(self._token)
        self._span.end()


class _Off:
    """What ``span`` returns with tracing off: no span, no context change."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    traceparent: str | None = None,
    tracestate: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """A current span, child of ``traceparent`` when given, else of the current span.

    Exceptions are recorded and mark the span as failed; with tracing off this returns
    a shared no-op and costs one attribute lookup. ``attributes`` becomes the span's
    own dict, not a copy (here and in ``leaf`` and ``start_span``): build it per span.
    """
    if _tracer is None:
        return _OFF
    ctx = span_context_of(traceparent, tracestate) if traceparent else None
    return _Scope(_tracer, name, ctx, kind, attributes)


def leaf(
    name: str, *, kind: SpanKind, attributes: dict[str, Any] | None = None
) -> AbstractContextManager[Span]:
    """A child of the current span that is not made current itself, for work with
    nothing traced inside it (an append): ``span`` without the context switch."""
    if _tracer is None:
        return _OFF
    return _Scope(_tracer, name, None, kind, attributes, current=False)


def fail(span_: Span, code: str, message: str) -> None:
    """Mark a span as failed by a refusal that is not an exception in our code."""
    if span_.is_recording():
        span_.set_attribute("error.type", code)
        span_.set_status(Status(StatusCode.ERROR, f"{code}: {message}"))


def start_span(
    name: str,
    *,
    kind: SpanKind,
    traceparent: str | None,
    tracestate: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> Span | None:
    """A span that is not made current, for work that ends in a callback (a publish
    ended by its ack). Without ``traceparent`` it is a child of the current span. None
    when tracing is off."""
    if _tracer is None:
        return None
    ctx = span_context_of(traceparent, tracestate) if traceparent else None
    return _tracer.start(name, ctx, kind, attributes)
