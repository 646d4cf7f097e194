"""This process's runtime, in numbers: what each heartbeat carries to the monitor's Runtime
view (the analog of Phoenix LiveDashboard or Erlang's observer): resident memory, CPU,
open files, asyncio tasks, event-loop lag, garbage collections, and which coroutines the
tasks are running.

The process numbers are prometheus-client's process collector's (it reads ``/proc``; on a
system without it they are 0, CPU time excepted), and the loop lag is the gauge the
lag probe sets: the same values ``/metrics`` exports, so the two views cannot disagree.
Call it from the event loop's thread (tasks are counted on the running loop).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from typing import TypedDict

from prometheus_client import PROCESS_COLLECTOR, Gauge

from telemetry.metrics import (
    event_loop_lag,
    projection_backlog,
    projection_lag,
    projection_position,
)

#: Coroutines named in a snapshot, the most frequent first.
TOP_COROUTINES = 10


class CoroutineCount(TypedDict):
    name: str
    count: int


class RuntimeSnapshot(TypedDict):
    resident_memory_bytes: float
    cpu_seconds: float
    open_fds: int
    tasks: int
    event_loop_lag_seconds: float
    gc_collections: list[int]
    top_coroutines: list[CoroutineCount]


class ProjectionSnapshot(TypedDict):
    name: str
    position: int
    lag_seconds: float | None
    backlog: int | None


def process_numbers() -> tuple[float, float, int]:
    """Resident memory (bytes), CPU time (seconds) and open file descriptors."""
    rss, cpu, fds = 0.0, time.process_time(), 0
    for family in PROCESS_COLLECTOR.collect():
        for sample in family.samples:
            if sample.name == "process_resident_memory_bytes":
                rss = sample.value
            elif sample.name == "process_cpu_seconds_total":
                cpu = sample.value
            elif sample.name == "process_open_fds":
                fds = int(sample.value)
    return rss, cpu, fds


def _gauge(gauge: Gauge, label: str | None = None) -> dict[str, float]:
    """A gauge's current values, by the value of ``label`` ("" when unlabelled)."""
    return {
        (sample.labels.get(label, "") if label else ""): sample.value
        for family in gauge.collect()
        for sample in family.samples
    }


def read_loop_lag() -> float:
    """The event-loop lag probe's last reading (0 before its first)."""
    return _gauge(event_loop_lag).get("", 0.0)


def _coroutine_name(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    if coro is None:  # an eager task that already finished
        return task.get_name()
    return str(getattr(coro, "__qualname__", type(coro).__qualname__))


def coroutine_counts(
    tasks: set[asyncio.Task[object]], top: int = TOP_COROUTINES
) -> list[CoroutineCount]:
    """Tasks grouped by the coroutine they run, the most frequent first: a leak of one
    kind of task (a handler per message that never ends) stands out at the top."""
    counts = Counter(_coroutine_name(task) for task in tasks)
    return [{"name": name, "count": n} for name, n in counts.most_common(top)]


def snapshot(loop_lag: float | None = None) -> RuntimeSnapshot:
    """This process now; ``loop_lag`` (seconds) overrides the lag gauge's reading."""
    rss, cpu, fds = process_numbers()
    try:
        tasks: set[asyncio.Task[object]] = asyncio.all_tasks()
    except RuntimeError:  # no running loop (a synchronous caller)
        tasks = set()
    return {
        "resident_memory_bytes": rss,
        "cpu_seconds": cpu,
        "open_fds": fds,
        "tasks": len(tasks),
        "event_loop_lag_seconds": read_loop_lag() if loop_lag is None else loop_lag,
        "gc_collections": [int(generation["collections"]) for generation in gc.get_stats()],
        "top_coroutines": coroutine_counts(tasks),
    }


def projections() -> list[ProjectionSnapshot]:
    """Each projection this process has applied events for: its position, the age of its
    newest event when applied, and the backlog of the consumer feeding it (the gauges the
    projector sets; a consumer ``a+b`` feeds projections ``a`` and ``b``)."""
    positions = _gauge(projection_position, "projection")
    lags = _gauge(projection_lag, "projection")
    backlogs = _gauge(projection_backlog, "consumer")
    found: list[ProjectionSnapshot] = []
    for name, position in sorted(positions.items()):
        backlog = next(
            (int(v) for consumer, v in backlogs.items() if name in consumer.split("+")), None
        )
        found.append(
            {
                "name": name,
                "position": int(position),
                "lag_seconds": lags.get(name),
                "backlog": backlog,
            }
        )
    return found


__all__ = [
    "TOP_COROUTINES",
    "CoroutineCount",
    "ProjectionSnapshot",
    "RuntimeSnapshot",
    "coroutine_counts",
    "process_numbers",
    "projections",
    "read_loop_lag",
    "snapshot",
]
