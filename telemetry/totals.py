"""This process's running totals for the monitor's dashboard, read from the instruments
``/metrics`` exposes (never counted a second time): what each heartbeat carries, so that
a monitor in another process can add up the whole system."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from prometheus_client.registry import Collector

from telemetry import metrics


class Totals(TypedDict):
    commands: float
    queries: float
    events_stored: float
    command_errors: float
    command_seconds_sum: float
    command_seconds_count: float
    #: Cumulative command-duration bucket counts by upper bound (``le``, as exposed).
    command_buckets: dict[str, float]
    sagas_active: float
    #: Sagas ended, by final status.
    sagas_ended: dict[str, float]


def _samples(collector: Collector, suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample.labels, sample.value


def _sum(collector: Collector, suffix: str = "_total") -> float:
    return sum(value for _labels, value in _samples(collector, suffix))


def _by(collector: Collector, label: str, suffix: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for labels, value in _samples(collector, suffix):
        found[labels[label]] = found.get(labels[label], 0.0) + value
    return found


def totals() -> Totals:
    return Totals(
        commands=_sum(metrics.command_dispatched),
        queries=_sum(metrics.query_executed),
        events_stored=_sum(metrics.event_stored),
        command_errors=_sum(metrics.command_errors),
        command_seconds_sum=_sum(metrics.command_duration, "_sum"),
        command_seconds_count=_sum(metrics.command_duration, "_count"),
        command_buckets=_by(metrics.command_duration, "le", "_bucket"),
        sagas_active=_sum(metrics.saga_active, ""),
        sagas_ended=_by(metrics.saga_completed, "status", "_total"),
    )
