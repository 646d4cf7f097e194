"""The event loop every ordermesh process runs on: uvloop where it exists.

Measured with ``ordermesh bench``: uvloop raises the command path by about a fifth and
doubles the rate at which the read model stays within 100 ms, while raw nats-py barely
moves (its cost is in its own Python code), so our ratios to raw NATS improve.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(main)
    return uvloop.run(main)
