"""Messages a consumer cannot use go to the ``DLQ`` stream instead of blocking it.

A poison message (not ours, or an event a projection cannot apply however often it is
delivered) would otherwise stop a projection for good: it fails, restarts from its
checkpoint and fails again. Set aside on ``dlq.<original subject>`` with the reason, it
can be inspected and, once the cause is fixed, applied again (``ordermesh dlq``).

The consumer also notes each event it sets aside in its own database, in the transaction
that moves its checkpoint past it (``projections.base.set_aside``): a retry applies only
an event noted there and not applied since, which keeps it exactly-once although it
bypasses the position check.
"""

from __future__ import annotations

from datetime import UTC, datetime

from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.subjects import DLQ_STREAM, dlq_subject, subject_label
from domain.catalog import EVENTS
from telemetry.metrics import dlq_messages

#: JetStream publish expectations (``Nats-Expected-Last-Msg-Id`` and the like).
EXPECTATION_PREFIX = "Nats-Expected-"
H_REASON = "ordermesh-dlq-reason"
H_CONSUMER = "ordermesh-dlq-consumer"
H_SEQUENCE = "ordermesh-dlq-sequence"
H_DELIVERIES = "ordermesh-dlq-deliveries"
H_SUBJECT = "ordermesh-dlq-subject"
H_TIME = "ordermesh-dlq-time"

#: A header value is one line; an exception's text (pydantic's) often is not.
MAX_REASON = 1000


def describe(exc: BaseException) -> str:
    """``ValidationError: 1 validation error for …``: the type says which kind of bug."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def dead_letter(
    js: JetStreamContext, msg: Msg, consumer: str, reason: str, *, deliveries: int = 1
) -> int:
    """Publish a copy of ``msg`` to ``DLQ``; returns its ``DLQ`` sequence (the first copy's
    when JetStream drops this one as a duplicate)."""
    # The relay's publish expectations travel with each event in EVENTS; copied onto the
    # DLQ publish, JetStream would check them against DLQ and refuse it.
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith(EXPECTATION_PREFIX)}
    try:
        sequence = msg.metadata.sequence.stream
    except Exception:  # not a JetStream message
        sequence = 0
    headers.update(
        {
            H_REASON: " ".join(reason.split())[:MAX_REASON],
            H_CONSUMER: consumer,
            H_SEQUENCE: str(sequence),
            H_DELIVERIES: str(deliveries),
            H_SUBJECT: msg.subject,
            H_TIME: datetime.now(UTC).isoformat(),
            # One copy per consumer and message, however often it is retried.
            "Nats-Msg-Id": f"{consumer}:{msg.subject}:{sequence}",
        }
    )
    ack = await js.publish(dlq_subject(msg.subject), msg.data, headers=headers, stream=DLQ_STREAM)
    dlq_messages.labels(subject_label(msg.subject, EVENTS)).inc()
    logger.warning(
        "{} set {} aside in {} (deliveries: {}): {}",
        consumer,
        msg.subject,
        DLQ_STREAM,
        deliveries,
        reason,
    )
    return int(ack.seq)
