"""``ordermesh status``: who leads the relay, the saga and the projections, and who stands by.

Leaders come from the lease bucket (``broker.lease``); every process, leader or standby,
says what it runs in its heartbeat, so the command listens to heartbeats for a little
more than one interval to find the standbys too.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import typer
from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from broker.heartbeat import INTERVAL, HeartbeatMessage
from broker.lease import ROLES, Holder, holders
from broker.subjects import ALL_HEARTBEATS
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


def _where(host: str, pid: int) -> str:
    return f"{host}:{pid}"


async def collect(nats: NatsOptions, listen: float) -> dict[str, Any]:
    """The leases now, and the processes whose heartbeats arrived within ``listen`` s."""
    nc = await nats.connect()
    beats: dict[str, HeartbeatMessage] = {}

    async def heard(msg: Msg) -> None:
        try:
            beat = HeartbeatMessage.model_validate_json(msg.data)
        except ValidationError:
            return  # anyone may publish there
        beats[beat.instance] = beat

    try:
        sub = await nc.subscribe(ALL_HEARTBEATS, cb=heard)
        leases = await holders(nc)
        await asyncio.sleep(listen)  # heartbeats come on their own clock: listen one round
        await sub.unsubscribe()
    finally:
        await nc.close()
    now = time.time()
    roles: dict[str, Any] = {}
    for role in ROLES:
        holder: Holder | None = leases.get(role)
        standbys = sorted(
            _where(b.host, b.pid)
            for b in beats.values()
            if b.roles.get(role) == "standby" and b.ready
        )
        roles[role] = {
            "leader": None
            if holder is None
            else {
                "process": _where(holder.host, holder.pid),
                "since_seconds": round(now - holder.since, 1),
                "renewed_seconds_ago": round(now - holder.renewed, 1),
            },
            "standbys": standbys,
        }
    processes = sorted(
        (
            {"service": b.service, "process": _where(b.host, b.pid), "ready": b.ready}
            for b in beats.values()
        ),
        key=lambda p: (str(p["service"]), str(p["process"])),
    )
    return {"roles": roles, "processes": processes}


@app.command()
def status(
    nats_url: NatsUrl = None,
    creds: Creds = None,
    user: User = None,
    password: Password = None,
    token: Token = None,
    tlsca: TlsCa = None,
    tlscert: TlsCert = None,
    tlskey: TlsKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    listen: Annotated[
        float,
        typer.Option("--listen", min=0.0, help="seconds to listen for heartbeats (standbys)"),
    ] = INTERVAL * 1.25,
) -> None:
    """Show which process leads the relay, the saga and the projections (their lease),
    which stand by to take over, and every process that sent a heartbeat.

    [b]Example[/b]: ordermesh status --json | jq .roles.relay.leader
    """
    nats = NatsOptions(nats_url, creds, user, password, token, tlsca, tlscert, tlskey)
    try:
        doc = runtime.run(collect(nats, listen))
    except Unreachable as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    table = Table("role", "leader", "leading for", "renewed", "standbys")
    for role, info in doc["roles"].items():
        leader = info["leader"]
        table.add_row(
            role,
            leader["process"] if leader else "[red]none[/]",
            f"{leader['since_seconds']} s" if leader else "",
            f"{leader['renewed_seconds_ago']} s ago" if leader else "",
            ", ".join(info["standbys"]) or "-",
        )
    out = Console()
    out.print(table)
    procs = Table("service", "process", "ready")
    for proc in doc["processes"]:
        procs.add_row(proc["service"], proc["process"], "yes" if proc["ready"] else "no")
    out.print(procs)
