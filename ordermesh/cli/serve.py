"""``ordermesh up`` and ``ordermesh run``: start services and keep them running."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated

import typer
from rich.console import Console

from broker.connection import redact_url
from broker.lease import holders
from broker.tasks import cancel_and_wait
from ordermesh import runtime
from ordermesh.api.process import STOP_WITH_STDIN, MonitorProcess
from ordermesh.app import SERVICES, App
from ordermesh.child import (
    STARTUP_TIMEOUT,
    ChildGroup,
    ChildService,
    PartnersProcess,
    ServicesProcess,
)
from ordermesh.cli.app import app
from ordermesh.config import Settings
from ordermesh.logs import configure_logging
from telemetry.tracing import configure_tracing, shutdown_tracing

#: The core services: ``ordermesh up`` runs them in its own process, each of its other
#: replicas too; the monitor and the partners run in processes of their own.
CORE_SERVICES = tuple(s for s in SERVICES if s not in ("api", "partners"))


def _serve(
    application: App, on_ready: str | None = None, *, children: bool = False, replicas: int = 1
) -> None:
    """Run until SIGINT or SIGTERM (or, for a child ``ordermesh up`` starts, until that
    parent is gone). ``application.start`` returns once every request service has
    answered a request through the server, so the banner means "ready". With
    ``children``, the monitor and the partners run beside it as processes of their own
    (:mod:`ordermesh.child`), and ``replicas - 1`` more processes of the core services
    and of the partners; they start together and stop together."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        configure_tracing(application.service_name)
        watchdog = asyncio.create_task(_orphaned(stop))
        try:
            try:
                await application.start()
                if children:
                    await _start_children(application, replicas)
                runtime.tune_gc()
                if on_ready == "banner":
                    _banner(application, await _leaders(application))
                await stop.wait()
            finally:
                # Also after a failed start: no child, store or nats-server left behind.
                await application.stop()
        finally:
            await cancel_and_wait(watchdog)
            shutdown_tracing()

    runtime.run(main())


def metrics_ports(base: int, replicas: int) -> dict[str, int]:
    """Where each process of ``ordermesh up --replicas N`` serves ``/metrics``, from the
    ``up`` process's port ``base``: the monitor at +1, the first partners at +2, then
    replica k (2..N) at +2k-1 and its partners at +2k, so that N=1 keeps the ports it
    always had. Keys: ``core-1``, ``monitor``, ``partners-1``, ``core-k``,
    ``partners-k``."""
    ports = {"core-1": base, "monitor": base + 1, "partners-1": base + 2}
    for k in range(2, replicas + 1):
        ports |= {f"core-{k}": base + 2 * k - 1, f"partners-{k}": base + 2 * k}
    return ports


def lead_layout(replicas: int) -> dict[int, tuple[str, ...]]:
    """Which replica (1..N) is meant to lead which singleton: spread over the processes,
    so that with two the saga (the costliest singleton per order: docs/architecture.md)
    has a core of its own, away from the relay and the projector. Replica 1 is the
    ``up`` process."""
    layout: dict[int, tuple[str, ...]] = {k: () for k in range(1, replicas + 1)}
    for i, role in enumerate(("relay", "saga", "projections")):
        k = i % replicas + 1
        layout[k] = (*layout[k], role)
    return layout


