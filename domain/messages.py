"""Base classes for every message: strict pydantic models with a ``TYPE`` name.

``TYPE`` is the CloudEvents ``type`` (``order.place``, ``order.placed``); the subject
registry in :mod:`broker.subjects` derives every NATS subject from it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, StringConstraints

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$"),
]
"""Ids end up in stream names (``order-<id>``), so they are kept to a safe alphabet."""


class Message(BaseModel):
    """Unknown fields are an error: a typo in a client must not be silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    TYPE: ClassVar[str]


class Command(Message):
    """A request to change one aggregate."""

    AGGREGATE: ClassVar[str]


class Event(Message):
    """A fact that happened to one aggregate, named in the past tense."""

    AGGREGATE: ClassVar[str]
    ID_FIELD: ClassVar[str]

    def aggregate_id(self) -> str:
        return str(getattr(self, self.ID_FIELD))


class Query(Message):
    """A request to read a model; never changes anything."""
