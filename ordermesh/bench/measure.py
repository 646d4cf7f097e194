"""Bounded measurement loops: every loop stops at a deadline or an operation count."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """One case's outcome; ``ratio`` is filled in against its baseline by the runner."""

    name: str
    group: str
    metric: str  # "rate" (ops/s) or "latency" (ms) or "bytes"
    value: float
    unit: str
    ops: int = 0
    seconds: float = 0.0
    baseline: str | None = None
    ratio: float | None = None
    target: float | None = None
    target_kind: str = "min_ratio"  # or "max_value"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str | None:
        if self.target is None:
            return None
        if self.target_kind == "max_value":
            return "met" if self.value < self.target else "missed"
        if self.ratio is None:
            return None
        return "met" if self.ratio >= self.target else "missed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "metric": self.metric,
            "value": round(self.value, 3),
            "unit": self.unit,
            "ops": self.ops,
            "seconds": round(self.seconds, 3),
            "baseline": self.baseline,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.target,
            "target_kind": self.target_kind if self.target is not None else None,
            "verdict": self.verdict,
            **self.extra,
        }


async def closed_loop(
    op: Callable[[int], Awaitable[Any]],
    *,
    concurrency: int,
    duration: float,
    max_ops: int = 10_000_000,
) -> tuple[int, float]:
    """``concurrency`` workers call ``op(i)`` back to back until the deadline or ``max_ops``.

    Returns (completed operations, elapsed seconds).
    """
    counter = 0
    done = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal counter, done
        while counter < max_ops and time.perf_counter() < deadline:
            i = counter
            counter += 1
            await op(i)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - start


def middle(values: list[float]) -> float:
    """The median of an odd number of values (of an even number, the upper middle one):
    rounds are repeated three times, and the median is a value some round measured."""
    return sorted(values)[len(values) // 2]


def middle_result(results: list[Result]) -> Result:
    """The result whose value is :func:`middle` of theirs."""
    return sorted(results, key=lambda r: r.value)[len(results) // 2]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    values = sorted(latencies_s)
    return {f"p{p}_ms": round(percentile(values, p) * 1000, 3) for p in (50, 95, 99)} | {
        "max_ms": round(values[-1] * 1000, 3) if values else math.nan
    }