async def _start_children(application: App, replicas: int) -> None:
    """The monitor, the partners and the other replicas, started concurrently (each
    takes a second or two to import and connect). With replicas, this process first
    takes the leases :func:`lead_layout` gives it; each replica takes its own as it
    starts, and every process stands by for the others' (``ORDERMESH_LEADS``)."""
    s = application.settings
    url = application.nats_url
    if replicas > 1:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await application.wait_leading()
        except TimeoutError:
            raise RuntimeError(
                f"this process did not get the {s.leads} lease(s) within"
                f" {STARTUP_TIMEOUT:.0f} s: does another ordermesh on {redact_url(url)}"
                " hold them? (ordermesh status)"
            ) from None
    ports = metrics_ports(s.metrics_port, replicas) if s.metrics_port else {}
    group: list[ChildService] = [
        MonitorProcess(
            url,
            host=s.api_host,
            port=s.api_port,
            metrics_port=ports.get("monitor", 0),
            metrics_host=s.metrics_host,
        ),
        PartnersProcess(url, s, metrics_port=ports.get("partners-1", 0)),
    ]
    layout = lead_layout(replicas)
    for k in range(2, replicas + 1):
        core = ServicesProcess(CORE_SERVICES, url, s, metrics_port=ports.get(f"core-{k}", 0))
        core.env["ORDERMESH_LEADS"] = ",".join(layout[k])
        group += [core, PartnersProcess(url, s, metrics_port=ports.get(f"partners-{k}", 0))]
    await application.add(ChildGroup(group))
    if replicas > 1 and application.nc is not None:
        # Each replica took the leases it is meant to lead before it answered /readyz;
        # read the bucket until it says so (a replica's first write may still be on its
        # way), so that the banner shows the layout. A poll: KV has no "all held" event.
        nc = application.nc

        async def held() -> bool:
            return all(h is not None for h in (await holders(nc)).values())

        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not await held():  # noqa: ASYNC110
                await asyncio.sleep(0.1)


async def _leaders(application: App) -> dict[str, int]:
    """``{role: pid}`` of each lease's holder now, as the lease bucket says (what
    ``ordermesh status`` reads): the banner says who leads from it, not from hope."""
    if application.nc is None or not application.leases:
        return {}
    found = await holders(application.nc)
    return {role: holder.pid for role, holder in found.items() if holder is not None}


