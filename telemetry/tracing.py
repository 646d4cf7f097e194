"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` variables.

The message path does not use OpenTelemetry's propagator API: the broker has already
decoded ``traceparent`` into a :class:`~domain.metadata.MessageContext`, so a parent is
rebuilt from that string and a child's ``traceparent`` is formatted back from its span
context. With no exporter configured there is no tracer provider at all, and every
helper here returns at once: tracing that nobody reads costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from loguru import logger
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

INSTRUMENTATION = "ordermesh"

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


def enabled() -> bool:
    return _provider is not None


def tracer() -> trace.Tracer:
    return _tracer


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
    run`` service set). Spans go to an OTLP http/protobuf exporter behind a batch
    processor when ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, and the sampler comes
    from ``OTEL_TRACES_SAMPLER``; ``processors`` replaces the exporter (tests, benchmarks).
    """
    global _provider, _tracer
    shutdown_tracing()
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if processors is None:
        if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
            return None
        if not _endpoint(environ):
            return None
        protocol = environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        )
        if protocol not in (None, "", "http/protobuf"):
            logger.warning("OTLP protocol {!r} is not supported; using http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processors = [BatchSpanProcessor(OTLPSpanExporter())]
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    for processor in processors:
        provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION)
    return provider


def shutdown_tracing() -> None:
    """Flush what is buffered and turn tracing off."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = None
    _tracer = trace.NoOpTracer()


def parent(traceparent: str | None, tracestate: str | None = None) -> otel_context.Context | None:
    """A context whose current span is the remote parent named by ``traceparent``."""
    if not traceparent:
        return None
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
    if not span_context.is_valid:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def traceparent_of(span: Span) -> str | None:
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span())


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
        "messaging.operation.name": operation,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    if conversation_id:
        attributes["messaging.message.conversation_id"] = conversation_id
    return attributes


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    traceparent: str | None = None,
    tracestate: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A current span, child of ``traceparent`` when given, else of the current span.

    Exceptions are recorded and mark the span as failed; with tracing off this yields a
    non-recording span and costs two attribute lookups.
    """
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    ctx = parent(traceparent, tracestate) if traceparent else None
    with _tracer.start_as_current_span(
        name, context=ctx, kind=kind, attributes=attributes, record_exception=True
    ) as current:
        yield current


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
    attributes: Mapping[str, Any] | None = None,
) -> Span | None:
    """A span that is not made current, for work that ends in a callback (a publish
    ended by its ack); None when tracing is off."""
    if _provider is None:
        return None
    return _tracer.start_span(
        name, context=parent(traceparent, tracestate), kind=kind, attributes=attributes
    )
