"""Messages a consumer cannot use go to the ``DLQ`` stream instead of blocking it.

A poison message (not ours, or an event that no longer decodes) would otherwise stop a
projection for good: it fails, restarts from its checkpoint and fails again. Set aside
on ``dlq.<original subject>`` with the reason, it can be inspected
(``ordermesh tap --replay dlq.>``), fixed and replayed by hand.
"""

from __future__ import annotations

from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.subjects import DLQ_STREAM, dlq_subject, subject_label
from domain.catalog import EVENTS
from telemetry.metrics import dlq_messages

H_REASON = "ordermesh-dlq-reason"
H_CONSUMER = "ordermesh-dlq-consumer"
H_SEQUENCE = "ordermesh-dlq-sequence"


async def dead_letter(js: JetStreamContext, msg: Msg, consumer: str, reason: str) -> None:
    headers = dict(msg.headers or {})
    try:
        sequence = msg.metadata.sequence.stream
    except Exception:  # not a JetStream message
        sequence = 0
    headers.update(
        {
            H_REASON: reason[:1000],
            H_CONSUMER: consumer,
            H_SEQUENCE: str(sequence),
            # One copy per consumer and message, however often it is retried.
            "Nats-Msg-Id": f"{consumer}:{msg.subject}:{sequence}",
        }
    )
    await js.publish(dlq_subject(msg.subject), msg.data, headers=headers, stream=DLQ_STREAM)
    dlq_messages.labels(subject_label(msg.subject, EVENTS)).inc()
    logger.warning("{} set {} aside in {}: {}", consumer, msg.subject, DLQ_STREAM, reason)
