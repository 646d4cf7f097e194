"""One chaos run: a cluster, a load, faults in the middle of it, the checks, a report.

:func:`run_scenario` starts a :class:`~tests.chaos.cluster.Cluster`, seeds the products,
places the planned orders (retrying with the same ``ce-id``), starts each fault once its
share of the orders has been sent, waits (bounded) for the system to settle once every
fault is over, and runs every check of :mod:`tests.chaos.checks`. The result renders as
a table row per run (the figures ``docs/reliability.md`` reports) followed by every
broken invariant, the fault timeline and the error lines of each process's log.

``CHAOS_REPORT=<file>`` appends each rendered result to that file as well.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.errors import Error as NatsError

from tests.chaos import checks
from tests.chaos.cluster import SERVICES, Cluster
from tests.chaos.faults import Fault, FaultFinding
from tests.chaos.load import (
    CONFIRMED,
    ClientPolicy,
    LoadResult,
    SentCount,
    make_plan,
    place_orders,
    seed_products,
)
from tests.chaos.progress import Progress, progress, settled
from tests.conftest import request

COLUMNS = (
    ("fault", 40),
    ("attempted", 9),
    ("acked", 6),
    ("terminal (conf/canc)", 20),
    ("lost", 5),
    ("dup effects", 11),
    ("events stored", 13),
    ("in EVENTS", 9),
    ("out-of-order", 12),
    ("restarts", 8),
    ("time s", 7),
)
ERROR_LINE = re.compile(r"\bERROR\b|\bCRITICAL\b|\[ERR\]|\[FTL\]")
#: Where a log record starts: ours (``11:32:36.981 LEVEL …``), nats-server's (``[pid] …``),
#: the harness's start markers.
RECORD = re.compile(r"^(\d\d:\d\d:\d\d|\[\d+\]|===)")
#: The last line of a traceback: ``package.module.SomeError: message``.
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Cancelled\w*)\b")
LOG_LINES = 8


@dataclass
class FaultRecord:
    name: str
    started: float
    seconds: float
    error: str | None = None
    detail: str | None = None
    finding: str | None = None


@dataclass
class ScenarioResult:
    name: str
    findings: checks.Findings
    restarts: int = 0
    seconds: float = 0.0
    """From the first order to the end of the checks."""
    total_seconds: float = 0.0
    """Including the cluster's start and stop."""
    faults: list[FaultRecord] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    last_progress: Progress | None = None

    @property
    def ok(self) -> bool:
        return not self.findings.failures

    def row(self) -> str:
        f = self.findings
        values: list[Any] = [
            self.name,
            f.attempted,
            f.acknowledged,
            f"{f.confirmed + f.cancelled} ({f.confirmed}/{f.cancelled})",
            f.lost,
            f.duplicated_effects,
            f.events_stored,
            f.events_in_stream,
            f.out_of_order,
            self.restarts,
            f"{self.seconds:.1f}",
        ]
        return " | ".join(
            str(v).ljust(w) if i == 0 else str(v).rjust(w)
            for i, (v, (_, w)) in enumerate(zip(values, COLUMNS, strict=True))
        )

    def render(self) -> str:
        lines = [header(), self.row(), ""]
        lines.append("result: " + ("all checks hold" if self.ok else "CHECKS FAILED"))
        for check, found in self.findings.failures.items():
            lines.append(f"FAILED {check}:")
            lines += [f"    {line}" for line in found]
        lines.append("faults:")
        lines += [
            f"    at {r.started:6.2f} s: {r.name} ({r.seconds:.2f} s)"
            + (f": {r.detail or r.finding}" if r.detail or r.finding else "")
            + (f" ERROR {r.error}" if r.error else "")
            for r in self.faults
        ]
        lines += [f"note: {n}" for n in self.findings.notes]
        if self.last_progress is not None:
            lines.append(f"note: last progress {self.last_progress}")
        lines.append(f"note: exit codes on SIGTERM {self.exit_codes}")
        lines.append(f"note: whole run incl. start/stop {self.total_seconds:.1f} s")
        for name, excerpt in self.logs.items():
            if excerpt:
                lines.append(f"log {name} (error lines):")
                lines += [f"    {line}" for line in excerpt]
        return "\n".join(lines)


def header() -> str:
    titles = " | ".join(t.ljust(w) if i == 0 else t.rjust(w) for i, (t, w) in enumerate(COLUMNS))
    return titles + "\n" + "-" * len(titles)


