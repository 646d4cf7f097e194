"""Where an order goes: the address a customer gives and shipping checks."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from domain.messages import Message

Line = Annotated[str, Field(min_length=1, max_length=200)]


class ShippingAddress(Message):
    """Only the country drives a rule (restricted areas); the rest is carried along."""

    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    name: Line | None = None
    street: Line | None = None
    city: Line | None = None
    postal_code: Annotated[str, Field(min_length=1, max_length=20)] | None = None
