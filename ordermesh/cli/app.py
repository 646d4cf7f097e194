"""The Typer application every command module registers on."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    help="ordermesh: an event-sourced order system over NATS.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
projections_app = typer.Typer(help="Inspect and rebuild read models.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")

#: Diagnostics go to stderr, so stdout stays clean for what a command prints.
console = Console(stderr=True)