async def _orphaned(stop: asyncio.Event) -> None:
    """For a child of ``ordermesh up`` (``ORDERMESH_STOP_WITH_STDIN``): set ``stop`` when
    its stdin, a pipe from the parent, closes, which it does when the parent ends in any
    way, a SIGKILL included. A monitor must not outlive the ``ordermesh up`` it belongs to."""
    if os.environ.get(STOP_WITH_STDIN) != "1":
        return
    closed = asyncio.Event()

    class _Watch(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            closed.set()

    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(_Watch, sys.stdin)
    await closed.wait()
    stop.set()


def _banner(application: App, leaders: Mapping[str, int]) -> None:
    s = application.settings
    server = application.nats_server
    lines = [
        "[bold green]ordermesh is up[/]",
        f"  NATS            {redact_url(application.nats_url)}"
        + ("  (embedded nats-server, JetStream)" if server else ""),
    ]
    if server is not None:
        lines.append(f"  NATS monitoring {server.monitor_url}")
    if application.metrics is not None:
        lines.append(f"  metrics         {application.metrics.url}")
        base = application.metrics.base_url
        lines.append(f"  health          {base}/healthz  {base}/readyz")
    monitor = application.monitor_url
    if monitor is not None:
        lines.append(f"  monitor         {monitor}")
        lines.append(f"  GraphQL         {monitor}graphql")
    partners = [child for child in application.children if "partners" in child.services]
    replicated = any(child.services == CORE_SERVICES for child in application.children)
    lines += [
        f"  event store     {s.event_store_url}",
        f"  read models     sqlite:///{s.read_model_path.resolve()}",
        f"  services        {', '.join(application.services)}",
    ]
    if replicated:
        lines += [
            f"  partners        payment-gateway, shipping-carrier ({len(partners)} processes)",
            *_processes(application, leaders),
        ]
    else:
        lines += [
            f"  partners        payment-gateway, shipping-carrier (pid {child.pid}"
            + (f", metrics {child.metrics_url})" if child.metrics_url else ")")
            for child in partners
        ]
    lines += [
        "",
        "  try:  nats req commands.product.create "
        """'{"product_id":"p-1","name":"Widget","price":"12.50","stock":10}'""",
        '        nats req queries.product.get \'{"product_id":"p-1"}\'',
        "  demo: ordermesh demo --orders 200 --rate 20   (then: ordermesh tap)",
        "  stop: Ctrl-C",
    ]
    # Printed to stdout so scripts can read where things are.
    print("\n".join(Console().render_str(line).plain for line in lines), flush=True)


def _processes(application: App, leaders: Mapping[str, int]) -> list[str]:
    """The banner's table of every process of ``up --replicas N``: its pid, what it
    runs, its ``/metrics`` (when metrics are on) and, for the services behind a lease,
    whether it leads them or stands by (command, query and the partners share their
    requests through queue groups: every replica serves)."""
    metrics = application.settings.metrics_port != 0
    this = (
        os.getpid(),
        ", ".join(application.services),
        application.metrics.url if application.metrics is not None else "",
        application.services,
    )
    monitor = application.monitor_process
    others = [
        (
            child.pid,
            "api (monitor)" if child is monitor else ", ".join(child.services),
            child.metrics_url or "",
            child.services,
        )
        for child in ([monitor] if monitor is not None else []) + application.children
    ]
    header = ["pid", "runs", *(["metrics"] if metrics else []), "relay, projections, saga"]
    rows = [header] + [
        [str(pid), runs, *([url] if metrics else []), _leases(services, pid, leaders)]
        for pid, runs, url, services in [this, *others]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    table = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    return ["  processes", *("    " + line.rstrip() for line in table)]


def _leases(services: Sequence[str], pid: int | None, leaders: Mapping[str, int]) -> str:
    """``leads …`` and/or ``stands by for …``: the lease roles among ``services``."""
    roles = [role for role in ("relay", "projections", "saga") if role in services]
    leads = [role for role in roles if pid is not None and leaders.get(role) == pid]
    standby = [role for role in roles if role not in leads]
    parts = [f"leads {', '.join(leads)}"] if leads else []
    if standby:
        parts.append(f"stands by for {', '.join(standby)}")
    return "; ".join(parts)


@app.command()
def up(
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            min=1,
            help="processes of each scalable service (1 or more). With N, this process"
            " runs nats-server and the core services, N-1 more processes run the core"
            " services too (all share commands and queries) and N processes in all run"
            " the partners; one monitor. The relay, the saga and the projections are"
            " led by different processes where N allows (with 2: this one the relay and"
            " the projections, the second the saga), the others standing by. /metrics:"
            " this process at ORDERMESH_METRICS_PORT (P), the monitor at P+1, the"
            " partners at P+2, replica k (2..N) at P+2k-1 and its partners at P+2k.",
        ),
    ] = 1,
) -> None:
    """Start everything: an embedded nats-server (unless ORDERMESH_NATS_URL is set),
    the SQLite event store and every core service in this process, the monitor and the
    partners (payment gateway, shipping carrier) in processes of their own, and with
    --replicas N, N-1 more processes of the core services and of the partners.

    [b]Example[/b]: ordermesh up --replicas 2
    """
    settings = Settings()
    if settings.metrics_port and settings.metrics_port + 2 * replicas > 65535:
        raise typer.BadParameter(
            f"{replicas} replicas need the metrics ports {settings.metrics_port}"
            f"..{settings.metrics_port + 2 * replicas}: past 65535; lower"
            " ORDERMESH_METRICS_PORT, or set it to 0",
            param_hint="'--replicas'",
        )
    configure_logging("ordermesh")
    if replicas > 1:
        settings = settings.model_copy(update={"leads": ",".join(lead_layout(replicas)[1])})
    # The monitor and the partners: processes of their own.
    application = App(settings, CORE_SERVICES, embedded_nats=True)
    _serve(application, on_ready="banner", children=True, replicas=replicas)


@app.command()
def run(
    services: Annotated[list[str], typer.Argument(help=f"one or more of: {', '.join(SERVICES)}")],
) -> None:
    """Run some services against an existing NATS server (ORDERMESH_NATS_URL,
    default nats://127.0.0.1:4222), for multi-process deployments.

    [b]Example[/b]: ORDERMESH_NATS_URL=nats://127.0.0.1:4222 ordermesh run command relay
    """
    bad = [s for s in services if s not in SERVICES]
    if bad:
        raise typer.BadParameter(f"unknown service(s) {bad}; choose from {list(SERVICES)}")
    application = App(Settings(), services)
    configure_logging(application.service_name)
    _serve(application)
