"""Every ordermesh process says, every few seconds, that it is alive, what it runs, and how
its runtime is doing: the live monitor learns the system's shape from these heartbeats
(services, instances, health) instead of from configuration that could be out of date.

A heartbeat is a core NATS publish on ``ordermesh.heartbeat.<service name>``, no reply,
JSON (:class:`HeartbeatMessage`). An instance is healthy while its last heartbeat is
younger than :data:`MISSED_BEATS` intervals and says ``ready``. Stopping sends a last one
with ``ready: false``, so a clean shutdown shows at once rather than after the timeout.
The loop never raises: a heartbeat lost while NATS is out of reach is simply not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from loguru import logger
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field

from broker import lease
from broker.subjects import heartbeat_subject
from broker.tasks import cancel_and_wait
from telemetry.runtime import projections, snapshot
from telemetry.totals import totals

INTERVAL = 2.0
#: Heartbeats an instance may miss before it counts as unhealthy.
MISSED_BEATS = 3

# Bounds on what a heartbeat may carry: the monitor keeps one per instance, and anyone on
# the bus can publish one.
_Name = Annotated[str, Field(max_length=200)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class CoroutineCount(_Frozen):
    name: _Name
    count: int


class RuntimeReport(_Frozen):
    """``telemetry.runtime.snapshot()`` on the wire (GraphQL ``Runtime``)."""

    resident_memory_bytes: float = 0.0
    cpu_seconds: float = 0.0
    open_fds: int = 0
    tasks: int = 0
    event_loop_lag_seconds: float = 0.0
    gc_collections: tuple[int, ...] = Field(default=(), max_length=10)
    top_coroutines: tuple[CoroutineCount, ...] = Field(default=(), max_length=50)


class ProjectionReport(_Frozen):
    """One projection the process runs (``telemetry.runtime.projections()``)."""

    name: _Name
    position: int
    lag_seconds: float | None = None
    backlog: int | None = None


class TotalsReport(_Frozen):
    """``telemetry.totals.totals()`` on the wire: what ``dashboardStats`` adds up."""

    commands: float = 0.0
    queries: float = 0.0
    events_stored: float = 0.0
    command_errors: float = 0.0
    command_seconds_sum: float = 0.0
    command_seconds_count: float = 0.0
    command_buckets: dict[Annotated[str, Field(max_length=32)], float] = Field(
        default_factory=dict, max_length=40
    )
    sagas_active: float = 0.0
    sagas_ended: dict[Annotated[str, Field(max_length=32)], float] = Field(
        default_factory=dict, max_length=10
    )


class HeartbeatMessage(_Frozen):
    """The body of one heartbeat. ``projections`` goes beyond the design's list: the
    processes that run projections report them, for ``projectionStatus``."""

    instance: Annotated[str, Field(max_length=64)]
    service: _Name
    services: tuple[_Name, ...] = Field(max_length=20)
    host: _Name
    pid: int
    started_at: datetime
    sent_at: datetime
    interval: float = Field(gt=0)
    ready: bool
    runtime: RuntimeReport
    projections: tuple[ProjectionReport, ...] = Field(default=(), max_length=50)
    totals: TotalsReport = Field(default_factory=TotalsReport)
    roles: dict[_Name, Literal["leader", "standby"]] = Field(default_factory=dict, max_length=10)
    """The singletons this process runs (relay, saga, projections): leading or standing by."""


class Heartbeat:
    """Publishes this process's heartbeat: one at ``start``, then every ``interval``
    seconds, and a last one (``ready: false``) at ``stop``. ``ready`` tells whether the
    process takes requests now (``App.ready``)."""

    def __init__(
        self,
        nc: NATS,
        service: str,
        services: Sequence[str],
        *,
        interval: float = INTERVAL,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        if interval <= 0:
            raise ValueError("a heartbeat's interval must be positive")
        self._nc = nc
        self.service = service
        self.services = tuple(services)
        self.interval = interval
        self._ready = ready
        self.subject = heartbeat_subject(service)
        #: One per process run (an App has one Heartbeat).
        self.instance = uuid.uuid4().hex
        self.started_at = datetime.now(UTC)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: Heartbeats handed to the connection so far.
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def message(self, *, ready: bool | None = None) -> HeartbeatMessage:
        """The heartbeat as of now; ``ready`` overrides the ``ready`` callable."""
        return HeartbeatMessage.model_validate(
            {
                "instance": self.instance,
                "service": self.service,
                "services": self.services,
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
                "sent_at": datetime.now(UTC),
                "interval": self.interval,
                "ready": self._ready() if ready is None else ready,
                "runtime": snapshot(),
                "projections": projections(),
                "totals": totals(),
                "roles": lease.roles(),
            }
        )

    async def beat(self, *, ready: bool | None = None) -> bool:
        """Publish one heartbeat; False (logged, not raised) when it could not be sent."""
        try:
            data = self.message(ready=ready).model_dump_json().encode()
            await self._nc.publish(self.subject, data)
        except NatsError as exc:
            logger.debug("heartbeat on {} not sent: {!r}", self.subject, exc)
            return False
        except Exception as exc:  # a bug must not stop the heartbeat, nor the process
            logger.opt(exception=exc).warning("heartbeat on {} failed", self.subject)
            return False
        self.sent += 1
        return True

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
            with contextlib.suppress(Exception):
                await self.beat(ready=False)  # gone now, not after 3 missed beats

    async def _run(self) -> None:
        while True:  # until cancelled; ``beat`` never raises
            await asyncio.sleep(self.interval)
            await self.beat()


__all__ = [
    "INTERVAL",
    "MISSED_BEATS",
    "CoroutineCount",
    "Heartbeat",
    "HeartbeatMessage",
    "ProjectionReport",
    "RuntimeReport",
    "TotalsReport",
]
