"""The notifications service: a FastStream app built on :mod:`ordermesh.kit`.

It follows ``order.confirmed`` and ``order.cancelled`` with a durable consumer named
``notifications`` and writes one line per notification to its outbox
(:mod:`examples.notifications.outbox`).

``broker`` and ``app`` below are what FastStream's tools look for:

    faststream docs gen examples.notifications.app:app --out notifications.asyncapi.json

Tests, and anyone embedding it, build their own with :func:`create`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from faststream import FastStream
from faststream.nats import DeliverPolicy, NatsBroker
from faststream.specification import AsyncAPI
from loguru import logger
from opentelemetry.sdk.trace import TracerProvider

from domain.metadata import MessageContext
from domain.order import OrderCancelled, OrderConfirmed
from examples.notifications.outbox import Notification, Outbox
from ordermesh import __version__
from ordermesh.kit import EventContext, event_subscriber, make_broker

SERVICE = "notifications"
#: The consumer's name in JetStream: it keeps the position across restarts.
DURABLE = "notifications"


def default_outbox(environ: Mapping[str, str] = os.environ) -> Path:
    """``ORDERMESH_NOTIFICATIONS_OUTBOX``, else ``notifications.jsonl`` in ordermesh's
    data directory (``ORDERMESH_DATA_DIR``, ``.ordermesh``)."""
    if path := environ.get("ORDERMESH_NOTIFICATIONS_OUTBOX"):
        return Path(path)
    return Path(environ.get("ORDERMESH_DATA_DIR") or ".ordermesh") / "notifications.jsonl"


def notification_for(event: OrderConfirmed | OrderCancelled, ctx: MessageContext) -> Notification:
    """What the customer is told, and what ties it to the order's flow and trace."""
    match event:
        case OrderConfirmed():
            text = f"Your order {event.order_id} is confirmed."
        case OrderCancelled():
            text = f"Your order {event.order_id} was cancelled ({event.reason})."
    return Notification(
        event_id=ctx.id,
        event_type=event.TYPE,
        order_id=event.order_id,
        text=text,
        correlation_id=ctx.correlation_id,
        trace_id=ctx.trace_id,
    )


@dataclass(frozen=True)
class Notifications:
    """One notifications service: its broker, its app, its outbox."""

    broker: NatsBroker
    app: FastStream
    outbox: Outbox


def create(
    servers: str | Sequence[str] | None = None,
    *,
    outbox: Path | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Notifications:
    """The service, not started: ``await service.app.start()`` (or ``app.run()``).

    ``servers`` defaults to ``ORDERMESH_NATS_URL``; ``outbox`` to :func:`default_outbox`;
    ``tracer_provider`` to one from the ``OTEL_*`` variables (none without an endpoint).
    """
    broker = make_broker(servers, service=SERVICE, tracer_provider=tracer_provider)
    box = Outbox(outbox or default_outbox())

    @event_subscriber(
        broker,
        OrderConfirmed,
        OrderCancelled,
        durable=DURABLE,
        # Created once, on the first start: notify about orders from then on, not about
        # every order EVENTS still holds. Later starts resume where the last one stopped.
        deliver_policy=DeliverPolicy.NEW,
        description="Tells the customer that their order was confirmed or cancelled.",
    )
    async def notify(event: OrderConfirmed | OrderCancelled, ctx: EventContext) -> None:
        notification = notification_for(event, ctx)
        if await box.write(notification):
            logger.info("notified order {}: {}", notification.order_id, notification.text)
        else:
            logger.info("{} {} was delivered again; notified already", event.TYPE, ctx.id)

    async def opened() -> None:
        await box.open()
        logger.info("writing notifications to {}", box.path)

    app = FastStream(
        broker,
        logger=logging.getLogger(f"ordermesh.kit.{SERVICE}"),
        on_startup=[opened],
        specification=AsyncAPI(
            broker,
            title="ordermesh notifications",
            version=__version__,
            description="An extension of ordermesh built on ordermesh.kit: one notification"
            " per confirmed or cancelled order.",
        ),
    )
    return Notifications(broker, app, box)


_service = create()
broker = _service.broker
app = _service.app
