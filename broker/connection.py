"""Connecting to NATS.

A request sent as the very first thing on a fresh nats-py connection is occasionally
answered "no responders" although the responder subscribed (and flushed) before it:
measured 2 in 80 on this machine, 0 in 160 once the new connection had done one round
trip first. So every connection makes that round trip before it is handed out. It still
happens now and then (in the bench's raw baseline, once in a test run) to the first
request after a responder subscribed; :func:`request_served` is for callers that know a
responder is there.
"""

from __future__ import annotations

from typing import Any

import nats
from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, SlowConsumerError


async def report(exc: Exception) -> None:
    """nats-py's asynchronous errors, one line each. nats-py's default logs a traceback
    per error, and a full subscription buffer reports every message it drops."""
    if isinstance(exc, SlowConsumerError):
        logger.warning("nats: subscription buffer full on {}; message dropped", exc.subject)
    else:
        logger.warning("nats: {}", exc)


async def connect(url: str, **options: Any) -> NATS:
    options.setdefault("error_cb", report)
    nc = await nats.connect(url, **options)
    await nc.flush()
    return nc


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
