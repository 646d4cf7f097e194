"""Exactly one active relay, saga driver and projector: a lease in a NATS KV bucket.

Two relays on one store would interleave ``EVENTS``; two saga drivers would both drive
every saga; two projectors would both write the read models. So each of these singletons
runs behind a :class:`Singleton`, which holds a lease before it starts the component and
stops the component as soon as it cannot be sure it still holds it.

No consensus of our own: the lease is one key per role in the KV bucket
``ordermesh_leases``, whose TTL (the stream's ``max_age``) the server enforces.

* Taking it is ``create`` (JetStream's expected-last-subject-sequence 0): only one
  instance can write a key that does not exist.
* Renewing is ``update`` expecting the revision this instance wrote last: a lease that
  expired and was taken by another instance cannot be renewed by accident.
* A holder that has not renewed for ``ttl - margin`` steps down on its own clock before
  the server lets the key expire, so two holders never overlap while clocks run at
  the same rate (a paused process is the classic exception; the relay's publishes are
  de-duplicated by ``Nats-Msg-Id``, and the read models and sagas are idempotent by
  position and id, so a brief overlap would cost work, not correctness).
* A standby tries ``create`` every ``renew`` interval, so it takes over at most
  ``ttl + renew`` seconds after the holder died (kill -9), and at once after a clean stop,
  which deletes the key.
* A holder that provably died takes no TTL to replace: when the key names a process on
  this very machine and process namespace (host name, boot id and pid namespace all
  equal) and that pid no longer exists, the key is deleted (expecting its revision) and
  taken. So ``ordermesh up`` killed with -9 and started again resumes at once. Anything
  less certain (another machine, another container) waits for the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loguru import logger
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.tasks import cancel_and_wait
from telemetry.metrics import leader

BUCKET = "ordermesh_leases"
DEFAULT_TTL = 3.0
#: Roles that take a lease; the key of each in ``BUCKET``.
ROLES = ("relay", "saga", "projections")

#: This process's singletons by role, and those of them leading now (one process may run
#: several of a role: tests do).
_RUNNING: dict[str, set[str]] = {}
_LEADING: dict[str, set[str]] = {}


def roles() -> dict[str, str]:
    """``{role: "leader" | "standby"}`` for the roles this process runs."""
    return {
        role: "leader" if _LEADING.get(role) else "standby"
        for role, instances in _RUNNING.items()
        if instances
    }


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease, as written in its value."""

    role: str
    instance: str
    host: str
    pid: int
    since: float
    renewed: float
    node: str = ""

    @classmethod
    def decode(cls, role: str, raw: bytes | None) -> Holder | None:
        try:
            doc = json.loads(raw or b"")
            return cls(
                role,
                str(doc["instance"]),
                str(doc["host"]),
                int(doc["pid"]),
                float(doc["since"]),
                float(doc["renewed"]),
                str(doc.get("node", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def this_node() -> str:
    """Where a pid means this process table: host, boot and pid namespace; empty when
    the platform cannot tell (then no lease is ever reclaimed early)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{socket.gethostname()}/{boot}/{namespace}" if boot else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


async def lease_bucket(nc: NATS, ttl: float = DEFAULT_TTL, replicas: int = 1) -> KeyValue:
    """The bucket, created on first use with ``ttl`` and ``replicas``: the first creator's
    settings stand (an existing bucket is used as it is; changing its replicas is an
    operator's ``nats kv edit``, not something every starting service should race to do)."""
    js = nc.jetstream()
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=BUCKET, ttl=ttl, history=1, replicas=replicas)


async def holders(nc: NATS) -> dict[str, Holder | None]:
    """Each role's holder now (``None``: nobody holds it); for ``ordermesh status``."""
    try:
        kv = await nc.jetstream().key_value(BUCKET)
    except BucketNotFoundError:
        return dict.fromkeys(ROLES)
    found: dict[str, Holder | None] = {}
    for role in ROLES:
        try:
            entry = await kv.get(role)
        except KeyNotFoundError:
            found[role] = None
            continue
        found[role] = Holder.decode(role, entry.value)
    return found


class Singleton:
    """Runs ``component`` only while this instance holds the ``role``'s lease."""

    def __init__(
        self,
        nc: NATS,
        role: str,
        component: Component,
        *,
        ttl: float = DEFAULT_TTL,
        replicas: int = 1,
        defer: float = 0.0,
    ) -> None:
        if ttl <= 0:
            raise ValueError("a lease's ttl must be positive")
        self._nc = nc
        self.role = role
        self.component = component
        self.ttl = ttl
        #: Copies of the lease bucket, should this instance be the one to create it.
        self.replicas = replicas
        #: Renew (and, on standby, try to take) this often: three tries per TTL.
        self.renew = ttl / 3
        self.instance = uuid.uuid4().hex
        self.node = this_node()
        self.leading = False
        #: Times this instance took the lease, and rounds it has run (taking or renewing).
        self.terms = 0
        self.tries = 0
        self._revision = 0
        self._since = 0.0
        self._confirmed = 0.0
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        #: For ``defer`` seconds after start, a free lease is left to another instance
        #: (the one a layout means to lead), until somebody holds it: from then on this
        #: is an ordinary standby, which takes over when that one dies.
        self.defer = defer
        self._defer_until = 0.0

    async def start(self) -> None:
        if self.defer > 0:
            self._defer_until = time.monotonic() + self.defer
        _RUNNING.setdefault(self.role, set()).add(self.instance)
        self._set_state()
        # The first try before returning: a lone instance runs its component once started.
        await self._round()
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.role}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self.leading:
            await self._step_down("stopping", level="INFO")
            with contextlib.suppress(Exception):
                if self._kv is not None:
                    # Hand over at once: the standby's next try finds the key gone.
                    await self._kv.delete(self.role, last=self._revision)
        _RUNNING.get(self.role, set()).discard(self.instance)
        self._set_state()

    async def wait_leading(self, leading: bool = True) -> None:
        """Until this instance leads (or, with False, does not): tests and tools."""
        while self.leading != leading:
            self._changed.clear()
            await self._changed.wait()

    def _value(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "instance": self.instance,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": self._since or now,
                "renewed": now,
                "node": self.node,
            }
        ).encode()

    async def _run(self) -> None:
        while True:
            await self._round()
            await asyncio.sleep(self.renew)

    async def _round(self) -> None:
        """One try: renew the lease held, or take the lease if it is free."""
        self.tries += 1
        try:
            if self._kv is None:
                self._kv = await lease_bucket(self._nc, self.ttl, self.replicas)
            # A request to a server out of reach would wait its full timeout (5 s):
            # longer than the lease. Each try gets one renewal interval.
            if self.leading:
                async with asyncio.timeout(self.renew):
                    await self._renew(self._kv)
            elif not await self._leaving_it(self._kv):
                async with asyncio.timeout(self.renew):
                    taken = await self._take(self._kv)
                if taken:
                    await self._start_component(self._kv)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS out of reach, the bucket gone...
            logger.debug("lease {}: {!r}", self.role, exc)
            if isinstance(exc, BucketNotFoundError):
                self._kv = None
        if self.leading and time.monotonic() - self._confirmed > self.ttl * 0.8:
            # Not renewed for most of the TTL: the server may hand the key to another
            # instance soon. Stop before it can.
            await self._step_down("could not renew its lease")

    async def _leaving_it(self, kv: KeyValue) -> bool:
        """Whether this try leaves the lease alone: while deferring, as long as nobody
        has taken it (the instance meant to lead may still be starting)."""
        if not self._defer_until:
            return False
        if time.monotonic() < self._defer_until:
            try:
                async with asyncio.timeout(self.renew):
                    await kv.get(self.role)
            except KeyNotFoundError:
                return True
        self._defer_until = 0.0  # held by the one meant to lead, or it never came
        return False

    async def _take(self, kv: KeyValue) -> bool:
        try:
            self._since = time.time()
            started = time.monotonic()
            self._revision = await kv.create(self.role, self._value())
        except KeyWrongLastSequenceError:
            await self._reclaim_from_the_dead(kv)
            return False  # somebody holds it (the next try takes it if it was dead)
        # The server's TTL runs from the write; ours from before we asked, to be safe.
        self._confirmed = started
        self.terms += 1
        logger.info("{} lease taken by {}; starting", self.role, self.instance)
        self.leading = True
        self._set_state()
        return True

    async def _reclaim_from_the_dead(self, kv: KeyValue) -> None:
        """Delete the key if its holder is a process of this node that no longer runs."""
        try:
            entry = await kv.get(self.role)
        except KeyNotFoundError:
            return
        holder = Holder.decode(self.role, entry.value)
        if holder is None or not self.node or holder.node != self.node or _alive(holder.pid):
            return
        logger.info(
            "{} lease holder {} (pid {}) is gone; taking over now",
            self.role,
            holder.instance,
            holder.pid,
        )
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.delete(self.role, last=entry.revision)

    async def _start_component(self, kv: KeyValue) -> None:
        try:
            await self.component.start()
        except Exception:
            logger.exception("{} failed to start; giving the lease back", self.role)
            await self._step_down("failed to start")
            with contextlib.suppress(Exception):
                await kv.delete(self.role, last=self._revision)

    async def _renew(self, kv: KeyValue) -> None:
        asked = time.monotonic()
        try:
            self._revision = await kv.update(self.role, self._value(), last=self._revision)
        except KeyWrongLastSequenceError:
            await self._step_down("lost its lease to another instance")
            return
        self._confirmed = asked

    async def _step_down(self, why: str, level: str = "WARNING") -> None:
        if not self.leading:
            return
        logger.log(level, "{} {}; stopping and standing by", self.role, why)
        self.leading = False
        self._set_state()
        with contextlib.suppress(Exception):
            await self.component.stop()

    def _set_state(self) -> None:
        leading = _LEADING.setdefault(self.role, set())
        if self.leading:
            leading.add(self.instance)
        else:
            leading.discard(self.instance)
        leader.labels(self.role).set(1 if leading else 0)
        self._changed.set()
