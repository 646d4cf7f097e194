"""The faults: each one breaks something, then puts it back the way an operator (or a
supervisor) would, and returns once it is back. The harness starts one when a given
share of the orders has been sent, while the rest of the load keeps coming.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nats.errors import Error as NatsError

from tests.chaos.cluster import Cluster
from tests.chaos.load import ClientPolicy, send_until_acknowledged
from tests.chaos.progress import settled
from tests.conftest import eventually

#: How long a quiet fault waits for the system to settle before it strikes.
QUIET_TIMEOUT = 60.0


@dataclass(frozen=True)
class Fault:
    name: str
    #: Breaks something and restores it; may say what it did (for the report).
    inject: Callable[[Cluster], Awaitable[str | None]]
    #: Share of the orders sent when the fault starts.
    at: float = 0.4


def kill_service(name: str, *, at: float = 0.4) -> Fault:
    """kill -9 of one service process, restarted at once (as a supervisor would)."""

    async def inject(cluster: Cluster) -> str | None:
        await cluster.kill_and_restart(name)
        return None

    return Fault(f"kill -9 {name}", inject, at)


def kill_nats(*, at: float = 0.4, lose_tail: float = 0.0, quiet: bool = False) -> Fault:
    """kill -9 of nats-server, restarted on the same store directory and port.

    JetStream acknowledges a publish before it is synced (``sync_interval``, 2 min by
    default), so after a machine crash what it acknowledged last is gone. A kill -9 of the
    process alone loses nothing (the page cache survives it), so with ``lose_tail`` the
    fault plays the machine crash: it notes ``EVENTS``' block sizes, lets the system run
    ``lose_tail`` seconds more (with ``quiet``: until it has settled, everything relayed
    and nothing in flight, so no publish of the relay fails with the kill), kills
    nats-server and cuts the blocks back to those sizes: every message acknowledged since
    vanishes. Only a relay that compares ``EVENTS`` with what it relayed can notice.
    """

    async def inject(cluster: Cluster) -> str | None:
        sizes = cluster.stream_blocks()
        if quiet:
            await settled(cluster, QUIET_TIMEOUT)
        elif lose_tail:
            await asyncio.sleep(lose_tail)  # the unsynced window, not a wait for a condition
        before = await last_sequence(cluster)
        await cluster.kill_nats()
        removed = cluster.lose_stream_tail(sizes) if lose_tail or quiet else 0
        await cluster.restart_nats()
        after = await last_sequence(cluster)
        return f"EVENTS last seq {before} before the kill, {after} after ({removed} bytes cut)"

    if quiet:
        name = "kill -9 nats, quiet, tail lost"
    elif lose_tail:
        name = f"kill -9 nats, last {lose_tail:g} s lost"
    else:
        name = "kill -9 nats-server"
    return Fault(name, inject, at)


async def last_sequence(cluster: Cluster, stream: str = "EVENTS") -> int:
    """The stream's last sequence, once the client is (re)connected."""

    async def info() -> list[int]:
        try:
            return [int((await cluster.client.jetstream().stream_info(stream)).state.last_seq)]
        except (NatsError, TimeoutError):
            return []

    found: list[int] = await eventually(info, timeout=15, interval=0.05)
    return found[0]


def network_outage(seconds: float, *, at: float = 0.4) -> Fault:
    """NATS unreachable for the services (not for the test's client) for ``seconds``."""

    async def inject(cluster: Cluster) -> str | None:
        await cluster.cut_network()
        try:
            await asyncio.sleep(seconds)  # the fault's duration, not a wait for a condition
        finally:
            await cluster.restore_network()
        return f"{cluster.proxy.accepted} connections accepted by the proxy in all"

    return Fault(f"NATS unreachable {seconds:g} s", inject, at)


UNAVAILABLE = frozenset({"refused:unavailable", "refused:store_unavailable"})


def store_locked(
    seconds: float, *, at: float = 0.4, probe_product: str = "p1", expect_refusal: bool = False
) -> Fault:
    """The event store unavailable: another connection holds SQLite's write lock
    (``BEGIN EXCLUSIVE``) for ``seconds``. Writers wait out their ``busy_timeout`` and
    then fail; readers (WAL) go on. (A read-only file would not do: these tests run as
    root, whom file permissions do not stop.)

    While the lock is held, one probe (a restock of ``probe_product`` with a fresh
    ``ce-id``, sent once, with a timeout longer than the lock) tells how a command fares:
    answered when and how. Its effect must match its answer: stored once if it was
    acknowledged, not at all if it was refused (no partial write); with
    ``expect_refusal``, it must also be refused as ``unavailable`` while the lock is still
    held (not served once the store is back); else :class:`FaultFinding`.
    """

    async def inject(cluster: Cluster) -> str | None:
        acquired, releasing = asyncio.Event(), asyncio.Event()
        lock = asyncio.create_task(hold_write_lock(cluster.events_db, seconds, acquired, releasing))
        try:
            await acquired.wait()
            probe = f"probe-{uuid.uuid4().hex}"
            body = {"product_id": probe_product, "quantity": 1}
            policy = ClientPolicy(request_timeout=seconds + 15, max_attempts=1)
            sent = time.monotonic()
            ack = await send_until_acknowledged(
                cluster.client, "commands.product.restock", body, probe, policy
            )
            answered = time.monotonic() - sent
            while_locked = not releasing.is_set()
        finally:
            await lock
        written = await asyncio.to_thread(caused_by, cluster.events_db, probe)
        (answer,) = ack.outcomes  # one attempt: ok, refused:<code>, timeout…
        detail = (
            f"a restock sent while locked: {answer} after {answered:.1f} s"
            f" ({'while locked' if while_locked else 'once unlocked'}),"
            f" {written} event(s) stored"
        )
        if (ack.ok and written != 1) or (answer.startswith("refused:") and written):
            raise FaultFinding(f"{detail}: its effect does not match its answer")
        if expect_refusal and not (answer in UNAVAILABLE and while_locked):
            raise FaultFinding(f"{detail}: no `unavailable` reply while the store was locked")
        return detail

    return Fault(f"event store locked {seconds:g} s", inject, at)


class FaultFinding(AssertionError):
    """What a fault's own probe found wrong (reported as a failed check)."""


def caused_by(path: Path, command_id: str) -> int:
    """Events in the store caused by the command ``command_id``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM events WHERE json_extract(metadata, '$.causation_id') = ?",
            (command_id,),
        ).fetchone()
    finally:
        conn.close()
    return int(count)


async def hold_write_lock(
    path: Path, seconds: float, acquired: asyncio.Event, releasing: asyncio.Event
) -> None:
    """Hold the write lock ``seconds``; ``acquired`` is set once held, ``releasing`` just
    before it is let go (nothing waiting on it can have been served before)."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(conn.execute, "BEGIN EXCLUSIVE")
        acquired.set()
        try:
            await asyncio.sleep(seconds)  # the fault's duration
        finally:
            releasing.set()
            await asyncio.to_thread(conn.execute, "ROLLBACK")
    finally:
        conn.close()


def kill_active(role: str, *, at: float = 0.4) -> Fault:
    """With two processes of ``role`` (a hot standby), kill -9 the one that leads; the
    standby must take over. The killed one is restarted, as the new standby."""

    async def inject(cluster: Cluster) -> str | None:
        leased = await cluster.leases_exist()
        victim = await cluster.kill_active(role)
        await cluster.restart(victim.name)
        how = "the lease holder" if leased else "no lease bucket: the first instance"
        return f"killed {victim.name} ({how})"

    return Fault(f"kill -9 active {role} (standby running)", inject, at)
