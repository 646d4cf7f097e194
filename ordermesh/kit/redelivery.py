"""When an event is tried again after its handler failed.

FastStream's own "nack on error" asks JetStream for the message again at once, so a
handler that fails because something it needs is down (a mail server, a database) would
be called again within milliseconds, over and over. Here a failed delivery is negatively
acknowledged with a delay that doubles with each delivery, up to a ceiling: the event is
kept, not lost, and retried at a pace a recovering dependency can bear. Meanwhile the
consumer goes on with later events (JetStream allows many unacknowledged messages), so
one bad event slows nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats.message import NatsMessage
from nats.errors import NotJSMessageError


@dataclass(frozen=True, slots=True)
class Redelivery:
    """``first`` seconds after the first failed delivery, doubling, at most ``longest``."""

    first: float = 1.0
    longest: float = 60.0

    def __post_init__(self) -> None:
        if self.first <= 0 or self.longest < self.first:
            raise ValueError("need 0 < first <= longest")

    def delay(self, deliveries: int) -> float:
        """The wait before the next delivery, after ``deliveries`` deliveries failed."""
        exponent = min(max(deliveries, 1) - 1, 32)  # 2**32 s is far past any ceiling
        return min(self.first * 2.0**exponent, self.longest)


def deliveries_of(message: NatsMessage) -> int | None:
    """How often JetStream has delivered this message, this time included; None for a
    message that did not come from JetStream (FastStream's test broker)."""
    try:
        return int(message.raw_message.metadata.num_delivered)
    except NotJSMessageError:
        return None


async def redeliver_later(message: NatsMessage, policy: Redelivery) -> None:
    """Ask JetStream for this message again after the policy's delay.

    FastStream's acknowledgement, which runs after this, sees the message answered and
    sends nothing more.
    """
    deliveries = deliveries_of(message)
    if deliveries is None:
        return
    await message.nack(delay=policy.delay(deliveries))
