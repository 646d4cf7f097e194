"""A TCP proxy between the services and nats-server that a test can cut and restore.

"NATS unreachable" has to be felt by the services only: the test's own client, which
checks the outcome, talks to nats-server directly. Stopping nats-server would also lose
JetStream's unsynced tail (another fault), and a firewall rule needs privileges and
another network namespace. A proxy in the test's event loop needs neither: ``cut`` closes
every proxied connection and stops listening, so reconnect attempts are refused at once
(ECONNREFUSED, as for a host that is down), and ``restore`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib

from infra.nats_server import free_port

CHUNK = 64 * 1024


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``, byte for byte."""

    def __init__(self, upstream_port: int, *, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        #: Connections accepted so far (each reconnect of a service is one more).
        self.accepted = 0
        #: Times the proxy was cut.
        self.cuts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def open(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def cut(self) -> None:
        """Refuse new connections and drop every open one, in both directions."""
        self.cuts += 1
        await self._close_all()

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self._close_all()

    async def _close_all(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        pumps = list(self._pumps)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._writers.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            writer.close()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()  # nats-server is down: the client sees its connection refused
            return
        self._writers.update((writer, up_writer))
        pumps = (
            asyncio.create_task(self._pump(reader, up_writer, writer)),
            asyncio.create_task(self._pump(up_reader, writer, up_writer)),
        )
        for pump in pumps:
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        source_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy until either side closes, then close both: a half-open connection would
        leave the client believing it is still connected."""
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (sink, source_writer):
                writer.close()
                self._writers.discard(writer)
