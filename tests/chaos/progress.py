"""Where the system is: the store, the relay, the projections and the sagas, and whether
it has settled (every saga ended, everything relayed and projected).

Read cheaply enough to poll: a few aggregates over the store file (read-only), the last
message of ``EVENTS``, the projections' checkpoints.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from nats.errors import Error as NatsError

from broker.cloudevents import H_POSITION
from tests.chaos import checks
from tests.chaos.cluster import Cluster
from tests.conftest import eventually


@dataclass
class Progress:
    """How far the system got: the store, the relay, the projections, the sagas."""

    store_last: int = 0
    placed: int = 0
    ended: int = 0
    sagas_started: int = 0
    sagas_ended: int = 0
    relayed: int | None = None
    projected: int | None = None

    @property
    def settled(self) -> bool:
        return (
            self.placed == self.ended == self.sagas_started == self.sagas_ended
            and self.relayed == self.store_last
            and self.projected == self.store_last
        )


def _store_progress(path: Path) -> tuple[int, int, int, int, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT COALESCE(MAX(position), 0),"
            " COALESCE(SUM(type = 'order.placed'), 0),"
            " COALESCE(SUM(type IN ('order.confirmed', 'order.cancelled')), 0),"
            " COALESCE(SUM(type = 'order_fulfillment.started'), 0),"
            " COALESCE(SUM(type IN ('order_fulfillment.completed', 'order_fulfillment.failed')), 0)"
            " FROM events"
        ).fetchone()
    finally:
        conn.close()
    return tuple(int(v) for v in row)  # type: ignore[return-value]


async def progress(cluster: Cluster) -> Progress:
    last, placed, ended, started, sagas_ended = await asyncio.to_thread(
        _store_progress, cluster.events_db
    )
    now = Progress(last, placed, ended, started, sagas_ended)
    js = cluster.client.jetstream()
    try:
        state = (await js.stream_info("EVENTS")).state
        if state.messages:
            headers = (await js.get_msg("EVENTS", state.last_seq)).headers or {}
            now.relayed = int(headers[H_POSITION]) if H_POSITION in headers else None
        else:
            now.relayed = 0
    except (NatsError, TimeoutError):
        now.relayed = None
    positions = await asyncio.to_thread(checks.checkpoints, cluster.read_models_db)
    now.projected = min(positions.values()) if positions else None
    return now


async def settled(cluster: Cluster, timeout: float) -> Progress:
    """The progress once settled; ``AssertionError`` if not within ``timeout``."""

    async def check() -> Progress | None:
        now = await progress(cluster)
        return now if now.settled else None

    done: Progress = await eventually(check, timeout=timeout, interval=0.25)
    return done
