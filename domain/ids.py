"""Identifiers. Random version-4 UUIDs drawn from ``random``, not ``os.urandom``.

Ids must be unique, not secret; ``uuid.uuid4()`` costs a system call each, and a
command creates several. CPython reseeds ``random`` in a forked child, so forked
workers do not repeat each other.
"""

from __future__ import annotations

import random
import uuid


def new_uuid() -> uuid.UUID:
    return uuid.UUID(int=random.getrandbits(128), version=4)


def new_id() -> str:
    return str(new_uuid())
