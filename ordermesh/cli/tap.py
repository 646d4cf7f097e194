"""``ordermesh tap``: watch any subjects from a terminal, or pipe them into ``jq``."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

import typer
from nats.js.errors import NotFoundError as JsNotFoundError
from rich.live import Live

from broker.tasks import cancel_and_wait
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
    Unreachable,
    User,
)
from ordermesh.tap.filters import Filter
from ordermesh.tap.message import Tapped
from ordermesh.tap.render import json_line, line
from ordermesh.tap.session import DEFAULT_SUBJECTS, REPLAY_SUBJECTS, Replay, Tap, TapOptions
from ordermesh.tap.stats import Stats

FLUSH_INTERVAL = 0.05
STATS_INTERVAL = 0.5
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

TAP_HELP = (
    "Watch messages on any subjects: one readable line each, or JSON lines.\n\n"
    "With no SUBJECT, taps commands.>, events.>, queries.>, sagas.> and partners.> (the "
    "command service's calls to the payment gateway and the shipping carrier), and shows "
    "each request's reply matched to it. Any message is shown: one without ce-* headers as "
    "it is, a body that is not JSON as raw text. Stop with Ctrl-C, --count or --timeout.\n\n"
    "[b]Examples[/b]\n\n"
    "  ordermesh tap                                 [dim]everything, live[/]\n\n"
    "  ordermesh tap 'events.order.>' --body         [dim]order events, pretty bodies[/]\n\n"
    "  ordermesh tap --type 'payment.*' --headers    [dim]by CloudEvents type[/]\n\n"
    "  ordermesh tap 'partners.>' --body             [dim]calls to the partners[/]\n\n"
    "  ordermesh tap --trace 4bf92f35                [dim]one trace[/]\n\n"
    "  ordermesh tap --json -n 100 | jq .body        [dim]for scripts[/]\n\n"
    "  ordermesh tap --stats                         [dim]per-subject rates[/]\n\n"
    "  ordermesh tap --replay --last 20 --no-follow  [dim]the last 20 stored events[/]\n\n"
    "  ordermesh tap --since 1h --headers 'dlq.>'    [dim]dead letters and why[/]"
)


def parse_since(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r}: use a number and s, m, h or d (e.g. 10m)")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


class _Output:
    """Writes to stdout, flushed on a timer: a syscall per line would cap the tap."""

    def __init__(self, as_json: bool, colour: bool, headers: bool, body: bool) -> None:
        self.as_json, self.colour, self.headers, self.body = as_json, colour, headers, body
        self._out = sys.stdout

    def __call__(self, msg: Tapped) -> None:
        if self.as_json:
            self._out.write(json_line(msg))
        else:
            self._out.write(
                line(msg, colour=self.colour, headers=self.headers, body=self.body) + "\n"
            )

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self._out.flush()


@app.command(help=TAP_HELP)
def tap(
    subjects: Annotated[
        list[str] | None,
        typer.Argument(help="subjects with NATS wildcards (default: all of ordermesh's)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    headers: Annotated[bool, typer.Option("--headers", help="show every header")] = False,
    body: Annotated[bool, typer.Option("--body", help="show the pretty JSON body")] = False,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="only these types (shell patterns: 'order.*')"),
    ] = None,
    correlation: Annotated[
        str | None, typer.Option("--correlation", help="only this correlation id")
    ] = None,
    trace: Annotated[
        str | None, typer.Option("--trace", help="only this trace id (or a prefix)")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", "-x", help="never these subjects")
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="stop after N messages")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="stop after S seconds")
    ] = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="live per-subject counts and rates")
    ] = False,
    replay: Annotated[
        bool, typer.Option("--replay", help="read EVENTS (or DLQ for dlq.*) from JetStream first")
    ] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="replay from this long ago: 30s, 10m, 2h, 1d")
    ] = None,
    from_seq: Annotated[
        int | None, typer.Option("--from-seq", min=1, help="replay from this stream sequence")
    ] = None,
    last: Annotated[
        int | None, typer.Option("--last", min=1, help="replay the stream's last N messages")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="after a replay, keep following live")
    ] = True,
    replies: Annotated[
        bool, typer.Option("--replies/--no-replies", help="show replies to requests")
    ] = True,
    colour: Annotated[
        bool | None, typer.Option("--color/--no-color", help="default: when stdout is a TTY")
    ] = None,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tlsca: TlsCa = None,
    tlscert: TlsCert = None,
    tlskey: TlsKey = None,
) -> None:
    if (since or from_seq or last) and not replay:
        replay = True
    if sum(x is not None for x in (since, from_seq, last)) > 1:
        raise typer.BadParameter("choose one of --since, --from-seq and --last")
    chosen = tuple(subjects) if subjects else (REPLAY_SUBJECTS if replay else DEFAULT_SUBJECTS)
    options = TapOptions(
        subjects=chosen,
        replies=replies and not subjects and not replay,
        filter=Filter(
            types=tuple(types or ()),
            correlation=correlation,
            trace=trace,
            exclude=tuple(exclude or ()),
            subjects=chosen if replay else (),
        ),
        count=count,
        timeout=timeout,
        replay=Replay(
            since=parse_since(since) if since else None,
            from_seq=from_seq,
            last=last,
            follow=follow,
        )
        if replay
        else None,
    )
    nats = NatsOptions(nats_url, creds, user, password, token, tlsca, tlscert, tlskey)
    use_colour = sys.stdout.isatty() if colour is None else colour
    output = _Output(as_json, use_colour, headers, body)
    try:
        code = runtime.run(_tap(nats, options, output, stats))
    except KeyboardInterrupt:  # Ctrl-C is how a live tap ends
        sys.stdout.flush()
        code = 0
    raise typer.Exit(code)


def _say(text: str) -> Callable[[], Awaitable[None]]:
    """A connection callback that tells the user, on stderr, what the tap is doing."""

    async def say() -> None:
        console.print(f"[yellow]{text}[/]")

    return say


async def _tap(nats: NatsOptions, options: TapOptions, output: _Output, stats: bool) -> int:
    try:
        nc = await nats.connect(
            disconnected_cb=_say("disconnected from NATS; reconnecting…"),
            reconnected_cb=_say("reconnected"),
        )
    except Unreachable as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    counter = Stats() if stats else None
    session = Tap(nc, options, counter if counter is not None else output)
    helpers = [asyncio.create_task(output.flush_forever())]
    live: Live | None = None
    if counter is not None:
        live = Live(counter.table(), console=console, refresh_per_second=4, transient=False)
        live.start()

        async def refresh() -> None:
            while True:
                await asyncio.sleep(STATS_INTERVAL)
                counter.tick()
                live.update(counter.table())

        helpers.append(asyncio.create_task(refresh()))
    running = asyncio.create_task(session.run())
    ready = asyncio.create_task(session.ready.wait())
    try:
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if session.ready.is_set():
            what = "replaying" if options.replay else "tapping"
            console.print(f"[dim]{what} {' '.join(options.subjects)} on {nats.shown}[/]")
        await running
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    except JsNotFoundError:
        console.print(
            "[red]nothing to replay: the stream does not exist yet (is ordermesh running?)[/]"
        )
        return 2
    finally:
        await cancel_and_wait(ready)
        await cancel_and_wait(running)
        for helper in helpers:
            await cancel_and_wait(helper)
        if live is not None and counter is not None:
            counter.tick()
            live.update(counter.table())
            live.stop()
        sys.stdout.flush()
        await nc.close()
    if options.count is not None and not session.complete:
        console.print(f"[yellow]stopped after {session.shown} of {options.count} messages[/]")
        return 1
    return 0
