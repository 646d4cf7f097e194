"""A cluster of real processes: one nats-server and one ``ordermesh run <service>`` each.

Everything a fault can hit is a process of its own, started the way an operator would
start it, so a SIGKILL loses exactly what a crash in production would. The services
reach nats-server through a :class:`~tests.chaos.proxy.TcpProxy` (so the network can be
cut for them alone); the harness's client connects to nats-server directly, with
unlimited reconnects (it must survive nats-server's own kill -9).

Each process writes stdout and stderr to ``logs/<name>.log`` (appended across restarts,
with a marker line per start) for the report; readiness is the process's ``/readyz``
(started, and connected to NATS), on a metrics port of its own kept across restarts.
Two processes of one service (a standby) are ``add``-ed under another name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from broker.connection import connect
from infra.nats_server import EmbeddedNatsServer, free_port
from infra.processes import terminate
from tests.chaos.proxy import TcpProxy
from tests.conftest import eventually
from tests.integration.test_processes import ORDERMESH, env_for

#: One process each, in the order they start (and the reverse of how they stop).
SERVICES = ("partners", "command", "relay", "projections", "query", "saga")
#: The source tree of these tests: the processes run this tree's code, whichever
#: checkout the tests run from.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
#: The lease bucket of ``broker.lease``: one key per role, whose JSON value names the
#: holder's ``pid``. Read here without importing the lease code, so the harness runs (and
#: the standby helper falls back to "the first instance") where that code is absent.
LEASE_BUCKET = "ordermesh_leases"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL = 4000


def _readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ServiceProcess:
    """One ``ordermesh run <service>``, restartable under the same name and ports."""

    name: str
    service: str
    log: Path
    metrics_port: int
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: int = 0
    #: Exit codes seen for exits the harness did not cause.
    crashes: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n=== start {self.starts} at {time.time():.3f} ===\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                ORDERMESH,
                "run",
                self.service,
                env=self.env,
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        async def ready() -> bool:
            if not self.running:
                code = self.proc.returncode if self.proc is not None else None
                raise AssertionError(f"{self.name} exited ({code}):\n{self.tail()}")
            return await asyncio.to_thread(_readyz, self.metrics_port)

        await eventually(ready, timeout=timeout, interval=0.05)

    async def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed, closed or handed over."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self.kills += 1
        proc.kill()
        await proc.wait()

    async def terminate(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; the exit code."""
        return None if self.proc is None else await terminate(self.proc, STOP_TIMEOUT)

    def check_alive(self) -> None:
        """Record an exit nobody asked for (a crash of the service itself)."""
        code = self.proc.returncode if self.proc is not None else None
        if code is not None and (not self.crashes or self.crashes[-1] != code):
            self.crashes.append(code)

    def tail(self, chars: int = LOG_TAIL) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text[-chars:]


