"""The simulated partners' rules: which payment is approved, which address is refused.

Each rule exists so a test (or a demo) can drive one path of the saga for real:

- payment method ``declined-card``: declined (``payment_declined``);
- ``slow-card``: the gateway never answers, so the charge times out;
- ``flaky-card``: fails transiently twice per payment (``payment_unavailable``), then
  succeeds; the count is in the gateway's ledger, so a restart does not reset it;
- shipping country ``XX``: the carrier refuses (``restricted_area``);
- a failure rate: that share of other card payments is declined, chosen by a hash of the
  seed and the order id, so the same order always gets the same answer.
"""

from __future__ import annotations

import hashlib

DECLINED_CARD = "declined-card"
SLOW_CARD = "slow-card"
FLAKY_CARD = "flaky-card"
FLAKY_FAILURES = 2

#: Countries the carrier will not deliver to (``XX`` is the documented test case).
RESTRICTED_COUNTRIES = frozenset({"XX"})
RESTRICTED_AREA = "restricted_area"
DECLINED = "payment_declined"


def unlucky(order_id: str, *, failure_rate: float, seed: int) -> bool:
    """Whether the failure rate declines this order's card: the same answer every time."""
    if failure_rate <= 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{order_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < failure_rate


def charge_id(payment_id: str) -> str:
    return f"ch-{payment_id}"


def tracking_number(order_id: str) -> str:
    return f"trk-{order_id}"
