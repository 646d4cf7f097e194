"""``ordermesh demo``: a steady, seeded workload against services that are already up."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ordermesh import runtime
from ordermesh.cli.app import app, console
from ordermesh.cli.connection import (
    Creds,
    NatsOptions,
    NatsUrl,
    Password,
    TlsCa,
    TlsCert,
    TlsKey,
    Token,
    User,
)
from ordermesh.demo import DemoOptions, DemoUnavailable, Mix, ProgressHook, Summary, run_demo

WORKLOAD = "Workload"
OUTPUT = "Output"


@app.command()
def demo(
    orders: Annotated[
        int,
        typer.Option("--orders", min=1, help="how many orders to place", rich_help_panel=WORKLOAD),
    ] = 200,
    rate: Annotated[
        float,
        typer.Option(
            "--rate",
            min=0.01,
            help="orders per second; paced by the clock whatever the replies, never faster",
            rich_help_panel=WORKLOAD,
        ),
    ] = 20.0,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            min=1,
            help="most orders awaiting their reply at once; past it, the schedule waits",
            rich_help_panel=WORKLOAD,
        ),
    ] = 16,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="the same seed places the same orders, so they end the same way",
            rich_help_panel=WORKLOAD,
        ),
    ] = 1,
    products: Annotated[
        int,
        typer.Option(
            "--products", min=1, help="products in the seeded catalogue", rich_help_panel=WORKLOAD
        ),
    ] = 8,
    mix: Annotated[
        Mix,
        typer.Option(
            "--mix",
            case_sensitive=False,
            help="realistic: mostly card payments, with some declined, flaky (retried), "
            "undeliverable (country XX) and out-of-stock orders; happy: only orders that "
            "get confirmed",
            rich_help_panel=WORKLOAD,
        ),
    ] = Mix.REALISTIC,
    slow: Annotated[
        bool,
        typer.Option(
            "--slow",
            help="add a few slow-card orders, which end only when the payment step times "
            "out (60 s by default)",
            rich_help_panel=WORKLOAD,
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            metavar="SECONDS",
            help="how long to wait for outcomes after the last order; orders without one "
            "count as pending",
            rich_help_panel=WORKLOAD,
        ),
    ] = 90.0,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="print the summary as one JSON object on stdout, without a progress bar",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tlsca: TlsCa = None,
    tlscert: TlsCert = None,
    tlskey: TlsKey = None,
) -> None:
    """Drive a seeded mix of orders through running services; summarise outcomes.

    Start the services first, e.g. [b]ordermesh up[/b] in another terminal.
    The demo seeds a catalogue, places orders at a fixed rate and follows
    each order's saga to its end: confirmed, cancelled (and why), or rejected
    by the command. It prints orders by outcome, command latency
    (p50/p95/p99), elapsed time and the rate achieved.

    Exit code: 0 when every order ended, 1 if some were still pending after
    --wait, 2 when NATS or the services cannot be reached.

    [b]Example[/b]: ordermesh demo --orders 500 --rate 50

    [b]Example[/b]: ordermesh demo --mix happy --seed 7 --json | jq .outcomes
    """
    connection = NatsOptions(nats_url, creds, user, password, token, tlsca, tlscert, tlskey)
    options = DemoOptions(
        nats_url=connection.server,
        connect_options=connection.connect_options(),
        orders=orders,
        rate=rate,
        concurrency=concurrency,
        seed=seed,
        products=products,
        mix=mix,
        slow=slow,
        wait=wait,
    )
    try:
        with _progress(orders, enabled=not json_output and console.is_terminal) as hook:
            summary = runtime.run(run_demo(options, hook))
    except DemoUnavailable as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    if json_output:
        print(json.dumps(summary.as_json()), flush=True)
    else:
        Console().print(_tables(summary))
    if summary.pending:
        hint = " No saga ended at all: is the saga service running?" if summary.ended == 0 else ""
        console.print(
            f"[yellow]{summary.pending} of {summary.orders} orders had no outcome "
            f"after --wait {wait:g} s.[/]{hint}"
        )
        raise typer.Exit(1)


@contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[ProgressHook | None]:
    """A live bar on stderr, only where someone watches: a pipe or a log file would get
    one frozen frame per refresh instead."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        sent = bar.add_task("sent", total=total)
        finished = bar.add_task("finished", total=total)

        def hook(n_sent: int, n_finished: int) -> None:
            bar.update(sent, completed=n_sent)
            bar.update(finished, completed=n_finished)

        yield hook


def _tables(summary: Summary) -> Group:
    outcomes = Table(title=f"ordermesh demo · run {summary.run}", title_justify="left")
    outcomes.add_column("outcome")
    outcomes.add_column("orders", justify="right")
    outcomes.add_column("share", justify="right")
    for outcome, count in summary.outcomes.items():
        style = {"confirmed": "green", "pending": "yellow"}.get(outcome, "")
        label = f"[{style}]{outcome}[/]" if style else outcome
        outcomes.add_row(label, str(count), f"{count / summary.orders:.1%}")
    outcomes.add_section()
    outcomes.add_row("[b]total[/]", str(summary.orders), "")

    measures = Table(show_header=True)
    measures.add_column("measure")
    measures.add_column("value", justify="right")
    for name, value in summary.latency_ms.items():
        measures.add_row(f"command latency {name}", _ms(value))
    measures.add_row("elapsed", f"{summary.seconds:.1f} s")
    measures.add_row("achieved rate", f"{summary.rate:.1f} orders/s")
    return Group(outcomes, measures)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"
