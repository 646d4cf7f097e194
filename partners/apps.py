"""The payment gateway and the shipping carrier as FastStream applications.

Each partner is its own :class:`NatsBroker` (its own connection, queue group, service
name and metrics label) with typed subscribers: FastStream validates the request into
the contract's pydantic model (:mod:`domain.partners`) and serialises the reply. What
FastStream would do by itself with a bad request (log it and answer nothing) is replaced
by the reply every ordermesh service gives: ``{"ok": false, "error": {"code", …}}``.
A gateway that "never answers" (``slow-card``) sends no reply at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from faststream.middlewares import ExceptionMiddleware
from faststream.nats import NatsBroker, NatsSecurity, NatsUserPassword
from faststream.types import SendableMessage
from pydantic import ValidationError

from broker.connection import server_list
from broker.subjects import (
    PAYMENT_CHARGE,
    PAYMENT_GATEWAY,
    PAYMENT_REFUND,
    SHIPPING_BOOK,
    SHIPPING_CANCEL,
    SHIPPING_CARRIER,
)
from domain.errors import Unresponsive
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
from partners.carrier import ShippingCarrierService
from partners.gateway import PaymentGatewayService

#: Requests a partner works on at once (FastStream runs a core subscriber's handler one
#: message at a time unless told otherwise; a gateway waits on its ledger and its
#: simulated latency, and must not make the 64th caller wait for the other 63).
WORKERS = 64
DEFAULT_URL = "nats://127.0.0.1:4222"


def _validation_reply(exc: ValidationError) -> SendableMessage:
    errors = exc.errors()
    unreadable = (
        bool(errors)
        and errors[0].get("loc") in ((), ("body",))
        and isinstance(errors[0].get("input"), str | bytes)
    )
    code = "malformed_json" if unreadable else "validation_error"
    # Logged inside the request's span: the line carries its trace id.
    logging.getLogger("partners").warning("refused a request it cannot read: %s", code)
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors[:10]]
    return {"ok": False, "error": {"code": code, "message": "invalid request", "details": details}}


def _unanswered(exc: Unresponsive) -> None:
    logging.getLogger("partners").info("left unanswered: %s", exc)


def _internal(exc: Exception) -> SendableMessage:
    if isinstance(exc, Unresponsive):
        # Publishing handlers are tried first, by the exception's classes: this one
        # is for the handler below, which answers nothing.
        raise exc
    logging.getLogger("partners").error("request failed", exc_info=exc)
    return {
        "ok": False,
        "error": {"code": "internal_error", "message": "internal error", "details": None},
    }


def _errors() -> ExceptionMiddleware:
    return ExceptionMiddleware(
        handlers={Unresponsive: _unanswered},
        publish_handlers={ValidationError: _validation_reply, Exception: _internal},
    )


def faststream_options(options: dict[str, Any]) -> dict[str, Any]:
    """nats-py's connection options (``broker.connection.connect_options``) as FastStream's
    broker takes them: it accepts a token, a credentials file and an inbox prefix as they
    are, but a user and password, and TLS, only as a ``security`` object."""
    options = dict(options)
    user, password, tls = (
        options.pop("user", None),
        options.pop("password", None),
        options.pop("tls", None),
    )
    if user is not None:
        options["security"] = NatsUserPassword(
            username=user, password=password or "", ssl_context=tls
        )
    elif tls is not None:
        options["security"] = NatsSecurity(ssl_context=tls)
    return options


def _broker(
    name: str, servers: str, middlewares: Sequence[Any], options: dict[str, Any]
) -> NatsBroker:
    return NatsBroker(
        server_list(servers),
        name=name,
        # FastStream logs every message at the level given: DEBUG keeps that out of an
        # INFO log (and its cost off each request); its errors still reach the log.
        logger=logging.getLogger(f"partners.{name}"),
        log_level=logging.DEBUG,
        middlewares=[*middlewares, _errors()],
        description=f"ordermesh's simulated {name.replace('-', ' ')}",
        **faststream_options(options),
    )


def payment_gateway(
    service: PaymentGatewayService,
    servers: str = DEFAULT_URL,
    *,
    middlewares: Sequence[Any] = (),
    **options: Any,
) -> NatsBroker:
    """The gateway's broker: ``partners.payment.charge`` and ``partners.payment.refund``."""
    broker = _broker(PAYMENT_GATEWAY, servers, middlewares, options)

    @broker.subscriber(
        PAYMENT_CHARGE,
        queue=PAYMENT_GATEWAY,
        max_workers=WORKERS,
        title="partners.payment.charge",
        description="Charge a payment once per payment_id; the reply says approved,"
        " declined, unavailable (try again) or voided. No reply for a slow-card.",
    )
    async def charge(body: ChargeRequest) -> ChargeReply:
        return await service.charge(body)

    @broker.subscriber(
        PAYMENT_REFUND,
        queue=PAYMENT_GATEWAY,
        max_workers=WORKERS,
        title="partners.payment.refund",
        description="Refund a charge, or void a payment not charged yet (a later charge"
        " is then refused).",
    )
    async def refund(body: RefundRequest) -> RefundReply:
        return await service.refund(body)

    return broker


def shipping_carrier(
    service: ShippingCarrierService,
    servers: str = DEFAULT_URL,
    *,
    middlewares: Sequence[Any] = (),
    **options: Any,
) -> NatsBroker:
    """The carrier's broker: ``partners.shipping.book`` and ``partners.shipping.cancel``."""
    broker = _broker(SHIPPING_CARRIER, servers, middlewares, options)

    @broker.subscriber(
        SHIPPING_BOOK,
        queue=SHIPPING_CARRIER,
        max_workers=WORKERS,
        title="partners.shipping.book",
        description="Book a shipment once per shipment_id; refused for a restricted"
        " country (XX), cancelled if a cancellation came first.",
    )
    async def book(body: BookingRequest) -> BookingReply:
        return await service.book(body)

    @broker.subscriber(
        SHIPPING_CANCEL,
        queue=SHIPPING_CARRIER,
        max_workers=WORKERS,
        title="partners.shipping.cancel",
        description="Cancel a booking, or record the cancellation before it (a later"
        " booking is then refused).",
    )
    async def cancel(body: CancelBookingRequest) -> CancelBookingReply:
        return await service.cancel(body)

    return broker
