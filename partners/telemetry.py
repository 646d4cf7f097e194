"""FastStream's own telemetry and Prometheus middlewares, set up for a partner.

Traces: FastStream's :class:`NatsTelemetryMiddleware` continues the ``traceparent`` of
each request, so a partner's spans sit in the order's trace, under the partner's own
``service.name`` (``payment-gateway``, ``shipping-carrier``). Stock, it names a reply's
span after the requester's inbox (``_INBOX.k3r…Un4e publish``), a new operation name for
every request in Jaeger; here a reply's destination is named ``(reply)`` instead.

Metrics: FastStream's :class:`NatsPrometheusMiddleware` on the process's registry, so its
``faststream_*`` series are on the process's ``/metrics``, labelled with the partner's
name as ``app_name``. Their ``handler`` label is the subject, which for a partner is one
of four fixed subjects, never an id.
"""

from __future__ import annotations

from collections.abc import Sequence

from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.opentelemetry.provider import (
    NatsBatchTelemetrySettingsProvider,
    NatsTelemetrySettingsProvider,
)
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.opentelemetry import TelemetryMiddleware
from faststream.response import PublishCommand
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY, CollectorRegistry

from broker.subjects import PARTNERS_PREFIX
from telemetry.tracing import provider_for

REPLY = "(reply)"


def _destination(subject: str) -> str:
    """A partner publishes only replies, to whatever inbox its caller chose."""
    return subject if subject.startswith(PARTNERS_PREFIX) else REPLY


class _ReplyNaming(NatsTelemetrySettingsProvider):
    __slots__ = ()

    def get_publish_destination_name(self, cmd: PublishCommand) -> str:
        return _destination(cmd.destination)

    def get_publish_attrs_from_cmd(self, cmd: PublishCommand) -> dict[str, object]:
        attrs = super().get_publish_attrs_from_cmd(cmd)
        attrs["messaging.destination.name"] = _destination(cmd.destination)
        return attrs


def _settings(
    msg: Msg | Sequence[Msg] | None,
) -> NatsTelemetrySettingsProvider | NatsBatchTelemetrySettingsProvider:
    if isinstance(msg, Sequence):
        return NatsBatchTelemetrySettingsProvider()
    return _ReplyNaming()


class PartnerTelemetryMiddleware(NatsTelemetryMiddleware):
    """FastStream's NATS telemetry middleware, naming replies' spans ``(reply) publish``."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        TelemetryMiddleware.__init__(
            self,
            settings_provider_factory=_settings,
            tracer_provider=tracer_provider,
            include_messages_counters=False,
        )


def partner_middlewares(
    service_name: str, registry: CollectorRegistry = REGISTRY
) -> tuple[NatsPrometheusMiddleware | NatsTelemetryMiddleware, ...]:
    """Prometheus always; telemetry when this process traces (else it would cost every
    request a no-op span's work)."""
    metrics = NatsPrometheusMiddleware(registry=registry, app_name=service_name)
    provider = provider_for(service_name)
    if provider is None:
        return (metrics,)
    return (PartnerTelemetryMiddleware(provider), metrics)
