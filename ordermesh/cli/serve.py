"""``ordermesh up`` and ``ordermesh run``: start services and keep them running."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console

from broker.connection import redact_url
from broker.tasks import cancel_and_wait
from ordermesh import runtime
from ordermesh.api.process import STOP_WITH_STDIN, MonitorProcess
from ordermesh.app import SERVICES, App
from ordermesh.child import PartnersProcess
from ordermesh.cli.app import app
from ordermesh.config import Settings
from ordermesh.logs import configure_logging
from telemetry.tracing import configure_tracing, shutdown_tracing


def _serve(application: App, on_ready: str | None = None, *, children: bool = False) -> None:
    """Run until SIGINT or SIGTERM (or, for a child ``ordermesh up`` starts, until that
    parent is gone). ``application.start`` returns once every request service has
    answered a request through the server, so the banner means "ready". With
    ``children``, the monitor and the partners run beside it as processes of their own
    (:mod:`ordermesh.child`)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        configure_tracing(application.service_name)
        watchdog = asyncio.create_task(_orphaned(stop))
        try:
            await application.start()
            if children:
                s = application.settings
                await asyncio.gather(
                    application.add(
                        MonitorProcess(
                            application.nats_url,
                            host=s.api_host,
                            port=s.api_port,
                            metrics_port=s.metrics_port + 1 if s.metrics_port else 0,
                        )
                    ),
                    application.add(
                        PartnersProcess(
                            application.nats_url,
                            s,
                            metrics_port=s.metrics_port + 2 if s.metrics_port else 0,
                        )
                    ),
                )
            runtime.tune_gc()
            try:
                if on_ready == "banner":
                    _banner(application)
                await stop.wait()
            finally:
                await application.stop()
        finally:
            await cancel_and_wait(watchdog)
            shutdown_tracing()

    runtime.run(main())


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


def _banner(application: App) -> None:
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
    lines += [
        f"  event store     {s.event_store_url}",
        f"  read models     sqlite:///{s.read_model_path.resolve()}",
        f"  services        {', '.join(application.services)}",
        *(
            f"  partners        payment-gateway, shipping-carrier (pid {child.pid}"
            + (
                f", metrics {child.ready_url.removesuffix('readyz')}metrics)"
                if s.metrics_port
                else ")"
            )
            for child in application.children
            if "partners" in child.services
        ),
        "",
        "  try:  nats req commands.product.create "
        """'{"product_id":"p-1","name":"Widget","price":"12.50","stock":10}'""",
        '        nats req queries.product.get \'{"product_id":"p-1"}\'',
        "  demo: ordermesh demo --orders 200 --rate 20   (then: ordermesh tap)",
        "  stop: Ctrl-C",
    ]
    # Printed to stdout so scripts can read where things are.
    print("\n".join(Console().render_str(line).plain for line in lines), flush=True)


@app.command()
def up() -> None:
    """Start everything: an embedded nats-server (unless ORDERMESH_NATS_URL is set),
    the SQLite event store and every core service in this process, the monitor and the
    partners (payment gateway, shipping carrier) in processes of their own.

    [b]Example[/b]: ordermesh up
    """
    configure_logging("ordermesh")
    # The monitor and the partners: processes of their own.
    services = tuple(s for s in SERVICES if s not in ("api", "partners"))
    _serve(App(Settings(), services, embedded_nats=True), on_ready="banner", children=True)


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
