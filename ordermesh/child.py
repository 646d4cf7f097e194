"""Services of ``ordermesh up`` in processes of their own: ``ordermesh run <services>``.

``ordermesh up`` runs the core services in its own process and starts children beside
it: the monitor (whose copies of every message would otherwise cost the command path a
quarter of its throughput), the partners (services of their own in the system they
model) and, with ``--replicas N``, N-1 more processes of the core services and of the
partners, which share the work through queue groups and leases. It waits until each
child's HTTP endpoint answers, and stops them all on the way out; a child stops by
itself when ``ordermesh up`` dies without a word: its stdin is a pipe from the parent,
which the kernel closes however the parent ends (``ORDERMESH_STOP_WITH_STDIN``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from infra.nats_server import free_port
from infra.processes import terminate
from ordermesh.config import Settings

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Set to 1 in the child's environment: stop when stdin (the parent's pipe) closes.
STOP_WITH_STDIN = "ORDERMESH_STOP_WITH_STDIN"


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (a page, or ``/readyz``)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError):
        return False


class ChildService:
    """``ordermesh run <services>`` as a child, ready once ``ready_url`` answers 200."""

    def __init__(
        self, services: Sequence[str], ready_url: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.services = tuple(services)
        self.ready_url = ready_url
        self.env = dict(env or {})
        #: Where its ``/metrics`` is, when it serves one that is meant to be scraped.
        self.metrics_url: str | None = None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        env = dict(os.environ) | self.env | {STOP_WITH_STDIN: "1"}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ordermesh.cli",
            "run",
            *self.services,
            env=env,
            stdin=asyncio.subprocess.PIPE,  # never written: its end tells the child to stop
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        name = "+".join(self.services)
        while not await asyncio.to_thread(answers, self.ready_url):
            if self._proc.returncode is not None:
                raise RuntimeError(f"ordermesh run {name} exited with {self._proc.returncode}")
            if loop.time() > deadline:
                raise TimeoutError(f"ordermesh run {name} did not answer on {self.ready_url}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await terminate(proc, STOP_TIMEOUT)


class ServicesProcess(ChildService):
    """``ordermesh run <services>`` beside ``ordermesh up`` (or a test's services) on the
    NATS server at ``nats_url``, with the data directory and simulation settings of
    ``settings``, so that it shares the stores and the ledgers of every other process of
    that ``up``; ready when its ``/readyz`` answers (on ``metrics_port``, or on a free port
    just for that when metrics are off)."""

    def __init__(
        self,
        services: Sequence[str],
        nats_url: str,
        settings: Settings,
        *,
        metrics_port: int = 0,
    ) -> None:
        port = metrics_port or free_port()
        host = settings.metrics_host
        super().__init__(
            services,
            f"http://{host}:{port}/readyz",
            {
                "ORDERMESH_NATS_URL": nats_url,
                "ORDERMESH_DATA_DIR": str(settings.data_dir.resolve()),
                "ORDERMESH_SIM_FAILURE_RATE": str(settings.sim_failure_rate),
                "ORDERMESH_SIM_SEED": str(settings.sim_seed),
                "ORDERMESH_SIM_LATENCY": str(settings.sim_latency),
                "ORDERMESH_METRICS_PORT": str(port),
                "ORDERMESH_METRICS_HOST": host,
            },
        )
        if metrics_port:  # else a port of its own just for /readyz, not to be scraped
            self.metrics_url = f"http://{host}:{port}/metrics"


class PartnersProcess(ServicesProcess):
    """``ordermesh run partners``: the payment gateway and the shipping carrier."""

    def __init__(self, nats_url: str, settings: Settings, *, metrics_port: int = 0) -> None:
        super().__init__(("partners",), nats_url, settings, metrics_port=metrics_port)


class ChildGroup:
    """Several children started together and stopped together, each concurrently: the
    monitor and every replica of ``ordermesh up --replicas N``. Starting is all or
    nothing: when one fails, the others are stopped before the error is raised, so no
    child outlives a failed start."""

    def __init__(self, children: Sequence[ChildService]) -> None:
        self.children = tuple(children)

    async def start(self) -> None:
        try:
            results = await asyncio.gather(
                *(child.start() for child in self.children), return_exceptions=True
            )
        except BaseException:  # cancelled while starting: no child may stay behind
            await self.stop()
            raise
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]

    async def stop(self) -> None:
        await asyncio.gather(*(child.stop() for child in self.children))
