"""What ordermesh asks its partners, the payment gateway and the shipping carrier.

The partners are services of their own (:mod:`partners`, FastStream applications), reached
over NATS request/reply. The payment and shipment handlers talk to them only through the
two ports below, so a handler neither knows nor cares whether the gateway is a process
across the network or an object in a unit test. Both partners are idempotent on the id
ordermesh sends (``payment_id``, ``shipment_id``), the way a real gateway is on its
idempotency key: a retried charge is charged once, a retried booking booked once.

Replies carry a status rather than an error for every answer a partner may give in the
normal course of business (declined, refused, try again later); ``{"ok": false, "error":
…}`` is kept for requests a partner could not read at all.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Protocol

from pydantic import Field

from domain.messages import Identifier, Message
from domain.metadata import MessageContext
from domain.money import Money
from domain.payment import PaymentMethod
from domain.shipping import ShippingAddress

Reason = Annotated[str, Field(min_length=1, max_length=500)]


class PartnerMessage(Message):
    """A request or reply on ``partners.*``; the type names the partner and the action."""


class ChargeRequest(PartnerMessage):
    TYPE: ClassVar[str] = "payment.charge"
    payment_id: Identifier
    order_id: Identifier
    amount: Money
    method: PaymentMethod


#: ``unavailable``: the gateway failed this time and the same request may succeed later;
#: ``voided``: the payment was refunded or voided before this charge arrived.
ChargeStatus = Literal["approved", "declined", "unavailable", "voided"]


class ChargeReply(PartnerMessage):
    TYPE: ClassVar[str] = "payment.charge.reply"
    payment_id: str
    status: ChargeStatus
    charge_id: str | None = None
    reason: str | None = None


class RefundRequest(PartnerMessage):
    TYPE: ClassVar[str] = "payment.refund"
    payment_id: Identifier
    order_id: Identifier
    reason: Reason = "order cancelled"


class RefundReply(PartnerMessage):
    """``refunded``: money went back; ``voided``: nothing had been charged, and a charge
    that arrives later is refused."""

    TYPE: ClassVar[str] = "payment.refund.reply"
    payment_id: str
    status: Literal["refunded", "voided"]


class BookingRequest(PartnerMessage):
    TYPE: ClassVar[str] = "shipping.book"
    shipment_id: Identifier
    order_id: Identifier
    address: ShippingAddress | None = None


class BookingReply(PartnerMessage):
    """``refused`` carries the reason (``restricted_area``); ``cancelled``: the booking
    was cancelled before it was made, and stays so."""

    TYPE: ClassVar[str] = "shipping.book.reply"
    shipment_id: str
    status: Literal["booked", "refused", "cancelled"]
    tracking_number: str | None = None
    reason: str | None = None


class CancelBookingRequest(PartnerMessage):
    TYPE: ClassVar[str] = "shipping.cancel"
    shipment_id: Identifier
    order_id: Identifier
    reason: Reason = "order cancelled"


class CancelBookingReply(PartnerMessage):
    TYPE: ClassVar[str] = "shipping.cancel.reply"
    shipment_id: str
    status: Literal["cancelled"]


class PaymentGateway(Protocol):
    """The port the payment handlers charge and refund through.

    Raises :class:`~domain.errors.PaymentUnavailable` when the gateway cannot be
    reached, and :class:`~domain.errors.Unresponsive` when it does not answer in time.
    """

    async def charge(self, request: ChargeRequest, ctx: MessageContext) -> ChargeReply: ...

    async def refund(self, request: RefundRequest, ctx: MessageContext) -> RefundReply: ...


class ShippingCarrier(Protocol):
    """The port the shipment handlers book and cancel through.

    Raises :class:`~domain.errors.ShippingUnavailable` when the carrier cannot be
    reached, and :class:`~domain.errors.Unresponsive` when it does not answer in time.
    """

    async def book(self, request: BookingRequest, ctx: MessageContext) -> BookingReply: ...

    async def cancel(
        self, request: CancelBookingRequest, ctx: MessageContext
    ) -> CancelBookingReply: ...
