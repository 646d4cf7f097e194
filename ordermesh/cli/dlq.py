"""``ordermesh dlq``: look at what consumers set aside, retry it once fixed, or drop it.

Thin on purpose: reading, purging and the retry protocol are ``broker.dlq``; this module
parses options, prints, and turns outcomes into exit codes scripts can branch on.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, NoReturn

import typer
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from broker import dlq
from broker.dlq import DeadLetter, Outcome, RetryResult
from broker.subjects import DLQ_STREAM
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
from ordermesh.cli.messages import NO_ANSWER, OK, REFUSED, USAGE

dlq_app = typer.Typer(
    help=(
        "Messages consumers set aside in the DLQ stream: list, show, retry, purge.\n\n"
        "A consumer sets an event aside after failing to apply it on every delivery; "
        "[b]retry[/b] asks that consumer (and no other) to apply it again, once, and "
        "removes it from DLQ. Fix the cause first."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(dlq_app, name="dlq")

DlqSequence = Annotated[int, typer.Argument(min=1, help="the message's sequence in DLQ (see list)")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
Limit = Annotated[
    int, typer.Option("--limit", min=1, help="read at most this many messages, oldest first")
]
Timeout = Annotated[
    float, typer.Option("--timeout", min=0.001, help="seconds to wait for each consumer's reply")
]

LIST_HELP = (
    "List the messages in DLQ, oldest first.\n\n"
    "Each with its sequence in DLQ (the ID show and retry take), when it was set aside, the "
    "consumer that set it aside, the subject it arrived on, how often it was delivered and "
    "why it failed.\n\n"
    "[b]Examples[/b]\n\n"
    "  ordermesh dlq list\n\n"
    "  ordermesh dlq list --json | jq -r '.[] | select(.consumer == \"saga_inbox\") | .sequence'"
)

SHOW_HELP = (
    "Show one message: every header (the reason, consumer and deliveries among them) and "
    "its body, pretty when it is JSON.\n\n"
    "[b]Example[/b]: ordermesh dlq show 17"
)

RETRY_HELP = (
    "Ask the consumer that set a message aside, and only that one, to apply it again.\n\n"
    'It is applied at most once: a second retry is answered "already applied" and changes '
    "nothing. Applied, it leaves DLQ; if it fails again it stays, and the reason is printed. "
    "Fix the cause first, and mind that the read model went on without it: later events of "
    "the same entity were applied before it (docs/operations.md, Dead letters).\n\n"
    "Prints one line per message: retried, already applied, failed (why), not in DLQ, or no "
    "consumer answering. Exit code 0 when every one was retried or already applied, 1 when "
    "one failed or is not in DLQ, 2 without NATS or DLQ, 3 when a consumer did not answer "
    "(is that service running?).\n\n"
    "[b]Examples[/b]\n\n"
    "  ordermesh dlq retry 17\n\n"
    "  ordermesh dlq retry --all"
)

PURGE_HELP = (
    "Remove every message from DLQ, for good; asks first unless --yes.\n\n"
    "What was set aside goes with it: retry what should be applied first, or rebuild a read "
    "model that lacks events (ordermesh projections rebuild NAME).\n\n"
    "[b]Example[/b]: ordermesh dlq purge --yes"
)

#: The table's width when stdout is not a terminal (``| less -S``, a log).
WIDE = 240

#: How each outcome reads, and the exit code it calls for.
_OUTCOMES = {
    Outcome.RETRIED: ("retried", OK),
    Outcome.ALREADY_APPLIED: ("already applied", OK),
    Outcome.FAILED: ("failed", REFUSED),
    Outcome.NOT_FOUND: ("not in DLQ", REFUSED),
    Outcome.NO_CONSUMER: ("no consumer answering", NO_ANSWER),
}


class _Stop(Exception):
    """Ends a command with this exit code; the reason is printed already."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _run(command: Coroutine[Any, Any, int]) -> NoReturn:
    async def main() -> int:
        try:
            return await command
        except _Stop as stop:
            return stop.code

    raise typer.Exit(runtime.run(main()))


@asynccontextmanager
async def _connected(nats: NatsOptions) -> AsyncIterator[NATS]:
    """A connection; no NATS or no ``DLQ`` stream end the command with exit code 2."""
    try:
        nc = await nats.connect()
    except Unreachable as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise _Stop(USAGE) from None
    try:
        yield nc
    except NotFoundError:
        console.print(
            f"[red]no {DLQ_STREAM} stream on {escape(nats.shown)}[/] (has ordermesh run there yet?)"
        )
        raise _Stop(USAGE) from None
    finally:
        await nc.close()


@dlq_app.command("list", help=LIST_HELP)
def list_(
    as_json: AsJson = False,
    limit: Limit = dlq.DEFAULT_LIMIT,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tlsca: TlsCa = None,
    tlscert: TlsCert = None,
    tlskey: TlsKey = None,
) -> None:
    nats = NatsOptions(nats_url, creds, user, password, token, tlsca, tlscert, tlskey)
    _run(_list(nats, as_json, limit))


