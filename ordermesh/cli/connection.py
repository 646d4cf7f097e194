"""How CLI commands reach NATS: any server URL, with credentials and TLS when needed.

The options mirror the official ``nats`` CLI (``--server``/``--creds``/``--user``/
``--password``/``--token``/``--tlsca``…), so a user's habits carry over. Each also reads
the ``ORDERMESH_NATS_*`` variable the services read, so one environment serves both; the
options become nats-py's through :func:`broker.connection.connect_options`, as the
services' do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from nats.aio.client import Client as NATS

from broker.connection import NatsUnreachable, connect_checked, connect_options, redact_url
from ordermesh.cli.app import console

DEFAULT_URL = "nats://127.0.0.1:4222"

NatsUrl = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        "-s",
        "--server",
        envvar="ORDERMESH_NATS_URL",
        help=f"NATS server URL, or several separated by commas (default {DEFAULT_URL})",
        show_default=False,
    ),
]
Creds = Annotated[
    Path | None,
    typer.Option(
        "--creds",
        envvar="ORDERMESH_NATS_CREDS",
        help="NATS credentials file (JWT + seed)",
        exists=True,
    ),
]
User = Annotated[
    str | None,
    typer.Option("--user", envvar=["NATS_USER", "ORDERMESH_NATS_USER"], help="NATS user"),
]
Password = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar=["NATS_PASSWORD", "ORDERMESH_NATS_PASSWORD"],
        help="NATS password (better from the environment than on the command line)",
        show_default=False,
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["NATS_TOKEN", "ORDERMESH_NATS_TOKEN"],
        help="NATS token",
        show_default=False,
    ),
]
TlsCa = Annotated[
    Path | None,
    typer.Option(
        "--tlsca", envvar="ORDERMESH_NATS_TLS_CA", help="CA certificate to verify the server"
    ),
]
TlsCert = Annotated[
    Path | None,
    typer.Option(
        "--tlscert", envvar="ORDERMESH_NATS_TLS_CERT", help="client certificate (mutual TLS)"
    ),
]
TlsKey = Annotated[
    Path | None,
    typer.Option("--tlskey", envvar="ORDERMESH_NATS_TLS_KEY", help="client key (mutual TLS)"),
]
#: No command-line option (yet): the commands take it from ORDERMESH_NATS_INBOX_PREFIX.
INBOX_PREFIX_ENV = "ORDERMESH_NATS_INBOX_PREFIX"


@dataclass(frozen=True)
class NatsOptions:
    url: str | None = None
    creds: Path | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tlsca: Path | None = None
    tlscert: Path | None = None
    tlskey: Path | None = None
    #: Where replies arrive (``_INBOX.client``); unset, ``ORDERMESH_NATS_INBOX_PREFIX``.
    inbox_prefix: str | None = None

    @property
    def server(self) -> str:
        return self.url or os.environ.get("ORDERMESH_NATS_URL") or DEFAULT_URL

    @property
    def shown(self) -> str:
        """The server as it may be printed: without a password or token in its URL."""
        return redact_url(self.server)

    def connect_options(self) -> dict[str, Any]:
        return {"name": "ordermesh-cli", "connect_timeout": 5} | connect_options(
            creds=self.creds,
            user=self.user,
            password=self.password,
            token=self.token,
            tls_ca=self.tlsca,
            tls_cert=self.tlscert,
            tls_key=self.tlskey,
            inbox_prefix=self.inbox_prefix or os.environ.get(INBOX_PREFIX_ENV),
        )

    async def connect(self, **extra: Any) -> NATS:
        """Fail fast and say why (a refused password, nobody listening); once connected,
        ride out server restarts as the ``nats`` CLI does."""
        try:
            return await connect_checked(
                self.server,
                wait=False,
                **self.connect_options(),
                error_cb=_refusals_only,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                **extra,
            )
        except NatsUnreachable as exc:
            raise Unreachable(str(exc)) from None


async def _refusals_only(exc: BaseException) -> None:
    """Once connected, a failed reconnect attempt is noise (the tap says "disconnected" and
    "reconnected" itself); a subject the server refuses this user is not."""
    if "permissions violation" in str(exc).lower():
        console.print(str(exc), style="red", markup=False, highlight=False)


class Unreachable(NatsUnreachable):
    """NATS refused us or is not there; the message says which."""
