"""``--stats``: per-subject counts and rates, refreshed in place (like ``nats sub
--report-subjects``)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from rich.table import Table

from ordermesh.tap.message import REPLY, Tapped


@dataclass
class Stats:
    counts: Counter[str] = field(default_factory=Counter)
    _window: Counter[str] = field(default_factory=Counter)
    rates: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    _window_start: float = field(default_factory=time.perf_counter)

    def __call__(self, msg: Tapped) -> None:
        key = "_INBOX.* (replies)" if msg.kind == REPLY else msg.subject
        self.counts[key] += 1
        self._window[key] += 1

    def tick(self) -> None:
        """Turn the counts since the last tick into rates."""
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-6)
        self.rates = {k: self._window.get(k, 0) / elapsed for k in self.counts}
        self._window.clear()
        self._window_start = now

    def table(self) -> Table:
        t = Table(title=f"ordermesh tap — {sum(self.counts.values()):,} messages")
        t.add_column("subject", no_wrap=True)
        t.add_column("count", justify="right")
        t.add_column("msg/s", justify="right")
        for subject, count in self.counts.most_common():
            t.add_row(subject, f"{count:,}", f"{self.rates.get(subject, 0.0):,.1f}")
        total_rate = sum(self.rates.values())
        t.add_section()
        t.add_row("total", f"{sum(self.counts.values()):,}", f"{total_rate:,.1f}")
        return t
