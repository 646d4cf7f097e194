"""The ``/metrics`` endpoint and the event-loop lag probe: one of each per process."""

from __future__ import annotations

import asyncio
import threading
from wsgiref.simple_server import WSGIServer

from loguru import logger
from prometheus_client import start_http_server

from broker.tasks import cancel_and_wait
from telemetry.metrics import event_loop_lag

LAG_INTERVAL = 0.5


class MetricsEndpoint:
    """prometheus-client's server, in its own thread: it answers a scrape even while the
    event loop is busy, and negotiates OpenMetrics (with exemplars) from ``Accept``."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.host)
        self.port = self._server.server_port
        logger.info("metrics on {}", self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class EventLoopLag:
    """Sleeps a fixed interval and records how late it woke: a blocked loop shows here
    before it shows anywhere else."""

    def __init__(self, interval: float = LAG_INTERVAL) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            event_loop_lag.set(max(0.0, loop.time() - before - self.interval))
