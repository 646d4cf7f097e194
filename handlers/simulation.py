"""Deterministic stand-ins for the payment provider and the carrier.

Each rule exists so a test (or a demo) can drive one path of the saga for real:

- payment method ``declined-card``: declined (``payment_declined``);
- ``slow-card``: the provider never answers, so the service sends no reply (timeout);
- ``flaky-card``: fails transiently twice per order (``payment_unavailable``), then succeeds;
- shipping country ``XX``: the carrier refuses (``restricted_area``, see
  :data:`domain.shipment.RESTRICTED_COUNTRIES`);
- ``ORDERMESH_SIM_FAILURE_RATE``: that share of other card payments is declined, chosen
  by a hash of the seed and the order id, so the same order always gets the same answer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from domain.errors import PaymentUnavailable, Unresponsive

DECLINED_CARD = "declined-card"
SLOW_CARD = "slow-card"
FLAKY_CARD = "flaky-card"
FLAKY_FAILURES = 2

_MEMORY = 10_000


class PaymentProvider:
    def __init__(self, *, failure_rate: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be within [0, 1]")
        self.failure_rate = failure_rate
        self.seed = seed
        self._flaky: OrderedDict[str, int] = OrderedDict()

    def authorize(self, order_id: str, method: str) -> bool:
        """True when the charge is approved; raises for the unanswered and transient cases."""
        if method == SLOW_CARD:
            raise Unresponsive(f"payment provider does not answer for order {order_id!r}")
        if method == DECLINED_CARD:
            return False
        if method == FLAKY_CARD:
            failures = self._flaky.get(order_id, 0)
            if failures < FLAKY_FAILURES:
                self._flaky[order_id] = failures + 1
                while len(self._flaky) > _MEMORY:
                    self._flaky.popitem(last=False)
                raise PaymentUnavailable(
                    "payment provider temporarily unavailable",
                    order_id=order_id,
                    attempt=failures + 1,
                )
            return True
        return not self._unlucky(order_id)

    def _unlucky(self, order_id: str) -> bool:
        if self.failure_rate <= 0.0:
            return False
        digest = hashlib.blake2b(f"{self.seed}:{order_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.failure_rate
