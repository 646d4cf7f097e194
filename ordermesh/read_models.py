"""The read-model database and the replay that rebuilds a projection from the store."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from loguru import logger

from domain.event_store import EventStore
from infra.sqlite_worker import SQLiteWorker
from projections import Projection, all_projections
from projections.base import Checkpoint, apply_batch, checkpoint, ensure_schema, reset

REBUILD_PAGE = 1000


class ReadModelDatabase(SQLiteWorker):
    """A worker whose schema setup may drop tables, which a fixed script cannot decide."""

    def __init__(self, path: Path, projections: list[Projection]) -> None:
        super().__init__(path, "", name="read-models")
        self._projections = projections

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        try:
            replaced = ensure_schema(conn, self._projections)
        except BaseException:
            conn.close()
            raise
        for name in replaced:
            logger.warning(
                "read model {} had an older schema: recreated, replaying from the start of EVENTS",
                name,
            )
        return conn


def open_read_models(path: Path) -> SQLiteWorker:
    return ReadModelDatabase(path, all_projections())


def projection_named(name: str) -> Projection:
    for projection in all_projections():
        if projection.name == name:
            return projection
    known = ", ".join(p.name for p in all_projections())
    raise KeyError(f"unknown projection {name!r} (known: {known})")


async def rebuild(db: SQLiteWorker, store: EventStore, projection: Projection) -> int:
    """Replay every stored event into an emptied model, in one transaction.

    One transaction means readers see the old model until the new one is complete, and
    a live projector in another process waits instead of interleaving with the replay.
    Returns the checkpoint reached.
    """

    def begin(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        reset(conn, projection)

    await db.run(begin)
    try:
        position = 0
        while batch := await store.read_all(position, REBUILD_PAGE):
            position = batch[-1].position
            await db.run(functools.partial(apply_batch, projection=projection, batch=batch))
    except BaseException:
        await db.run(lambda conn: conn.execute("ROLLBACK"))
        raise
    await db.run(lambda conn: conn.execute("COMMIT"))
    return position


async def checkpoints(db: SQLiteWorker) -> dict[str, Checkpoint]:
    def read(conn: sqlite3.Connection) -> dict[str, Checkpoint]:
        return {p.name: checkpoint(conn, p.name) for p in all_projections()}

    return await db.run(read)
