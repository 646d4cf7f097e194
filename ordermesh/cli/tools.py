"""Project tools: the AsyncAPI document, the benchmark, read-model maintenance."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from infra.eventstore import open_event_store
from ordermesh import runtime
from ordermesh.cli.app import app, console, projections_app
from ordermesh.config import Settings
from ordermesh.logs import configure_logging
from ordermesh.read_models import checkpoints, open_read_models, projection_named, rebuild
from projections import all_projections


@app.command()
def asyncapi(
    output: Annotated[
        Path | None, typer.Option("--output", metavar="FILE", help="write here instead of stdout")
    ] = None,
) -> None:
    """Print the AsyncAPI 3.0.0 document of every subject, generated from the code so
    that it always matches what the services accept and send: ordermesh's own subjects
    and the partners', as FastStream describes them, merged into one contract.

    [b]Example[/b]: ordermesh asyncapi --output docs/asyncapi.json
    """
    # Imported here: the partners' FastStream brokers are not needed by any other command.
    from ordermesh.asyncapi import asyncapi_json

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
    EVENTS sequence it arrived with.

    [b]Example[/b]: ordermesh projections status
    """

    async def main() -> None:
        db = open_read_models(Settings().read_model_path)
        try:
            print("projection\tposition\tsequence")
            for name, cp in (await checkpoints(db)).items():
                print(f"{name}\t{cp.position}\t{cp.sequence}")
        finally:
            await db.close()

    runtime.run(main())
