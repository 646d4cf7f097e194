"""Runs every case against one embedded nats-server and reports ratios to raw baselines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger
from nats.aio.client import Client as NATS
from rich.console import Console
from rich.table import Table

from broker.connection import connect
from infra.nats_server import EmbeddedNatsServer, nats_server_binary
from ordermesh import __version__, runtime
from ordermesh.app import SERVICES, App
from ordermesh.bench import faststream_echo, processes, raw, system
from ordermesh.bench.measure import Result
from ordermesh.child import PartnersProcess
from ordermesh.config import Settings

#: Commands spread over this many products, so 64 in flight do not all queue on one stream.
PRODUCTS = 100


@dataclass(frozen=True)
class Plan:
    """How long and how much: ``quick`` keeps the harness honest in CI in seconds."""

    duration: float
    ramp_duration: float
    relay_events: int
    memory_orders: int
    saga_orders: int
    #: Alternated pairs (raw then command, tracing off then on) and each one's seconds:
    #: the ratio is the median pair's, so more, shorter pairs ride out the machine's
    #: bursts better than a few long ones.
    rounds: int
    pair_duration: float
    #: Alternated pairs of raw JetStream publishing and the relay (each relay round fills
    #: a store of ``relay_events`` first).
    relay_rounds: int
    #: Alternated pairs of one and two command processes.
    split_rounds: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                duration=1.0,
                ramp_duration=0.5,
                relay_events=2_000,
                memory_orders=1_000,
                saga_orders=200,
                rounds=1,
                pair_duration=1.0,
                relay_rounds=1,
                split_rounds=1,
            )
        return cls(
            duration=5.0,
            ramp_duration=2.0,
            relay_events=20_000,
            memory_orders=10_000,
            saga_orders=3_000,
            rounds=9,
            pair_duration=2.0,
            relay_rounds=5,
            split_rounds=5,
        )


async def run_all(plan: Plan, progress: Console) -> list[Result]:
    results: list[Result] = []

    def done(result: Result) -> None:
        results.append(result)
        progress.print(f"  {result.name}: {result.value:,.1f} {result.unit}")

    with tempfile.TemporaryDirectory(prefix="ordermesh-bench-") as tmp:
        root = Path(tmp)
        server = EmbeddedNatsServer(root / "nats")
        await server.start()
        try:
            progress.print("[bold]raw NATS baselines[/]")
            for c in (1, 64):
                done(await raw.request_reply(server.url, concurrency=c, duration=plan.duration))
            done(await raw.publish_subscribe(server.url, duration=plan.duration))
            for r in await system.tap_rate(server.url, duration=plan.duration):
                done(r)
            for w in (1, 256):
                done(await raw.jetstream_publish(server.url, in_flight=w, duration=plan.duration))
            # What syncing every JetStream write would cost (docs/reliability.md): the same
            # publishes on a server of its own with ``sync_interval: always``.
            synced = EmbeddedNatsServer(root / "nats-sync-always", sync_interval="always")
            await synced.start()
            try:
                for w in (1, 256):
                    done(
                        await raw.jetstream_publish(
                            synced.url,
                            in_flight=w,
                            duration=plan.duration,
                            variant=".sync_always",
                            baseline=f"raw.jetstream_publish.w{w}",
                        )
                    )
            finally:
                await synced.stop()

            progress.print("[bold]ordermesh[/]")
            # The command service alone, as `ordermesh run command` deploys it.
            app = App(
                Settings(nats_url=server.url, data_dir=root / "commands", metrics_port=0),
                ("command",),
            )
            await app.start()
            runtime.tune_gc()  # as `ordermesh up` and `ordermesh run` do once started
            client = await connect(server.url)
            try:
                products = await system.seed_products(client, PRODUCTS)
                for command in ("product.restock", "order.place"):
                    done(
                        await system.command_rate(
                            client, command, products, concurrency=1, duration=plan.duration
                        )
                    )
                    done(
                        await system.command_vs_raw(
                            server.url,
                            client,
                            command,
                            products,
                            concurrency=64,
                            duration=plan.pair_duration,
                            rounds=plan.rounds,
                        )
                    )
                for r in await system.tracing_cost(
                    client,
                    products,
                    concurrency=64,
                    duration=plan.pair_duration,
                    rounds=plan.rounds,
                ):
                    done(r)
                for r in await system.monitor_cost(
                    server.url,
                    client,
                    products,
                    concurrency=64,
                    duration=plan.pair_duration,
                    rounds=plan.rounds,
                ):
                    done(r)
            finally:
                await client.close()
                await app.stop()
            # FastStream's request/reply beside raw nats-py and restock, in alternated
            # rounds, on a command service of its own (as fresh as the one above):
            # why the command and query services stay on nats-py.
            fast = await faststream_echo.run_case(
                server.url,
                root / "faststream",
                products=PRODUCTS,
                duration=plan.pair_duration,
                rounds=plan.rounds,
            )
            done(fast)
            progress.print(f"    {faststream_echo.summary(fast)}")
            # The read side, as `ordermesh up` runs it but without the saga, whose own
            # traffic (several commands and events per order) is measured next.
            core = tuple(s for s in SERVICES if s not in ("saga", "api", "partners"))
            app = App(Settings(nats_url=server.url, data_dir=root / "data", metrics_port=0), core)
            await app.start()
            runtime.tune_gc()  # as `ordermesh up` and `ordermesh run` do once started
            client = await connect(server.url)
            try:
                products = await system.seed_products(client, PRODUCTS)
                for r in await system.read_model_latency(
                    client,
                    app,
                    products,
                    duration=plan.duration,
                    ramp_duration=plan.ramp_duration,
                ):
                    done(r)
            finally:
                await client.close()
                await app.stop()
            client = await connect(server.url)
            try:
                done(
                    await system.relay_vs_raw(
                        server.url,
                        client,
                        root,
                        events=plan.relay_events,
                        rounds=plan.relay_rounds,
                        duration=plan.pair_duration,
                    )
                )
            finally:
                await client.close()
            await split_over_processes(plan, root, server, done)
            # A server of its own: EVENTS belongs to one store, and the saga would act on
            # every order.placed the earlier cases left there.
            saga_server = EmbeddedNatsServer(root / "nats-saga")
            await saga_server.start()
            saga_settings = Settings(
                nats_url=saga_server.url, data_dir=root / "saga", metrics_port=0
            )
            # The partners in a process of their own, as `ordermesh up` runs them: their
            # CPU per order is read off that process.
            app = App(saga_settings, tuple(s for s in SERVICES if s not in ("api", "partners")))
            partners = PartnersProcess(saga_server.url, saga_settings)
            await asyncio.gather(app.start(), partners.start())
            runtime.tune_gc()  # as `ordermesh up` and `ordermesh run` do once started
            client = await connect(saga_server.url)
            try:
                products = await system.seed_products(client, PRODUCTS)
                done(
                    await system.saga_rate(
                        client, app, products, orders=plan.saga_orders, partners=partners
                    )
                )
            finally:
                await client.close()
                await app.stop()
                await partners.stop()
                await saga_server.stop()
        finally:
            await server.stop()
    done(await system.peak_rss_of_up(orders=plan.memory_orders))
    by_name = {r.name: r for r in results}
    for r in results:
        if r.ratio is not None:  # measured against its own paired baseline rounds
            continue
        if r.baseline is not None and r.baseline in by_name and by_name[r.baseline].value:
            r.ratio = r.value / by_name[r.baseline].value
    return results


async def split_over_processes(
    plan: Plan, root: Path, server: EmbeddedNatsServer, done: Callable[[Result], None]
) -> None:
    """The services as processes of their own (`ordermesh run`, `ordermesh up --replicas`):
    a second command process over one, the saga end to end with every service apart, and
    command → read model across three processes. The last two get servers of their own,
    since a relay and projector act on everything EVENTS holds."""
    client = await connect(server.url)
    try:
        for c in (64, 256):
            two = await processes.command_scaling(
                server,
                client,
                root / f"scale-c{c}",
                products=PRODUCTS,
                concurrency=c,
                duration=plan.pair_duration,
                rounds=plan.split_rounds,
            )
            done(processes.x1_of(two))
            done(two)
    finally:
        await client.close()
    async with _own_server(root / "nats-split-saga") as (own, client):
        done(
            await processes.saga_split(
                own, client, root / "split-saga", orders=plan.saga_orders, products=PRODUCTS
            )
        )
    async with _own_server(root / "nats-split-read-model") as (own, client):
        done(
            await processes.read_model_split(
                own,
                client,
                root / "split-read-model",
                rate=500,
                duration=plan.duration,
                products=PRODUCTS,
            )
        )


@contextlib.asynccontextmanager
async def _own_server(store: Path) -> AsyncIterator[tuple[EmbeddedNatsServer, NATS]]:
    """A nats-server of its own (an empty EVENTS) and a client of it."""
    server = EmbeddedNatsServer(store)
    await server.start()
    try:
        client = await connect(server.url)
        try:
            yield server, client
        finally:
            await client.close()
    finally:
        await server.stop()


PENDING: dict[str, str] = {}


def report(results: list[Result], plan: Plan, quick: bool) -> dict[str, Any]:
    return {
        "meta": {
            "ordermesh": __version__,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "plan": plan.__dict__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "nats_server": str(nats_server_binary()),
        },
        "cases": {r.name: r.as_dict() for r in results},
        "pending": PENDING,
    }


def table(results: list[Result]) -> Table:
    t = Table(title="ordermesh bench", show_lines=False)
    for col in ("case", "value", "unit", "baseline", "ratio", "target", "verdict"):
        t.add_column(
            col,
            justify="right" if col in {"value", "ratio", "target"} else "left",
            no_wrap=col in {"case", "baseline"},
        )
    for r in results:
        target = (
            ""
            if r.target is None
            else (f"< {r.target:g}" if r.target_kind == "max_value" else f">= {r.target:g}x")
        )
        verdict = r.verdict or ""
        style = {"met": "green", "missed": "red"}.get(verdict, "")
        t.add_row(
            r.name,
            f"{r.value:,.1f}",
            r.unit,
            r.baseline or "",
            "" if r.ratio is None else f"{r.ratio:.2f}x",
            target,
            f"[{style}]{verdict}[/]" if style else verdict,
        )
    return t


async def bench(quick: bool) -> dict[str, Any]:
    # Wide enough for the case names when piped to a file, as `make bench` output often is.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    progress = Console(stderr=True)
    logger.disable("broker")
    logger.disable("sagas")
    plan = Plan.of(quick)
    started = time.perf_counter()
    results = await run_all(plan, progress)
    doc = report(results, plan, quick)
    doc["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    console.print(table(results))
    faststream_echo.print_summaries(results, console)
    for name, why in PENDING.items():
        console.print(f"[dim]{name}: {why}[/]")
    return doc
