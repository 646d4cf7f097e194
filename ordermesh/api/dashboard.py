"""``dashboardStats``: the system's totals, added up from every process's heartbeat
(each carries ``telemetry.totals``, read from the same instruments ``/metrics``
exposes), so the monitor counts nothing itself and sees every process, not only its own.

Totals are cumulative since each process started; the event rate is the difference
between two readings, so a :class:`Dashboard` keeps the readings of the last seconds.
The p95 is interpolated within its bucket as Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.heartbeat import TotalsReport

#: Readings older than this are dropped; the event rate spans the oldest kept one.
RATE_WINDOW = 10.0


@dataclass(frozen=True)
class DashboardReading:
    timestamp: datetime
    commands_executed: int
    queries_executed: int
    events_stored: int
    events_per_second: float
    command_errors: int
    error_ratio: float
    command_latency_mean_ms: float | None
    command_latency_p95_ms: float | None
    sagas_active: int
    sagas_by_status: dict[str, int]


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile(q, …)`` over cumulative bucket counts by upper bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # as Prometheus: the highest finite bound
            width = count - below
            return lower + (bound - lower) * ((rank - below) / width if width else 1.0)
        lower, below = bound, count
    return lower


class Dashboard:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._events: deque[tuple[float, float]] = deque()

    def reading(self, reports: Iterable[TotalsReport]) -> DashboardReading:
        """The sum of ``reports``, one per process (its latest heartbeat's totals)."""
        commands = queries = stored = errors = seconds = count = active = 0.0
        buckets: dict[float, float] = {}
        ended: dict[str, float] = {}
        for r in reports:
            commands += r.commands
            queries += r.queries
            stored += r.events_stored
            errors += r.command_errors
            seconds += r.command_seconds_sum
            count += r.command_seconds_count
            active += r.sagas_active
            for le, n in r.command_buckets.items():
                buckets[float(le)] = buckets.get(float(le), 0.0) + n
            for status, n in r.sagas_ended.items():
                ended[status] = ended.get(status, 0.0) + n
        now = self._clock()
        self._events.append((now, stored))
        while len(self._events) > 2 and now - self._events[1][0] >= RATE_WINDOW:
            self._events.popleft()
        then, stored_then = self._events[0]
        rate = max(0.0, stored - stored_then) / (now - then) if now > then else 0.0
        p95 = quantile(0.95, buckets)
        by_status = {"running": int(active)} | {s: int(n) for s, n in ended.items()}
        return DashboardReading(
            timestamp=datetime.now(UTC),
            commands_executed=int(commands),
            queries_executed=int(queries),
            events_stored=int(stored),
            events_per_second=rate,
            command_errors=int(errors),
            error_ratio=errors / commands if commands else 0.0,
            command_latency_mean_ms=seconds / count * 1000 if count else None,
            command_latency_p95_ms=p95 * 1000 if p95 is not None else None,
            sagas_active=int(active),
            sagas_by_status=by_status,
        )
