"""The reply envelope of every command and query.

``{"ok": true, "data": …}`` or ``{"ok": false, "error": {"code", "message", "details"}}``:
one shape for every client, so a caller never has to guess whether silence meant
success. Codes are stable; ``docs/protocol.md`` lists them.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json

from domain.errors import CodedError, PaymentUnavailable, ShippingUnavailable
from handlers.executor import ConcurrencyConflict

MALFORMED_JSON = "malformed_json"
VALIDATION_ERROR = "validation_error"
UNKNOWN_COMMAND = "unknown_command"
UNKNOWN_QUERY = "unknown_query"
PAYLOAD_TOO_LARGE = "payload_too_large"
STORE_UNAVAILABLE = "store_unavailable"
INTERNAL_ERROR = "internal_error"

TRANSPORT_CODES = (
    MALFORMED_JSON,
    VALIDATION_ERROR,
    UNKNOWN_COMMAND,
    UNKNOWN_QUERY,
    PAYLOAD_TOO_LARGE,
    STORE_UNAVAILABLE,
    INTERNAL_ERROR,
)

#: Refusals that say the service failed, not the request: what the error-ratio alerts and
#: the availability SLO count (``infra/prometheus/rules``), as ``code=~"…"``.
FAULT_CODES = (
    INTERNAL_ERROR,
    STORE_UNAVAILABLE,
    ConcurrencyConflict.code,
    PaymentUnavailable.code,
    ShippingUnavailable.code,
)


class RequestError(CodedError):
    """A request refused before it reached the domain (bad JSON, unknown subject, …)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message, details)
        self.code = code


def ok(data: Any) -> bytes:
    """Encoded by pydantic-core: about six times faster than ``json.dumps`` on a reply,
    which every request writes. Anything it cannot encode is written as its ``str``."""
    return to_json({"ok": True, "data": data}, fallback=str)


def error(code: str, message: str, details: Any = None) -> bytes:
    return to_json(
        {"ok": False, "error": {"code": code, "message": message, "details": details}},
        fallback=str,
    )
