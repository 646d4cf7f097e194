"""The ``ordermesh`` command line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from broker.asyncapi import asyncapi_json
from infra.eventstore import open_event_store
from ordermesh import runtime
from ordermesh.app import SERVICES, App
from ordermesh.config import Settings
from ordermesh.logs import configure_logging
from ordermesh.read_models import checkpoints, open_read_models, projection_named, rebuild
from projections import all_projections
from telemetry.tracing import configure_tracing, shutdown_tracing

app = typer.Typer(
    help="ordermesh: an event-sourced order system over NATS.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
projections_app = typer.Typer(help="Inspect and rebuild read models.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")
console = Console(stderr=True)


def _serve(application: App, on_ready: str | None = None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        configure_tracing(application.service_name)
        try:
            await application.start()
            try:
                if on_ready == "banner":
                    _banner(application)
                await stop.wait()
            finally:
                await application.stop()
        finally:
            shutdown_tracing()

    runtime.run(main())


def _banner(application: App) -> None:
    s = application.settings
    server = application.nats_server
    lines = [
        "[bold green]ordermesh is up[/]",
        f"  NATS            {application.nats_url}"
        + ("  (embedded nats-server, JetStream)" if server else ""),
    ]
    if server is not None:
        lines.append(f"  NATS monitoring {server.monitor_url}")
    if application.metrics is not None:
        lines.append(f"  metrics         {application.metrics.url}")
    lines += [
        f"  event store     {s.event_store_url}",
        f"  read models     sqlite:///{s.read_model_path.resolve()}",
        f"  services        {', '.join(application.services)}",
        "",
        "  try:  nats req commands.product.create "
        """'{"product_id":"p-1","name":"Widget","price":"12.50","stock":10}'""",
        '        nats req queries.product.get \'{"product_id":"p-1"}\'',
        "  stop: Ctrl-C",
    ]
    # Printed to stdout so scripts can read where things are.
    print("\n".join(Console().render_str(line).plain for line in lines), flush=True)


@app.command()
def up() -> None:
    """Start everything in one process: an embedded nats-server (unless
    ORDERMESH_NATS_URL is set), the SQLite event store, and every service.

    [b]Example[/b]: ordermesh up
    """
    configure_logging("ordermesh")
    _serve(App(Settings(), SERVICES, embedded_nats=True), on_ready="banner")


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
    configure_logging("ordermesh-" + "+".join(services))
    _serve(App(Settings(), services))


@app.command()
def asyncapi(
    output: Annotated[
        Path | None, typer.Option("--output", metavar="FILE", help="write here instead of stdout")
    ] = None,
) -> None:
    """Print the AsyncAPI 3.0.0 document of every subject, generated from the code so
    that it always matches what the services accept and send.

    [b]Example[/b]: ordermesh asyncapi --output docs/asyncapi.json
    """
    text = asyncapi_json()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"wrote {output}")


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="about a second per case: checks the harness only")
    ] = False,
    json_file: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="also write the results here")
    ] = None,
) -> None:
    """Measure every hot path against raw NATS in the same run, on an embedded
    nats-server, and print each case's ratio to its raw baseline.

    [b]Example[/b]: ordermesh bench --json bench-results.json
    """
    from ordermesh.bench.runner import bench as run_bench

    configure_logging("ordermesh-bench", level="WARNING")
    doc = runtime.run(run_bench(quick))
    if json_file is not None:
        json_file.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_file}")


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[str, typer.Argument(help="projection name, or 'all'")],
) -> None:
    """Empty a read model and replay every stored event into it from position 0.

    [b]Example[/b]: ordermesh projections rebuild orders
    """
    configure_logging("ordermesh-rebuild")
    try:
        targets = all_projections() if name == "all" else [projection_named(name)]
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None

    async def main() -> None:
        settings = Settings()
        store = await open_event_store(settings.event_store_url)
        db = open_read_models(settings.read_model_path)
        try:
            for projection in targets:
                position = await rebuild(db, store, projection)
                console.print(f"rebuilt [bold]{projection.name}[/] up to store position {position}")
        finally:
            await db.close()
            await store.close()

    runtime.run(main())


@projections_app.command("status")
def projections_status() -> None:
    """Show each projection's checkpoint: the last applied store position and the
    EVENTS sequence it arrived with."""

    async def main() -> None:
        db = open_read_models(Settings().read_model_path)
        try:
            print("projection\tposition\tsequence")
            for name, cp in (await checkpoints(db)).items():
                print(f"{name}\t{cp.position}\t{cp.sequence}")
        finally:
            await db.close()

    runtime.run(main())


def main() -> None:
    app()
