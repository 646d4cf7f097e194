"""The extension's own OpenTelemetry ``TracerProvider``, named after the extension.

ordermesh's services trace through :mod:`telemetry.tracing`, with a process-wide tracer
of their own. An extension's spans come from FastStream's ``NatsTelemetryMiddleware``
instead, which takes a ``TracerProvider``: this builds one whose resource says which
service the spans are from (``service.name``), configured by the same ``OTEL_*``
variables as every ordermesh process, so one collector and one Jaeger show the
extension's spans inside the orders' traces.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from telemetry.tracing import otlp_exporter, sampler_from


def tracer_provider(
    service: str,
    *,
    processors: Sequence[SpanProcessor] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TracerProvider | None:
    """A provider for ``service``'s spans, or None when tracing is off.

    Without ``processors``, spans go to the OTLP receiver that
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` names (over ``OTEL_EXPORTER_OTLP_PROTOCOL``),
    batched; with neither, there is nothing to send them to and tracing is off.
    ``processors`` replaces that exporter (tests: an in-memory exporter).
    ``OTEL_SDK_DISABLED=true`` and ``OTEL_TRACES_EXPORTER=none`` turn it off,
    ``OTEL_SERVICE_NAME`` wins over ``service`` and ``OTEL_TRACES_SAMPLER`` chooses the
    sampler, as for ordermesh's own processes.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if processors is None:
        if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
            return None
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        if not endpoint:
            return None
        processors = [BatchSpanProcessor(otlp_exporter(environ))]
    name = environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        sampler=sampler_from(environ), resource=Resource.create({SERVICE_NAME: name})
    )
    for processor in processors:
        provider.add_span_processor(processor)
    return provider
