"""One SQLite connection owned by one worker thread.

Every call is a single hop off the event loop that may run many statements, so a
whole transaction costs one context switch, and SQLite's connection never crosses
threads. Shared by the embedded event store and the read-model database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SQLiteWorker:
    """Run callables against a WAL-mode connection in a dedicated thread."""

    def __init__(
        self,
        path: Path,
        schema: str,
        *,
        synchronous: str = "NORMAL",
        name: str = "sqlite",
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = path
        #: Seconds a statement waits for another connection's lock before it fails.
        self.busy_timeout = busy_timeout
        self._schema = schema
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        conn.executescript(self._schema)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in the worker thread; the first call opens the file."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path} is closed")

        def call() -> T:
            if self._conn is None:
                self._conn = self._connect()
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=False)
