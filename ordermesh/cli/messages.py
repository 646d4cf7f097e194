"""``ordermesh publish`` and ``ordermesh request``: send a proper CloudEvent from a shell."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry.trace import Span, SpanKind
from rich.console import Console
from rich.table import Table

from broker.subjects import type_from_subject
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
from ordermesh.outgoing import BadBody, Outgoing, build, child_traceparent, parse_header
from telemetry import tracing

#: Exit codes: scripts branch on them.
OK, REFUSED, USAGE, NO_ANSWER = 0, 1, 2, 3

Body = Annotated[
    str,
    typer.Argument(help="JSON body, @FILE to read a file, or - to read stdin", show_default=False),
]
Headers = Annotated[
    list[str] | None, typer.Option("--header", "-H", help="extra header KEY:VALUE (repeatable)")
]
Traceparent = Annotated[
    str | None,
    typer.Option("--traceparent", help="join this trace (W3C traceparent) instead of a new one"),
]
Correlation = Annotated[
    str | None, typer.Option("--correlation", help="correlation id (default: the message id)")
]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]

PUBLISH_HELP = (
    "Publish one CloudEvents message (no reply expected).\n\n"
    "The body must be JSON. Headers: ce-id (new), ce-type (from the subject), ce-source "
    "cli, ce-correlationid, and traceparent (a new trace, or the one --traceparent names). "
    "The message id and trace id are printed, with a Jaeger link when "
    "ORDERMESH_JAEGER_URL is set.\n\n"
    "[b]Examples[/b]\n\n"
    '  ordermesh publish commands.product.restock \'{"product_id":"p-1","quantity":5}\'\n\n'
    "  ordermesh publish demo.note @note.json -H X-Origin:laptop\n\n"
    "  echo '{\"x\":1}' | ordermesh publish demo.note -"
)

REQUEST_HELP = (
    "Send a CloudEvents request and print the reply.\n\n"
    "Exit code 0 when the reply says ok; 1 when it is an error reply (shown clearly, "
    "validation errors field by field); 2 for bad usage or no NATS; 3 when nobody answers "
    "in time or nobody serves the subject.\n\n"
    "[b]Examples[/b]\n\n"
    "  ordermesh request commands.product.create @widget.json\n\n"
    "  ordermesh request commands.order.place "
    '\'{"customer_id":"c-1","items":[{"product_id":"p-1","quantity":2}]}\'\n\n'
    '  ordermesh request queries.order.get \'{"order_id":"o-1"}\' --json | jq .data'
)


def read_body(body: str) -> str:
    try:
        if body == "-":
            return sys.stdin.read()
        if body.startswith("@"):
            return Path(body[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        console.print(f"[red]cannot read the body: {exc}[/]")
        raise typer.Exit(USAGE) from None
    return body


def _headers(raw: list[str] | None) -> dict[str, str]:
    try:
        return dict(parse_header(h) for h in raw or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _describe(out: Outgoing, as_json: bool) -> None:
    """Ids on stderr (stdout carries the reply); a Jaeger link when we know where it is."""
    if as_json:
        return
    jaeger = os.environ.get("ORDERMESH_JAEGER_URL")
    line = f"[dim]id[/] {out.message_id}  [dim]trace[/] {out.trace_id}"
    if jaeger and out.trace_id:
        line += f"\n[dim]jaeger[/] {jaeger.rstrip('/')}/trace/{out.trace_id}"
    console.print(line, highlight=False)


def _send_span(kind: str, subject: str, traceparent: str | None) -> Any:
    return tracing.span(
        f"{type_from_subject(subject)} {kind}",
        kind=SpanKind.PRODUCER,
        traceparent=traceparent,
        attributes=tracing.messaging_attributes(subject, kind, None, None),
    )


@dataclass(frozen=True)
class _Send:
    """One message to send, as the command line gave it."""

    nats: NatsOptions
    subject: str
    text: str
    headers: dict[str, str]
    traceparent: str | None
    correlation: str | None
    as_json: bool


class _Stop(Exception):
    """Ends a command early with this exit code (the reason is already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@asynccontextmanager
async def _sending(send: _Send, kind: str) -> AsyncIterator[tuple[Outgoing, NATS, Span]]:
    """What publish and request share: this process's tracing, the sending span, the
    message built in it (so it carries that span), and a connection."""
    tracing.configure_tracing("ordermesh-cli")
    try:
        with _send_span(kind, send.subject, send.traceparent) as span:
            parent = tracing.traceparent_of(span) or child_traceparent(send.traceparent)
            try:
                out = build(
                    send.subject,
                    send.text,
                    traceparent=parent,
                    correlation_id=send.correlation,
                    extra_headers=send.headers,
                )
                nc = await send.nats.connect()
            except (BadBody, Unreachable) as exc:
                console.print(f"[red]{exc}[/]")
                raise _Stop(USAGE) from None
            try:
                yield out, nc, span
            finally:
                await nc.close()
    finally:
        tracing.shutdown_tracing()


def _send(
    body: str,
    header: list[str] | None,
    nats: NatsOptions,
    subject: str,
    traceparent: str | None,
    correlation: str | None,
    as_json: bool,
) -> _Send:
    return _Send(
        nats, subject, read_body(body), _headers(header), traceparent, correlation, as_json
    )


def _run(command: Coroutine[Any, Any, int]) -> NoReturn:
    async def main() -> int:
        try:
            return await command
        except _Stop as stop:
            return stop.code

    raise typer.Exit(runtime.run(main()))


@app.command(help=PUBLISH_HELP)
def publish(
    subject: Annotated[str, typer.Argument(help="subject to publish on")],
    body: Body = "{}",
    header: Headers = None,
    traceparent: Traceparent = None,
    correlation: Correlation = None,
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
    _run(_publish(_send(body, header, nats, subject, traceparent, correlation, as_json)))


async def _publish(send: _Send) -> int:
    async with _sending(send, "publish") as (out, nc, _span):
        await nc.publish(out.subject, out.body, headers=out.headers)
        await nc.flush()
    if send.as_json:
        ids = {"id": out.message_id, "trace_id": out.trace_id, "correlation_id": out.correlation_id}
        print(json.dumps({"subject": send.subject} | ids))
    else:
        console.print(f"published [bold]{send.subject}[/]", highlight=False)
        _describe(out, send.as_json)
    return OK


@app.command(help=REQUEST_HELP)
def request(
    subject: Annotated[str, typer.Argument(help="subject to send the request on")],
    body: Body = "{}",
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.001, help="seconds to wait for the reply")
    ] = 5.0,
    header: Headers = None,
    traceparent: Traceparent = None,
    correlation: Correlation = None,
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
    send = _send(body, header, nats, subject, traceparent, correlation, as_json)
    _run(_request(send, timeout))


async def _request(send: _Send, timeout: float) -> int:
    subject = send.subject
    async with _sending(send, "send") as (out, nc, span):
        _describe(out, send.as_json)
        try:
            reply = await nc.request(out.subject, out.body, timeout=timeout, headers=out.headers)
        except NoRespondersError:
            console.print(f"[red]nobody serves {subject}[/] (is ordermesh running?)")
            tracing.fail(span, "no_responders", subject)
            return NO_ANSWER
        except NatsTimeout:
            console.print(f"[red]no reply on {subject} within {timeout:g} s[/]")
            tracing.fail(span, "timeout", subject)
            return NO_ANSWER
        code = show_reply(reply.data, send.as_json)
        if code == REFUSED:
            tracing.fail(span, "refused", subject)
        return code


def show_reply(data: bytes, as_json: bool) -> int:
    """Print the reply; the exit code follows its ``ok``."""
    try:
        decoded: Any = json.loads(data)
    except ValueError:
        sys.stdout.write(data.decode(errors="replace") + "\n")
        return OK
    refused = isinstance(decoded, dict) and decoded.get("ok") is False
    if as_json:
        print(json.dumps(decoded))
    else:
        Console().print_json(data=decoded)
        if refused:
            _explain(decoded.get("error") or {})
    return REFUSED if refused else OK


def _explain(error: dict[str, Any]) -> None:
    console.print(f"[red bold]{error.get('code')}[/]: {error.get('message')}", highlight=False)
    details = error.get("details")
    if isinstance(details, list) and details and all(isinstance(d, dict) for d in details):
        table = Table("field", "problem", show_header=True, header_style="bold")
        for d in details:
            loc = ".".join(str(part) for part in d.get("loc", []))
            table.add_row(loc or "(body)", str(d.get("msg", "")))
        console.print(table)