class Cluster:
    """nats-server, the proxy, the service processes and a direct client.

    ``extra_env`` goes to every service (``ORDERMESH_SAGA__…`` step timeouts, …).
    """

    def __init__(
        self,
        root: Path,
        *,
        services: Iterable[str] = SERVICES,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.data = root / "data"
        self.logs = root / "logs"
        self.nats_dir = root / "nats"
        self.nats = EmbeddedNatsServer(self.nats_dir)
        self.proxy = TcpProxy(self.nats.port)
        self.extra_env = dict(extra_env or {})
        self.processes: dict[str, ServiceProcess] = {}
        self._initial = tuple(services)
        self.nc: NATS | None = None
        #: nats-server starts after the first one (each kill -9 is followed by one).
        self.nats_restarts = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        await self.nats.start()
        await self.proxy.start()
        self.nc = await connect(
            self.nats.url,
            name="chaos-client",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
        )
        for service in self._initial:
            self._define(service, service)
        await asyncio.gather(*(p.spawn() for p in self.processes.values()))
        await asyncio.gather(*(p.wait_ready() for p in self.processes.values()))

    async def stop(self) -> dict[str, int | None]:
        """Stop the services (SIGTERM), the client, the proxy and nats-server; each
        service's exit code."""
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.processes)):
            codes[name] = await self.processes[name].terminate()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None
        await self.proxy.stop()
        await self.nats.stop()
        return codes

    def _define(self, name: str, service: str) -> ServiceProcess:
        port = free_port()
        env = env_for(
            self.data,
            ORDERMESH_NATS_URL=self.proxy.url,
            ORDERMESH_METRICS_PORT=str(port),
            **self.extra_env,
        )
        # This tree's code, ahead of whatever the virtualenv's editable install points at.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        process = ServiceProcess(name, service, self.logs / f"{name}.log", port, env)
        self.processes[name] = process
        return process

    @property
    def client(self) -> NATS:
        assert self.nc is not None, "the cluster is not started"
        return self.nc

    @property
    def events_db(self) -> Path:
        return self.data / "events.db"

    @property
    def read_models_db(self) -> Path:
        return self.data / "readmodels.db"

    @property
    def restarts(self) -> int:
        """Restarts of services and of nats-server caused by the harness."""
        return sum(max(p.starts - 1, 0) for p in self.processes.values()) + self.nats_restarts

    # -- faults ---------------------------------------------------------------------------

    async def kill(self, name: str) -> None:
        await self.processes[name].kill()

    async def restart(self, name: str) -> None:
        process = self.processes[name]
        if process.running:
            await process.terminate()
        await process.spawn()
        await process.wait_ready()

    async def kill_and_restart(self, name: str) -> None:
        await self.kill(name)
        await self.restart(name)

    async def kill_nats(self) -> None:
        """SIGKILL nats-server, as a crash of the process: nothing is flushed or closed.
        What it wrote survives in the page cache; :meth:`lose_stream_tail` plays the
        machine crash that loses it."""
        pid = self.nats.pid
        assert pid is not None, "nats-server is not running"
        os.kill(pid, signal.SIGKILL)
        await self.nats.stop()  # reaps the killed process; sends nothing it could catch

    def stream_blocks(self, stream: str = "EVENTS") -> dict[Path, int]:
        """The sizes of ``stream``'s message block files in nats-server's store."""
        return {
            block: block.stat().st_size
            for msgs in self.nats_dir.glob(f"jetstream/**/streams/{stream}/msgs")
            for block in msgs.glob("*.blk")
        }

    def lose_stream_tail(self, sizes: dict[Path, int], stream: str = "EVENTS") -> int:
        """Cut ``stream``'s blocks back to ``sizes`` (taken earlier) while nats-server is
        down: what it had written since was acknowledged but never synced, and a machine
        crash loses it (a process crash alone does not: the page cache keeps it). Its index
        goes too, so the server recovers the stream from the blocks. Bytes removed."""
        removed = 0
        for block, size in self.stream_blocks(stream).items():
            keep = sizes.get(block, 0)
            if size > keep:
                removed += size - keep
                if keep:
                    os.truncate(block, keep)
                else:
                    block.unlink()
        for msgs in self.nats_dir.glob(f"jetstream/**/streams/{stream}/msgs"):
            for index in msgs.glob("index.db"):
                index.unlink()
        return removed

    async def restart_nats(self) -> None:
        """A new nats-server on the same store directory and ports."""
        self.nats = EmbeddedNatsServer(
            self.nats_dir, port=self.nats.port, monitor_port=self.nats.monitor_port
        )
        await self.nats.start()
        self.nats_restarts += 1

    async def cut_network(self) -> None:
        await self.proxy.cut()

    async def restore_network(self) -> None:
        await self.proxy.restore()

    def check_alive(self) -> list[str]:
        """Processes that exited without the harness asking; recorded for the report."""
        dead = []
        for process in self.processes.values():
            process.check_alive()
            if process.proc is not None and process.proc.returncode is not None:
                dead.append(process.name)
        return dead

    # -- standby: two processes of one service --------------------------------------------

    async def add(self, service: str, name: str | None = None) -> ServiceProcess:
        """Start one more process of ``service`` (e.g. a second relay as hot standby)."""
        name = name or f"{service}-{sum(p.service == service for p in self.processes.values())}"
        process = self._define(name, service)
        await process.spawn()
        await process.wait_ready()
        return process

    def instances(self, service: str) -> list[ServiceProcess]:
        return [p for p in self.processes.values() if p.service == service]

    async def holder_pid(self, role: str) -> int | None:
        """The pid in ``role``'s lease, or ``None`` (no bucket, no holder, unreadable)."""
        try:
            kv = await self.client.jetstream().key_value(LEASE_BUCKET)
            entry = await kv.get(role)
        except (BucketNotFoundError, KeyNotFoundError):
            return None
        try:
            return int(json.loads(entry.value or b"")["pid"])
        except (ValueError, KeyError, TypeError):
            return None

    async def active(self, role: str) -> ServiceProcess | None:
        """The process holding ``role``'s lease now, by pid; ``None`` while nobody holds
        it or no lease exists (before leases, every instance runs)."""
        pid = await self.holder_pid(role)
        for process in self.instances(role):
            if pid is not None and process.running and process.pid == pid:
                return process
        return None

    async def leases_exist(self) -> bool:
        try:
            await self.client.jetstream().key_value(LEASE_BUCKET)
        except BucketNotFoundError:
            return False
        return True

    async def kill_active(self, role: str, *, timeout: float = 15.0) -> ServiceProcess:
        """SIGKILL the instance of ``role`` that leads; where no lease bucket exists (no
        lease code), the first running instance. Returns the process killed (restart it
        with :meth:`restart`)."""
        victim: ServiceProcess | None = None
        if await self.leases_exist():
            victim = await eventually(lambda: self.active(role), timeout=timeout)
        else:
            running = [p for p in self.instances(role) if p.running]
            assert running, f"no {role} process runs"
            victim = running[0]
        await victim.kill()
        return victim