def error_lines(path: Path, limit: int = LOG_LINES) -> list[str]:
    """A log's error lines, each with the exceptions of its traceback (``a | b``): the
    first ``limit`` of them, and how many there were in all."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found: list[str] = []
    current: int | None = None
    for line in text.splitlines():
        if RECORD.match(line):
            current = None
            if ERROR_LINE.search(line):
                found.append(line.strip()[:300])
                current = len(found) - 1
        elif current is not None and EXCEPTION.match(line):
            found[current] += " | " + line.strip()[:200]
    if len(found) > limit:
        return [*found[:limit], f"... {len(found)} error lines in all ({path})"]
    return found


async def _query_findings(cluster: Cluster, fates: dict[str, str]) -> list[str]:
    """The query service answers, and its counts agree with the store."""
    confirmed = sum(1 for fate in fates.values() if fate == CONFIRMED)
    try:
        reply = await request(
            cluster.client, "queries.order.list", {"status": "confirmed", "limit": 1}, timeout=5
        )
    except (NatsError, TimeoutError) as exc:
        return [f"queries.order.list: {type(exc).__name__}"]
    if not reply.get("ok"):
        return [f"queries.order.list refused: {reply}"]
    total = reply["data"]["total"]
    return [] if total == confirmed else [f"confirmed: query says {total}, store {confirmed}"]


async def run_scenario(
    root: Path,
    name: str,
    faults: Sequence[Fault],
    *,
    orders: int = 120,
    seed: int = 1,
    concurrency: int = 32,
    rate: float = 40.0,
    settle: float = 60.0,
    extra_env: dict[str, str] | None = None,
    standby: Sequence[str] = (),
    policy: ClientPolicy | None = None,
    after: int = 0,
    tolerate: Mapping[str, frozenset[str]] | None = None,
) -> ScenarioResult:
    """Run the load with ``faults`` in the middle of it and check everything afterwards.

    ``orders`` are placed while the faults happen (each starts once its share of them was
    sent); ``after`` more orders are placed once every fault is over (a fault that waits
    for the system to go quiet needs traffic after it to show its effect).
    ``standby``: services to run a second process of (``Cluster.add``), e.g. ``("relay",)``.
    """
    began = time.monotonic()
    policy = policy or ClientPolicy()
    cluster = Cluster(root, services=SERVICES, extra_env=extra_env)
    result = ScenarioResult(name, checks.Findings())
    try:
        await cluster.start()
        for service in standby:
            await cluster.add(service)
        plan = make_plan(orders + after, seed=seed)
        await seed_products(cluster.client, plan, policy)

        sent = SentCount()
        start = time.monotonic()

        async def inject_all() -> None:
            for fault in faults:
                threshold = min(orders, max(1, math.ceil(fault.at * orders)))
                await sent.reach(threshold)
                t0 = time.monotonic()
                record = FaultRecord(fault.name, t0 - start, 0.0)
                try:
                    record.detail = await fault.inject(cluster)
                except FaultFinding as exc:
                    record.finding = str(exc)
                except Exception as exc:  # reported, and the run goes on to the checks
                    record.error = f"{type(exc).__name__}: {exc}"
                record.seconds = time.monotonic() - t0
                result.faults.append(record)

        load = LoadResult({}, 0.0)
        injector = asyncio.create_task(inject_all())
        try:
            load += await place_orders(
                cluster.client,
                plan.orders[:orders],
                policy=policy,
                concurrency=concurrency,
                rate=rate,
                on_sent=sent,
            )
            async with asyncio.timeout(policy.deadline + 120):
                await injector
        finally:
            injector.cancel()
        if after:
            load += await place_orders(
                cluster.client,
                plan.orders[orders:],
                policy=policy,
                concurrency=concurrency,
                rate=rate,
            )

        dead = cluster.check_alive()
        try:
            result.last_progress = await settled(cluster, settle)
        except AssertionError:
            result.last_progress = await progress(cluster)
            result.findings.notes.append(f"not settled after {settle:g} s")
        stored = await checks.read_store(cluster.events_db)
        messages = await checks.read_events(cluster.client)
        live_orders = await asyncio.to_thread(checks.read_model_orders, cluster.read_models_db)
        live_stock = await asyncio.to_thread(checks.read_model_stock, cluster.read_models_db)
        rebuilt = await checks.rebuild_findings(
            cluster.events_db, cluster.read_models_db, root / "rebuilt.db"
        )
        findings = checks.check_all(
            plan, load, stored, messages, live_orders, live_stock, rebuilt, tolerate
        )
        findings.fail(
            "the query service answers and agrees with the store",
            await _query_findings(cluster, checks.order_fates(stored)),
        )
        findings.fail(
            "no process exits by itself",
            [f"{n} exited with {cluster.processes[n].crashes}" for n in dead],
        )
        findings.fail(
            "a command during the fault: refused `unavailable`, or served; never half-written",
            [f"{r.name}: {r.finding}" for r in result.faults if r.finding],
        )
        findings.fail(
            "every fault is injected and restored",
            [f"{r.name}: {r.error}" for r in result.faults if r.error],
        )
        if result.last_progress is not None and not result.last_progress.settled:
            findings.fail("the system settles", [f"{result.last_progress}"])
        findings.notes += result.findings.notes
        findings.notes.append(f"load: {load.seconds:.1f} s to acknowledge every order")
        result.findings = findings
        result.seconds = time.monotonic() - start
    finally:
        result.restarts = cluster.restarts
        result.exit_codes = await cluster.stop()
        result.logs = {p.name: error_lines(p.log) for p in cluster.processes.values()}
        result.logs["nats-server"] = error_lines(cluster.nats_dir / "nats-server.log")
        result.total_seconds = time.monotonic() - began
    report = os.environ.get("CHAOS_REPORT")
    if report:
        await asyncio.to_thread(_append, Path(report), result.render() + "\n\n")
    return result


def _append(path: Path, text: str) -> None:
    with path.open("a") as out:
        out.write(text)
