"""How CLI commands reach NATS: any server URL, with credentials and TLS when needed.

The options mirror the official ``nats`` CLI (``--server``/``--creds``/``--user``/
``--password``/``--token``/``--tlsca``…), so a user's habits carry over.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from nats.aio.client import Client as NATS

from broker.connection import connect

DEFAULT_URL = "nats://127.0.0.1:4222"

NatsUrl = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        "-s",
        "--server",
        envvar="ORDERMESH_NATS_URL",
        help=f"NATS server URL (default {DEFAULT_URL})",
        show_default=False,
    ),
]
Creds = Annotated[
    Path | None, typer.Option("--creds", help="NATS credentials file (JWT + seed)", exists=True)
]
User = Annotated[str | None, typer.Option("--user", envvar="NATS_USER", help="NATS user")]
Password = Annotated[
    str | None, typer.Option("--password", envvar="NATS_PASSWORD", help="NATS password")
]
Token = Annotated[str | None, typer.Option("--token", envvar="NATS_TOKEN", help="NATS token")]
TlsCa = Annotated[Path | None, typer.Option("--tlsca", help="CA certificate to verify the server")]
TlsCert = Annotated[Path | None, typer.Option("--tlscert", help="client certificate (mutual TLS)")]
TlsKey = Annotated[Path | None, typer.Option("--tlskey", help="client key (mutual TLS)")]


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

    @property
    def server(self) -> str:
        return self.url or os.environ.get("ORDERMESH_NATS_URL") or DEFAULT_URL

    def connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"name": "ordermesh-cli", "connect_timeout": 5}
        if self.creds:
            options["user_credentials"] = str(self.creds)
        if self.user:
            options["user"] = self.user
        if self.password:
            options["password"] = self.password
        if self.token:
            options["token"] = self.token
        if self.tlsca or self.tlscert:
            context = ssl.create_default_context(cafile=str(self.tlsca) if self.tlsca else None)
            if self.tlscert:
                context.load_cert_chain(
                    str(self.tlscert), str(self.tlskey) if self.tlskey else None
                )
            options["tls"] = context
        return options

    async def connect(self, **extra: Any) -> NATS:
        """Fail fast and say why (a refused password, nobody listening); once connected,
        ride out server restarts as the ``nats`` CLI does.

        nats-py retries even the first connection when reconnecting is allowed, and logs a
        traceback per attempt; so one quiet attempt without reconnects comes first.
        """
        errors: list[BaseException] = []

        async def remember(exc: BaseException) -> None:
            errors.append(exc)

        options = self.connect_options() | {"error_cb": remember}
        try:
            probe = await connect(
                self.server,
                **options,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # 0 would mean "for ever" to nats-py
                reconnect_time_wait=0.1,
            )
        except Exception as exc:
            reason = errors[-1] if errors else exc
            raise Unreachable(f"cannot connect to {self.server}: {reason}") from None
        await probe.close()
        return await connect(
            self.server,
            **options,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            **extra,
        )


class Unreachable(Exception):
    """NATS refused us or is not there; the message says which."""
