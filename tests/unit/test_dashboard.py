"""The dashboard adds up every process's totals and reads quantiles as PromQL does."""

from __future__ import annotations

import math

import pytest

from broker.heartbeat import TotalsReport
from ordermesh.api.dashboard import Dashboard, quantile


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.2: 90.0, 0.5: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)  # rank 50: the first bucket's top
    assert quantile(0.95, buckets) == pytest.approx(0.35)  # rank 95: half-way in (0.2, 0.5]
    assert quantile(0.99, {0.1: 0.0, math.inf: 5.0}) == 0.1  # in +Inf: the last finite bound
    assert quantile(0.5, {}) is None and quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None


def test_a_reading_sums_the_processes_and_rates_events_over_time() -> None:
    now = [100.0]
    dashboard = Dashboard(clock=lambda: now[0])
    command = TotalsReport(
        commands=10,
        command_errors=2,
        events_stored=30,
        command_seconds_sum=0.5,
        command_seconds_count=10,
        command_buckets={"0.1": 10, "+Inf": 10},
    )
    saga = TotalsReport(
        commands=0, events_stored=20, sagas_active=3, sagas_ended={"completed": 4, "failed": 1}
    )
    first = dashboard.reading([command, saga])
    assert first.commands_executed == 10 and first.events_stored == 50
    assert first.error_ratio == pytest.approx(0.2)
    assert first.command_latency_mean_ms == pytest.approx(50.0)
    assert first.sagas_by_status == {"running": 3, "completed": 4, "failed": 1}
    assert first.events_per_second == 0.0  # one reading: no rate yet
    now[0] += 2.0
    later = dashboard.reading([command.model_copy(update={"events_stored": 40}), saga])
    assert later.events_per_second == pytest.approx(5.0)  # 10 more events in 2 s
