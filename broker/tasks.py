"""Stopping background tasks reliably.

On Python 3.11, ``asyncio.wait_for`` returns a result that arrives together with a
cancellation and drops the cancellation. nats-py uses ``wait_for`` in every request
(stream info, consumer creation, fetches), so one ``task.cancel()`` can be lost and a
loop that should stop keeps running. Cancelling until the task is done is the cure.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], *, retry_every: float = 0.1) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_every)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