async def _list(nats: NatsOptions, as_json: bool, limit: int) -> int:
    async with _connected(nats) as nc:
        letters = await dlq.read_all(nc.jetstream(), limit)
    if as_json:
        print(json.dumps([letter.summary() for letter in letters]))
        return OK
    if not letters:
        console.print(f"{DLQ_STREAM} is empty")
        return OK
    table = Table(
        "seq", "time (UTC)", "consumer", "subject", "deliveries", "reason", header_style="bold"
    )
    for letter in letters:
        s = letter.summary()
        table.add_row(
            str(s["sequence"]),
            letter.time.strftime("%Y-%m-%d %H:%M:%S") if letter.time else "",
            escape(s["consumer"] or "?"),
            escape(s["subject"]),
            "" if s["deliveries"] is None else str(s["deliveries"]),
            escape(s["reason"]),
        )
    # Piped, rich would squeeze the table into 80 columns and cut consumers and subjects.
    Console(width=None if sys.stdout.isatty() else WIDE).print(table)
    if len(letters) == limit:
        console.print(f"[yellow]showing the first {limit}; --limit shows more[/]")
    return OK


@dlq_app.command(help=SHOW_HELP)
def show(
    sequence: DlqSequence,
    as_json: AsJson = False,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tlsca: TlsCa = None,
    tlscert: TlsCert = None,
    tlskey: TlsKey = None,
) -> None:
    nats = NatsOptions(nats_url, creds, user, password, token, tlsca, tlscert, tlskey)
    _run(_show(nats, sequence, as_json))


def _body(data: bytes) -> Any:
    """The body as JSON when it is JSON, else as text."""
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


async def _show(nats: NatsOptions, sequence: int, as_json: bool) -> int:
    async with _connected(nats) as nc:
        letter = await dlq.read(nc.jetstream(), sequence)
    if letter is None:
        console.print(f"[red]no message {sequence} in {DLQ_STREAM}[/]")
        return REFUSED
    if as_json:
        doc = letter.summary() | {"headers": letter.headers, "body": _body(letter.data)}
        print(json.dumps(doc))
        return OK
    _print_letter(letter)
    return OK


def _print_letter(letter: DeadLetter) -> None:
    out = Console(highlight=False, soft_wrap=True)
    when = letter.time.isoformat() if letter.time else "?"
    out.print(f"[bold]{letter.sequence}[/]  {escape(letter.dlq_subject)}  {when}")
    width = max(len(name) for name in letter.headers) if letter.headers else 0
    for name, value in letter.headers.items():
        out.print(f"  [dim]{escape(name.ljust(width))}[/]  {escape(value)}")
    body = _body(letter.data)
    if isinstance(body, str):
        out.print(escape(body))
    else:
        out.print_json(data=body)


@dlq_app.command(help=RETRY_HELP)
def retry(
    sequence: Annotated[
        int | None, typer.Argument(min=1, help="the message's sequence in DLQ", show_default=False)
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="retry every message, oldest first")] = False,
    timeout: Timeout = dlq.RETRY_TIMEOUT,
    as_json: AsJson = False,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tlsca: TlsCa = None,
    tlscert: TlsCert = None,
    tlskey: TlsKey = None,
) -> None:
    if (sequence is None) == (not every):
        raise typer.BadParameter("give one message's sequence, or --all")
    nats = NatsOptions(nats_url, creds, user, password, token, tlsca, tlscert, tlskey)
    _run(_retry(nats, sequence, timeout, as_json))


async def _retry(nats: NatsOptions, sequence: int | None, timeout: float, as_json: bool) -> int:
    async with _connected(nats) as nc:
        if sequence is None:
            results = await dlq.retry_all(nc, timeout=timeout)
        else:
            results = [await dlq.retry(nc, sequence, timeout=timeout)]
    for result in results:
        _print_result(result, as_json)
    if not results and not as_json:
        console.print(f"{DLQ_STREAM} is empty: nothing to retry")
    codes = {_OUTCOMES[r.outcome][1] for r in results}
    return max(codes, default=OK)  # no answer (3) over a failure (1) over success


def _print_result(result: RetryResult, as_json: bool) -> None:
    if as_json:
        doc = {
            "sequence": result.sequence,
            "outcome": result.outcome.value,
            "consumer": result.consumer,
            "subject": result.subject,
            "event_id": result.event_id,
            "reason": result.reason,
        }
        print(json.dumps(doc))
        return
    words = _OUTCOMES[result.outcome][0]
    parts = [str(result.sequence), words, result.subject or "", result.consumer or ""]
    line = "  ".join(part for part in parts if part)
    if result.reason and result.outcome is not Outcome.NOT_FOUND:
        line += f"  ({result.reason})"
    print(line)


@dlq_app.command(help=PURGE_HELP)
def purge(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    nats_url: NatsUrl = None,
    creds: Creds = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tlsca: TlsCa = None,
    tlscert: TlsCert = None,
    tlskey: TlsKey = None,
) -> None:
    nats = NatsOptions(nats_url, creds, user, password, token, tlsca, tlscert, tlskey)
    _run(_purge(nats, yes))


async def _purge(nats: NatsOptions, yes: bool) -> int:
    async with _connected(nats) as nc:
        js = nc.jetstream()
        held = int((await js.stream_info(DLQ_STREAM)).state.messages)
        if not held:
            console.print(f"{DLQ_STREAM} is empty: nothing to purge")
            return OK
        if not yes:
            question = f"Remove all {held} message(s) from {DLQ_STREAM} for good?"
            if not await asyncio.to_thread(_confirm, question):
                console.print("nothing removed")
                return REFUSED
        purged = await dlq.purge(js)
    console.print(f"purged {purged} message(s) from {DLQ_STREAM}")
    return OK


def _confirm(question: str) -> bool:
    """Ask on stderr; no answer (stdin closed) means no."""
    if sys.stdin is None or sys.stdin.closed:
        return False
    try:
        return bool(typer.confirm(question, default=False, err=True))
    except typer.Abort:
        return False
