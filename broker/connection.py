"""Connecting to NATS.

A request sent as the very first thing on a fresh nats-py connection is occasionally
answered "no responders" although the responder subscribed (and flushed) before it:
measured 2 in 80 on this machine, 0 in 160 once the new connection had done one round
trip first. So every connection makes that round trip before it is handed out. It still
happens now and then (in the bench's raw baseline, once in a test run) to the first
request after a responder subscribed; :func:`request_served` is for callers that know a
responder is there.

How to reach the server (credentials, TLS, the inbox prefix) is built here once, by
:func:`connect_options`, for the services (``ordermesh.config.Settings``) and the CLI
(``ordermesh.cli.connection.NatsOptions``) alike; :func:`connect_checked` is how both
open a connection that reports a wrong password or an untrusted certificate at once.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import nats
from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, NoRespondersError, SlowConsumerError
from pydantic import SecretStr


async def report(exc: Exception) -> None:
    """nats-py's asynchronous errors, one line each. nats-py's default logs a traceback
    per error, and a full subscription buffer reports every message it drops."""
    if isinstance(exc, SlowConsumerError):
        logger.warning("nats: subscription buffer full on {}; message dropped", exc.subject)
    else:
        logger.warning("nats: {}", exc)


#: Where a comma starts another server: a URL with a scheme, or a bare ``host[:port]``.
_NEXT_SERVER = re.compile(r"^\s*([a-z][a-z0-9+.-]*://|[A-Za-z0-9.\-]+(:\d+)?\s*$)")


def server_list(url: str) -> list[str]:
    """The servers of ``url``: one URL, or several separated by commas as every NATS
    client and the ``nats`` CLI take them (``nats://a:4222,nats://b:4222``, or
    ``nats://a:4222,b:4222``). A comma inside a password (``nats://u:p,w@host``) does not
    start a server: only a piece that is itself a URL or a bare ``host[:port]`` does."""
    servers: list[str] = []
    for piece in url.strip().strip(",").split(","):
        if servers and not _NEXT_SERVER.match(piece):
            servers[-1] += "," + piece
        else:
            servers.append(piece)
    return [server.strip() for server in servers]


async def connect(url: str, **options: Any) -> NATS:
    options.setdefault("error_cb", report)
    nc = await nats.connect(server_list(url), **options)
    await nc.flush()
    return nc


def redact_url(url: str) -> str:
    """``url`` without the password or token it may carry (``nats://user:***@host:4222``),
    for anything written to a log, a span or a terminal; each server of a list so.

    Everything before the last ``@`` after the scheme is the user information, however
    odd its characters: a password holding ``/`` or ``,`` is hidden all the same."""
    servers = server_list(url)
    if len(servers) > 1:
        return ",".join(redact_url(server) for server in servers)
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return url
    user, colon, _secret = userinfo.partition(":")
    # A lone userinfo is a token (nats://token@host): hidden; a user keeps its name.
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{shown}@{hostport}"


def _reveal(secret: str | SecretStr | None) -> str | None:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def connect_options(
    *,
    creds: str | Path | None = None,
    user: str | None = None,
    password: str | SecretStr | None = None,
    token: str | SecretStr | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    inbox_prefix: str | None = None,
) -> dict[str, Any]:
    """nats-py's ``connect`` options for these credentials and this TLS setup; unset
    values add nothing, so the same call serves an open local server.

    ``creds`` is a credentials file (JWT and NKey seed, decentralised auth); ``user`` and
    ``password`` or ``token`` are the static users of ``infra/nats/auth.conf``.
    ``tls_ca`` verifies the server (the system's CAs when only a client certificate is
    given); ``tls_cert`` and ``tls_key`` are a client certificate for mutual TLS.
    ``inbox_prefix`` (``_INBOX.client``) is where replies to this connection's requests
    arrive: a user allowed to subscribe only below it cannot read anyone else's replies.
    """
    if tls_key and not tls_cert:
        raise ValueError("a TLS client key needs its certificate (tls_cert)")
    options: dict[str, Any] = {}
    if creds:
        options["user_credentials"] = str(creds)
    if user:
        options["user"] = user
    if revealed := _reveal(password):
        options["password"] = revealed
    if revealed := _reveal(token):
        options["token"] = revealed
    if tls_ca or tls_cert:
        context = ssl.create_default_context(cafile=str(tls_ca) if tls_ca else None)
        if tls_cert:
            context.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
        options["tls"] = context
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    return options


class NatsUnreachable(Exception):
    """NATS refused this connection, or is not there; the message says which."""


def refused_for_good(exc: BaseException) -> bool:
    """A refusal that trying again will not change: the server's certificate is not
    trusted (or TLS fails otherwise), or the credentials are wrong."""
    return isinstance(exc, ssl.SSLError | AuthorizationError) or (
        "authorization violation" in str(exc).lower()
    )


async def connect_checked(url: str, *, wait: bool, **options: Any) -> NATS:
    """Connect with ``options`` (reconnects and all), after one quiet attempt without
    reconnects that fails fast and says why.

    nats-py retries even the first connection when reconnecting is allowed, for ever
    with ``max_reconnect_attempts=-1``: a wrong password or an untrusted certificate
    would then be a service that hangs at start, logging the same error twice a second.
    The first attempt settles that. When it fails, :class:`NatsUnreachable` is raised
    with the reason, unless ``wait`` is set and the reason may pass (nobody listening
    yet: a service started before its server); then the connection is retried as
    ``options`` say. The message names the server without its credentials.
    """
    seen: list[BaseException] = []

    async def remember(exc: BaseException) -> None:
        seen.append(exc)

    # The caller's callbacks are for the connection it gets, not for this attempt (whose
    # close would otherwise read as a disconnection).
    quiet = {key: value for key, value in options.items() if not key.endswith("_cb")} | {
        "error_cb": remember,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,  # 0 would mean "for ever" to nats-py
        "reconnect_time_wait": 0.1,
    }
    try:
        probe = await connect(url, **quiet)
    except Exception as exc:
        reason = seen[-1] if seen else exc
        if not wait or refused_for_good(reason):
            raise NatsUnreachable(f"cannot connect to {redact_url(url)}: {reason}") from None
        logger.warning("NATS at {} not reachable yet ({}); retrying", redact_url(url), reason)
    else:
        await probe.close()
    return await connect(url, **options)


async def request_served(
    nc: NATS,
    subject: str,
    payload: bytes,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    attempts: int = 20,
) -> Msg:
    """``nc.request``, sent again after a round trip while nats-server answers "no
    responders", at most ``attempts`` times in all: for a responder known to have
    subscribed. A subject nobody serves still fails, with ``NoRespondersError``."""
    for _ in range(attempts - 1):
        try:
            return await nc.request(subject, payload, timeout=timeout, headers=headers)
        except NoRespondersError:
            await nc.flush()
    return await nc.request(subject, payload, timeout=timeout, headers=headers)
