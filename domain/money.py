"""Money is a ``Decimal`` with two places, written on the wire as a string ("12.50").

A float would turn 0.10 + 0.20 into 0.30000000000000004; strings keep every client,
in every language, exact.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("1000000000")


def to_money(value: Any) -> Decimal:
    """Parse a price: strings and integers only, at most two decimal places, not negative."""
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('money must be a decimal string such as "12.50"')
    else:
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError("money must be finite")
    if amount < 0:
        raise ValueError("money must not be negative")
    if amount > MAX_AMOUNT:
        raise ValueError(f"money must not exceed {MAX_AMOUNT}")
    if amount != amount.quantize(CENT):
        raise ValueError("money has at most two decimal places")
    return amount.quantize(CENT)


def format_money(amount: Decimal) -> str:
    """Two places always. Amounts here have two places already (validated, or cents times
    a count, or sums of those), so their own ``str`` is the answer, without a quantize;
    anything else is quantized."""
    text = str(amount)
    if len(text) > 3 and text[-3] == "." and "E" not in text:
        return text
    return str(amount.quantize(CENT))


Money = Annotated[
    Decimal,
    BeforeValidator(to_money),
    PlainSerializer(format_money, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d{1,2})?$", "examples": ["12.50"]}),
]
