"""The monitor as a process of its own beside ``ordermesh up``.

The monitor receives a copy of every message the services exchange. Decoded on the
services' own event loop, those copies cost a quarter of the command throughput
(``ordermesh bench``: 0.73 of the monitor off); in a process of its own, its cost is a
share of the machine's other core. So ``ordermesh up`` starts ``ordermesh run api`` as a
child, waits until its page answers, and stops it on the way out; the child stops by
itself when ``ordermesh up`` dies without a word: its stdin is a pipe from the parent,
which the kernel closes however the parent ends (``ORDERMESH_STOP_WITH_STDIN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import urllib.error
import urllib.request

from infra.nats_server import free_port

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Set to 1 in the child's environment: stop when stdin (the parent's pipe) closes.
STOP_WITH_STDIN = "ORDERMESH_STOP_WITH_STDIN"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False


class MonitorProcess:
    def __init__(
        self,
        nats_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 4000,
        metrics_port: int = 0,
    ) -> None:
        self.nats_url = nats_url
        self.host = host
        self.port = port or free_port()
        self.metrics_port = metrics_port
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        env = dict(os.environ) | {
            "ORDERMESH_NATS_URL": self.nats_url,
            "ORDERMESH_API_HOST": self.host,
            "ORDERMESH_API_PORT": str(self.port),
            "ORDERMESH_METRICS_PORT": str(self.metrics_port),
            STOP_WITH_STDIN: "1",
        }
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ordermesh.cli",
            "run",
            "api",
            env=env,
            stdin=asyncio.subprocess.PIPE,  # never written: its end tells the child to stop
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        while not await asyncio.to_thread(_answers, self.url):
            if self._proc.returncode is not None:
                raise RuntimeError(f"the monitor exited with {self._proc.returncode}")
            if loop.time() > deadline:
                raise TimeoutError(f"the monitor did not answer on {self.url}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
