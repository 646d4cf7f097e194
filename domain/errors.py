"""Domain errors carry a stable ``code``: clients branch on it, so codes never change."""

from __future__ import annotations

from typing import Any


class CodedError(Exception):
    """Any refusal that reaches a client: a stable code, a message, optional details."""

    code = "error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class DomainError(CodedError):
    """A command was understood but refused by the business rules."""

    code = "domain_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, details)


class NotFound(DomainError):
    code = "not_found"


class ProductNotFound(NotFound):
    code = "product_not_found"


class OrderNotFound(NotFound):
    code = "order_not_found"


class AlreadyExists(DomainError):
    code = "already_exists"


class ProductAlreadyExists(AlreadyExists):
    code = "product_already_exists"


class OrderAlreadyExists(AlreadyExists):
    code = "order_already_exists"


class InvalidState(DomainError):
    code = "invalid_state"


class InsufficientStock(DomainError):
    code = "insufficient_stock"


class AmountTooLarge(DomainError):
    """A total past what money may be (``domain.money.MAX_AMOUNT``)."""

    code = "amount_too_large"


class PaymentDeclined(DomainError):
    code = "payment_declined"


class RestrictedArea(DomainError):
    code = "restricted_area"


class PaymentUnavailable(DomainError):
    """The payment gateway failed this time, or could not be reached; the same request
    may succeed later."""

    code = "payment_unavailable"


class ShippingUnavailable(DomainError):
    """The carrier could not be reached this time; the same request may succeed later."""

    code = "shipping_unavailable"


class SagaNotFound(NotFound):
    code = "saga_not_found"


class Unresponsive(Exception):
    """A partner did not answer in time (the simulated gateway never answers a
    ``slow-card``): the service sends no reply either, so the caller's own timeout
    decides, as it would for any request lost on the way."""
