"""The real binaries: ``ordermesh up`` and ``ordermesh run``, killed with SIGKILL mid-flow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError as JsNotFoundError

from broker.connection import connect
from domain.event_store import RecordedEvent
from infra.eventstore.sqlite import SQLiteEventStore
from infra.nats_server import EmbeddedNatsServer, free_port
from tests.conftest import events_in_stream, eventually, request
from tests.integration.test_order_flow import stream_messages

ORDERMESH = str(Path(sys.executable).parent / "ordermesh")
WIDGET = {"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10}


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERMESH_")}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    env.update(
        {
            "ORDERMESH_DATA_DIR": str(data_dir),
            "ORDERMESH_METRICS_PORT": "0",
            "ORDERMESH_API_PORT": "0",
            "LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


@contextlib.asynccontextmanager
async def ordermesh(*args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        ORDERMESH,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def ready(nc: NATS, subject: str, body: Any) -> bool:
    """A service is up once it answers, whatever the answer."""
    try:
        await nc.request(subject, json.dumps(body).encode(), timeout=0.5)
    except (NoRespondersError, NatsTimeoutError, TimeoutError):
        return False
    return True


async def read_banner(proc: asyncio.subprocess.Process, timeout: float = 30) -> str:
    """What ``ordermesh up`` prints once ready, up to its last line."""
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while not any("stop: Ctrl-C" in line for line in lines):
            line = await proc.stdout.readline()
            assert line, "ordermesh up exited before printing its banner"
            lines.append(line.decode())
    return "".join(lines)


async def test_up_prints_where_things_are_and_stops_cleanly(tmp_path: Path) -> None:
    """The banner comes once the services answer: /readyz says so, and a first request
    on a new connection is served without a retry."""
    port, monitor, metrics = free_port(), free_port(), free_port()
    env = env_for(
        tmp_path / "data",
        ORDERMESH_NATS_PORT=str(port),
        ORDERMESH_NATS_MONITOR_PORT=str(monitor),
        ORDERMESH_METRICS_PORT=str(metrics),
    )
    async with ordermesh("up", env=env) as proc:
        text = await read_banner(proc)
        assert f"nats://127.0.0.1:{port}" in text
        assert f"http://127.0.0.1:{monitor}" in text
        assert "events.db" in text and "readmodels.db" in text
        health = f"http://127.0.0.1:{metrics}"
        assert f"{health}/healthz  {health}/readyz" in text
        assert await asyncio.to_thread(http_status, f"{health}/readyz") == 200
        assert await asyncio.to_thread(http_status, f"{health}/healthz") == 200
        client = await connect(f"nats://127.0.0.1:{port}")
        try:
            reply = await client.request(
                "commands.product.create", json.dumps(WIDGET).encode(), timeout=10
            )
            created = json.loads(reply.data)
            assert created["ok"], created
        finally:
            await client.close()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    assert (tmp_path / "data" / "events.db").exists()
    assert (tmp_path / "data" / "nats" / "jetstream").is_dir()


def gone(pid: int) -> bool:
    """No process ``pid`` any more (reaped, not merely exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def children_of(pid: int) -> dict[int, str]:
    """``{pid: command name}`` of the processes whose parent is ``pid`` (Linux ``/proc``)."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if int(rest.split()[1]) == pid:
            found[int(stat.parent.name)] = name
    return found


async def test_a_killed_up_takes_its_nats_server_and_children_along(tmp_path: Path) -> None:
    """SIGKILL leaves ``ordermesh up`` no time to stop anything: its nats-server (asked by
    the kernel to stop when its parent dies) and its children (their stdin closes) go by
    themselves, so that the next ``ordermesh up`` gets the same port and store."""
    port = free_port()
    env = env_for(
        tmp_path / "data",
        ORDERMESH_NATS_PORT=str(port),
        ORDERMESH_NATS_MONITOR_PORT=str(free_port()),
    )
    async with ordermesh("up", env=env) as proc:
        await read_banner(proc)
        children = children_of(proc.pid)
        assert "nats-server" in children.values(), children
        assert len(children) >= 3, children  # nats-server, the monitor, the partners
        proc.kill()
        await proc.wait()

    async def all_gone() -> bool:
        return all(gone(pid) for pid in children)

    await eventually(all_gone, timeout=15)
    async with ordermesh("up", env=env) as again:
        text = await read_banner(again)
        assert f"nats://127.0.0.1:{port}" in text
        again.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            assert await again.wait() == 0


async def _stored(data_dir: Path) -> list[RecordedEvent]:
    store = await SQLiteEventStore.open(data_dir / "events.db")
    try:
        return await store.read_all(0, 100_000)
    finally:
        await store.close()


async def _burst(nc: NATS, n: int) -> list[dict[str, Any] | None]:
    async def one() -> dict[str, Any] | None:
        try:
            return await request(
                nc, "commands.product.restock", {"product_id": "p-1", "quantity": 1}, timeout=5
            )
        except (NoRespondersError, NatsTimeoutError, TimeoutError):
            return None

    return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.timeout(180)
async def test_sigkill_mid_flow_loses_nothing_and_applies_once(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = env_for(data, ORDERMESH_NATS_URL=nats_server.url)

    # 1. Only the command service runs: events are stored, nothing relays them. Kill it.
    async with ordermesh("run", "command", env=env) as proc:
        await eventually(
            lambda: ready(nc, "commands.product.restock", {"product_id": "x", "quantity": 1}),
            timeout=30,
        )
        assert (await request(nc, "commands.product.create", WIDGET))["ok"]
        replies = await _burst(nc, 30)
        assert all(r and r["ok"] for r in replies)
        proc.kill()
        await proc.wait()
    assert len(await _stored(data)) == 31
    with pytest.raises(JsNotFoundError):  # no relay ever ran: EVENTS does not even exist
        await nc.jetstream().stream_info("EVENTS")

    # 2. Everything runs; SIGKILL it in the middle of a burst of commands.
    everything = ("run", "command", "relay", "projections", "query")
    async with ordermesh(*everything, env=env) as proc:
        await eventually(lambda: ready(nc, "queries.product.list", {}), timeout=30)
        burst = asyncio.create_task(_burst(nc, 300))
        await eventually(lambda: _at_least_events(nc, 60), timeout=30)
        proc.kill()
        await proc.wait()
        answered = [r for r in await burst if r is not None]
    assert all(r["ok"] for r in answered)
    before_restart = len(await _stored(data))
    assert before_restart >= 31 + len(answered)

    # 3. Restart: every stored event reaches EVENTS once; the read model applies each once.
    async with ordermesh(*everything, env=env) as proc:
        await eventually(lambda: ready(nc, "queries.product.list", {}), timeout=30)
        stored = await _stored(data)
        assert len(stored) == before_restart
        expected_stock = json.loads(stored[-1].data)["stock"]
        assert expected_stock == 10 + len(stored) - 1

        async def caught_up() -> bool:
            reply = await request(nc, "queries.product.get", {"product_id": "p-1"})
            return bool(reply["ok"] and reply["data"]["version"] == len(stored))

        await eventually(caught_up, timeout=30)
        view = (await request(nc, "queries.product.get", {"product_id": "p-1"}))["data"]
        assert view["stock"] == expected_stock
        msgs = await stream_messages(nc)
        assert [m.headers["ce-id"] for m in msgs] == [str(e.id) for e in stored]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0


async def _at_least_events(nc: NATS, n: int) -> bool:
    return await events_in_stream(nc) >= n
