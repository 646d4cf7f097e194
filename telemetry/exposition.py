"""The process's HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``) and the
event-loop lag probe: one of each per process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from loguru import logger
from prometheus_client import REGISTRY, make_wsgi_app

from telemetry.metrics import event_loop_lag

LAG_INTERVAL = 0.5
#: A new header list per response: the server appends Content-Length to the one it gets.
_TEXT = ("Content-Type", "text/plain; charset=utf-8")


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per request: a slow scrape does not hold up a health check."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds: not worth a line each."""


def health_app(ready: Callable[[], bool], metrics: WSGIApplication) -> WSGIApplication:
    """``/healthz``: the process answers. ``/readyz``: ``ready()`` says its services
    take requests (503 until then, and again while NATS is out of reach). Anything
    else is prometheus-client's exposition, OpenMetrics included."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [_TEXT])
            return [b"ok\n"]
        if path == "/readyz":
            if ready():
                start_response("200 OK", [_TEXT])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [_TEXT])
            return [b"not ready\n"]
        return metrics(environ, start_response)

    return app


class MetricsEndpoint:
    """The endpoint in its own thread: it answers a scrape or a probe even while the
    event loop is busy, and negotiates OpenMetrics (with exemplars) from ``Accept``."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", *, ready: Callable[[], bool] = lambda: True
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/metrics"

    async def start(self) -> None:
        app = health_app(self._ready, make_wsgi_app(REGISTRY))
        server = make_server(self.host, self.port, app, _Server, _QuietHandler)
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics-endpoint", daemon=True
        )
        self._thread.start()
        self._server = server
        self.port = server.server_port
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
            self._task.cancel()  # it only sleeps: one cancel ends it
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            event_loop_lag.set(max(0.0, loop.time() - before - self.interval))
