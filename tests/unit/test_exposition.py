"""The event-loop lag probe reports a loop that was blocked."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from telemetry.exposition import EventLoopLag


def lag() -> float:
    return REGISTRY.get_sample_value("ordermesh_event_loop_lag_seconds") or 0.0


async def test_a_blocked_loop_shows_as_lag() -> None:
    probe = EventLoopLag(interval=0.05)
    await probe.start()
    try:
        await asyncio.sleep(0)  # the probe starts its first wait
        time.sleep(0.3)  # noqa: ASYNC251 - the point: block the loop past the probe's wake-up
        # The overdue probe runs on the loop's next turns, before any new 0.05 s wait ends.
        for _ in range(100):
            if lag() >= 0.2:
                break
            await asyncio.sleep(0)
        assert lag() >= 0.2
    finally:
        await probe.stop()
