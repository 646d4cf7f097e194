"""Base classes for every message: strict pydantic models with a ``TYPE`` name.

``TYPE`` is the CloudEvents ``type`` (``order.place``, ``order.placed``); the subject
registry in :mod:`broker.subjects` derives every NATS subject from it.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Annotated, Any, ClassVar, Self

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

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """A message from values that are valid already, with every field given.

        What ``model_construct`` does for such values, without its per-field handling of
        aliases and defaults: about a third of the cost, which was most of pricing an
        order. Nothing is checked; the caller owns that the values are valid (tests hold
        each use equal to the validated message). Anything else, or a model with a
        ``model_post_init``, goes through ``model_construct``.
        """
        fields = cls.__pydantic_fields__
        state = {name: values[name] for name in fields if name in values}
        if len(state) != len(values) or len(state) != len(fields) or cls.__pydantic_post_init__:
            constructed: Self = cls.model_construct(**values)  # type: ignore[assignment]
            return constructed
        message: Self = cls.__new__(cls)
        _set(message, "__dict__", state)
        _set(message, "__pydantic_fields_set__", set(state))
        _set(message, "__pydantic_extra__", None)
        _set(message, "__pydantic_private__", None)
        return message


_set = object.__setattr__


#: Per command class, its fields with a default factory (ids the service generates).
_GENERATED: dict[type[Message], frozenset[str]] = {}


class Command(Message):
    """A request to change one aggregate."""

    AGGREGATE: ClassVar[str]

    def digest(self) -> str:
        """What the body says, as a short hash: a command id resent with another body is
        a different command (refused), with the same body the same one (answered again).

        A field the service generated (an ``order_id`` left out) is left out of it: a
        resend of that body would generate another, yet it is the same command.
        """
        cls = type(self)
        generated = _GENERATED.get(cls)
        if generated is None:
            generated = _GENERATED[cls] = frozenset(
                name
                for name, info in cls.__pydantic_fields__.items()
                if info.default_factory is not None
            )
        unset = set(generated - self.model_fields_set) if generated else None
        body = cls.__pydantic_serializer__.to_json(self, exclude=unset or None)
        return blake2b(self.TYPE.encode() + b" " + body, digest_size=16).hexdigest()


class Event(Message):
    """A fact that happened to one aggregate, named in the past tense."""

    AGGREGATE: ClassVar[str]
    ID_FIELD: ClassVar[str]

    def aggregate_id(self) -> str:
        return str(getattr(self, self.ID_FIELD))


class Query(Message):
    """A request to read a model; never changes anything."""
