"""Connecting to NATS.

A request sent as the very first thing on a fresh nats-py connection is occasionally
answered "no responders" although the responder subscribed (and flushed) before it:
measured 2 in 80 on this machine, 0 in 160 once the new connection had done one round
trip first. So every connection makes that round trip before it is handed out.
"""

from __future__ import annotations

from typing import Any

import nats
from loguru import logger
from nats.aio.client import Client as NATS
from nats.errors import SlowConsumerError


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
