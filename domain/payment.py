"""Payments: one stream per order, charged once, refunded or voided at most once.

A refund that arrives before the charge (the saga gave up waiting) voids the payment,
so a charge that turns up late is refused instead of taking money for a cancelled order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from domain.errors import InvalidState, PaymentDeclined
from domain.messages import Command, Event, Identifier
from domain.money import Money

PaymentStatus = Literal["none", "processed", "declined", "refunded", "voided"]
PaymentMethod = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Reason = Annotated[str, Field(min_length=1, max_length=500)]


def stream_name(order_id: str) -> str:
    return f"payment-{order_id}"


def payment_id(order_id: str) -> str:
    return f"pay-{order_id}"


class ProcessPayment(Command):
    TYPE: ClassVar[str] = "payment.process"
    AGGREGATE: ClassVar[str] = "payment"
    order_id: Identifier
    amount: Money
    method: PaymentMethod = "card"


class RefundPayment(Command):
    TYPE: ClassVar[str] = "payment.refund"
    AGGREGATE: ClassVar[str] = "payment"
    order_id: Identifier
    reason: Reason = "order cancelled"


class PaymentEvent(Event):
    AGGREGATE: ClassVar[str] = "payment"
    ID_FIELD: ClassVar[str] = "order_id"
    order_id: str


class PaymentProcessed(PaymentEvent):
    TYPE: ClassVar[str] = "payment.processed"
    payment_id: str
    amount: Money
    method: str


class PaymentWasDeclined(PaymentEvent):
    TYPE: ClassVar[str] = "payment.declined"
    amount: Money
    method: str
    reason: str


class PaymentRefunded(PaymentEvent):
    TYPE: ClassVar[str] = "payment.refunded"
    payment_id: str
    amount: Money
    reason: str


class PaymentVoided(PaymentEvent):
    TYPE: ClassVar[str] = "payment.voided"
    reason: str


@dataclass
class Payment:
    order_id: str
    status: PaymentStatus = "none"
    amount: Decimal = Decimal("0.00")
    method: str = ""
    decline_reason: str = ""

    def apply(self, event: Event) -> None:
        match event:
            case PaymentProcessed():
                self.status, self.amount, self.method = "processed", event.amount, event.method
            case PaymentWasDeclined():
                self.status, self.amount, self.method = "declined", event.amount, event.method
                self.decline_reason = event.reason
            case PaymentRefunded():
                self.status = "refunded"
            case PaymentVoided():
                self.status = "voided"

    def check_chargeable(self) -> None:
        """Refuse a charge that can no longer happen; a stored decline is replayed."""
        if self.status == "declined":
            raise PaymentDeclined(
                f"payment for order {self.order_id!r} was declined",
                order_id=self.order_id,
                reason=self.decline_reason,
            )
        if self.status in ("refunded", "voided"):
            raise InvalidState(
                f"payment for order {self.order_id!r} is {self.status}",
                order_id=self.order_id,
                status=self.status,
            )

    def process(self, cmd: ProcessPayment, approved: bool) -> list[Event]:
        if self.status == "processed":
            return []
        self.check_chargeable()
        if approved:
            return [
                PaymentProcessed(
                    order_id=self.order_id,
                    payment_id=payment_id(self.order_id),
                    amount=cmd.amount,
                    method=cmd.method,
                )
            ]
        return [
            PaymentWasDeclined(
                order_id=self.order_id,
                amount=cmd.amount,
                method=cmd.method,
                reason=PaymentDeclined.code,
            )
        ]

    def refund(self, reason: str) -> list[Event]:
        if self.status == "processed":
            return [
                PaymentRefunded(
                    order_id=self.order_id,
                    payment_id=payment_id(self.order_id),
                    amount=self.amount,
                    reason=reason,
                )
            ]
        if self.status in ("none", "declined"):
            return [PaymentVoided(order_id=self.order_id, reason=reason)]
        return []
