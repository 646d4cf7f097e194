"""The API's HTTP server: uvicorn on the process's own event loop, started and stopped
like every other component."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn
from loguru import logger
from starlette.types import ASGIApp

from broker.tasks import cancel_and_wait

STARTUP_TIMEOUT = 10.0


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handling: the process's own SIGINT and SIGTERM
    handlers stop every component in order, this one included."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 4000) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # our logging (loguru) receives uvicorn's records
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            ws_ping_interval=20.0,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="api-server")
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # it failed to bind: say why
                    raise RuntimeError("the API server stopped while starting")
                await asyncio.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        logger.info("monitor on {}", self.url)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(self._task)
        await cancel_and_wait(self._task)
        self._task = None
