"""The FastStream broker an extension runs on, set up the way ordermesh's services are.

One call instead of a page of options:

    broker = make_broker(service="notifications")

- it connects to ``ORDERMESH_NATS_URL`` unless given servers (the same variable every
  ordermesh process reads; ``nats://127.0.0.1:4222`` when unset);
- FastStream logs to the standard logger ``ordermesh.kit.<service>`` rather than its own
  stdout handler, so its lines go wherever the process sends its logs (through loguru,
  with trace and correlation ids, once ``ordermesh.logs.configure_logging`` ran). Its line
  per message ("Received", "Processed") is DEBUG, and a handler's exception is ERROR;
- with tracing on, FastStream's ``NatsTelemetryMiddleware`` continues each event's trace
  from its ``traceparent`` header, with spans from a ``TracerProvider`` named after the
  service (:mod:`ordermesh.kit.tracing`);
- given a Prometheus registry, FastStream's ``NatsPrometheusMiddleware`` counts and times
  every message in it, labelled with the service name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.types import BrokerMiddleware
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from broker.connection import server_list
from ordermesh.kit.tracing import tracer_provider as tracer_provider_for

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

#: Where the broker's FastStream context keeps the service name (``ce-source`` of the
#: commands it sends).
SERVICE_KEY = "ordermesh_kit_service"


def nats_url(environ: Mapping[str, str] = os.environ) -> str:
    """``ORDERMESH_NATS_URL``, or the local server ordermesh's clients default to."""
    return environ.get("ORDERMESH_NATS_URL") or DEFAULT_NATS_URL


def make_broker(
    servers: str | Sequence[str] | None = None,
    *,
    service: str,
    tracer_provider: TracerProvider | None = None,
    tracing: bool = True,
    metrics_registry: CollectorRegistry | None = None,
    log_level: int = logging.DEBUG,
    middlewares: Sequence[BrokerMiddleware[Any, Any]] = (),
    **options: Any,
) -> NatsBroker:
    """A ``NatsBroker`` for the extension ``service`` (also its NATS connection name).

    ``tracer_provider`` records the spans; without one, and unless ``tracing`` is off,
    one is built from the ``OTEL_*`` variables (none, and no spans, when no OTLP endpoint
    is set). ``metrics_registry`` adds FastStream's Prometheus metrics. ``log_level`` is
    the level of FastStream's line per message. ``middlewares`` come after ours (inside
    the trace), and ``options`` go to ``NatsBroker`` as they are (``security=``,
    ``inbox_prefix=``, …).
    """
    provider = tracer_provider
    if provider is None and tracing:
        provider = tracer_provider_for(service)
    stack: list[BrokerMiddleware[Any, Any]] = []
    if provider is not None:
        stack.append(NatsTelemetryMiddleware(tracer_provider=provider))
    if metrics_registry is not None:
        stack.append(NatsPrometheusMiddleware(registry=metrics_registry, app_name=service))
    stack.extend(middlewares)
    given = servers or nats_url()
    broker = NatsBroker(
        # "nats://a:4222,nats://b:4222", as ORDERMESH_NATS_URL may say: a list for nats-py.
        server_list(given) if isinstance(given, str) else list(given),
        name=service,
        logger=logging.getLogger(f"ordermesh.kit.{service}"),
        log_level=log_level,
        middlewares=stack,
        **options,
    )
    broker.context.set_global(SERVICE_KEY, service)
    return broker
