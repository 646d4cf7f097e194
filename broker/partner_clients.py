"""The partners' ports over NATS: how the command service reaches the payment gateway
and the shipping carrier (:mod:`partners`).

Plain nats-py requests, on the command path like the rest of it. Each call is a CLIENT
span whose ``traceparent`` travels in the request, so the partner's own span (FastStream's
telemetry middleware continues it) sits in the order's trace; ``correlation_id`` carries
ours, so FastStream's spans and logs name the same conversation. Nobody serving the
subject is "unavailable, try later" for the saga; no answer in time is
:class:`~domain.errors.Unresponsive`, which leaves the command unanswered too, so the
saga's own timeout decides, as for any lost request.
"""

from __future__ import annotations

import json
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from broker.subjects import (
    PAYMENT_CHARGE,
    PAYMENT_GATEWAY,
    PAYMENT_REFUND,
    SHIPPING_BOOK,
    SHIPPING_CANCEL,
    SHIPPING_CARRIER,
)
from domain.errors import (
    CodedError,
    DomainError,
    PaymentUnavailable,
    ShippingUnavailable,
    Unresponsive,
)
from domain.metadata import MessageContext
from domain.partners import (
    BookingReply,
    BookingRequest,
    CancelBookingReply,
    CancelBookingRequest,
    ChargeReply,
    ChargeRequest,
    RefundReply,
    RefundRequest,
)
from telemetry import tracing

#: Seconds the command service waits for a partner (``ORDERMESH_PARTNER_TIMEOUT``).
DEFAULT_PARTNER_TIMEOUT = 2.0

R = TypeVar("R", bound=BaseModel)


class PartnerError(CodedError):
    """A partner refused a request it could not read: a bug on our side, not the order's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, {"partner_code": code})
        self.code = "internal_error"


class _PartnerClient:
    """One partner reached over NATS: request, trace, decode, map failures."""

    def __init__(
        self,
        nc: NATS,
        partner: str,
        unavailable: type[DomainError],
        timeout: float = DEFAULT_PARTNER_TIMEOUT,
    ) -> None:
        self._nc = nc
        self._partner = partner
        self._unavailable = unavailable
        self.timeout = timeout

    async def _call(
        self, subject: str, request: BaseModel, reply_model: type[R], ctx: MessageContext
    ) -> R:
        operation = subject.rsplit(".", 1)[-1]
        with tracing.span(
            f"{self._partner} {operation}",
            kind=SpanKind.CLIENT,
            traceparent=ctx.traceparent,
            tracestate=ctx.tracestate,
            attributes=tracing.messaging_attributes(subject, "send", ctx.id, ctx.correlation_id),
        ) as span:
            headers = {"correlation_id": ctx.correlation_id, "content-type": "application/json"}
            traceparent = tracing.traceparent_of(span) if span.is_recording() else ctx.traceparent
            if traceparent:
                headers["traceparent"] = traceparent
            try:
                msg = await self._nc.request(
                    subject,
                    request.model_dump_json().encode(),
                    timeout=self.timeout,
                    headers=headers,
                )
            except NoRespondersError:
                tracing.fail(span, self._unavailable.code, "no responders")
                raise self._unavailable(
                    f"the {self._partner} is not reachable (nobody serves {subject})",
                    partner=self._partner,
                ) from None
            except NatsTimeout:
                tracing.fail(span, "timeout", f"no answer in {self.timeout:.3g} s")
                raise Unresponsive(
                    f"the {self._partner} did not answer {subject} in {self.timeout:.3g} s"
                ) from None
            body = json.loads(msg.data)
            if isinstance(body, dict) and body.get("ok") is False:
                error = body.get("error") or {}
                code, message = str(error.get("code")), str(error.get("message", ""))
                tracing.fail(span, code, message)
                raise PartnerError(code, f"the {self._partner} refused {subject}: {message}")
            return reply_model.model_validate(body)


class NatsPaymentGateway(_PartnerClient):
    """:class:`domain.partners.PaymentGateway` over NATS."""

    def __init__(self, nc: NATS, timeout: float = DEFAULT_PARTNER_TIMEOUT) -> None:
        super().__init__(nc, PAYMENT_GATEWAY, PaymentUnavailable, timeout)

    async def charge(self, request: ChargeRequest, ctx: MessageContext) -> ChargeReply:
        return await self._call(PAYMENT_CHARGE, request, ChargeReply, ctx)

    async def refund(self, request: RefundRequest, ctx: MessageContext) -> RefundReply:
        return await self._call(PAYMENT_REFUND, request, RefundReply, ctx)


class NatsShippingCarrier(_PartnerClient):
    """:class:`domain.partners.ShippingCarrier` over NATS."""

    def __init__(self, nc: NATS, timeout: float = DEFAULT_PARTNER_TIMEOUT) -> None:
        super().__init__(nc, SHIPPING_CARRIER, ShippingUnavailable, timeout)

    async def book(self, request: BookingRequest, ctx: MessageContext) -> BookingReply:
        return await self._call(SHIPPING_BOOK, request, BookingReply, ctx)

    async def cancel(
        self, request: CancelBookingRequest, ctx: MessageContext
    ) -> CancelBookingReply:
        return await self._call(SHIPPING_CANCEL, request, CancelBookingReply, ctx)
