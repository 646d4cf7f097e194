"""The load: a seeded plan of orders, placed by clients that retry with the same ``ce-id``.

What each order is built to do decides how it should end, whatever the timing: stock
covers every ordinary order, so only the orders built to fail are cancelled (a declined
card, a country the carrier refuses, more than a scarce product ever had). An order that
should be confirmed and was cancelled anyway (a saga timeout during a fault) is then a
finding, not noise.

A client resends a request that got no answer (timeout, no responders, a dropped
connection) or a transient refusal (``RETRYABLE``) with the same ``ce-id`` and the same
body, until it is acknowledged (``ok``, or a definitive refusal) or its deadline passes:
the command side must make that resend harmless. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from broker.cloudevents import encode_context
from domain.metadata import MessageContext

SOURCE = "tests.chaos"

#: Refusals that say "not now" rather than "no": the client sends the same request again.
RETRYABLE = frozenset(
    {
        "unavailable",
        "store_unavailable",
        "concurrency_conflict",
        "internal_error",
        "payment_unavailable",
    }
)
CONFIRMED = "confirmed"


class Scenario(StrEnum):
    CARD = "card"
    FLAKY = "flaky-card"
    DECLINED = "declined-card"
    RESTRICTED = "restricted-area"
    OVERSIZED = "insufficient-stock"


#: How each scenario must end: confirmed, or cancelled with this reason.
EXPECTED = {
    Scenario.CARD: CONFIRMED,
    Scenario.FLAKY: CONFIRMED,
    Scenario.DECLINED: "payment_declined",
    Scenario.RESTRICTED: "restricted_area",
    Scenario.OVERSIZED: "insufficient_stock",
}

MIX = (
    (Scenario.CARD, 0.62),
    (Scenario.FLAKY, 0.10),
    (Scenario.DECLINED, 0.12),
    (Scenario.RESTRICTED, 0.08),
    (Scenario.OVERSIZED, 0.08),
)
COUNTRIES = ("DE", "FR", "NL", "SE")
SCARCE_STOCK = 5


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    order_id: str
    ce_id: str
    scenario: Scenario
    body: dict[str, Any]

    @property
    def expected(self) -> str:
        return EXPECTED[self.scenario]


@dataclass(frozen=True, slots=True)
class Plan:
    products: dict[str, int]
    """Product id → initial stock."""
    orders: tuple[PlannedOrder, ...]

    def by_id(self) -> dict[str, PlannedOrder]:
        return {o.order_id: o for o in self.orders}


def make_plan(orders: int, *, seed: int = 1, products: int = 4) -> Plan:
    """``products`` ordinary products with stock for all their demand plus headroom, and
    one scarce product that the oversized orders ask for more of than it ever had (after
    a line of an ordinary product, so a reservation is taken and must be given back)."""
    rng = random.Random(seed)
    ids = [f"p{i}" for i in range(1, products + 1)]
    scarce = "p-scarce"
    scenarios = [scenario for scenario, _ in MIX]
    weights = [weight for _, weight in MIX]
    demand: Counter[str] = Counter()
    planned = []
    for i in range(orders):
        scenario = rng.choices(scenarios, weights)[0]
        lines = [(p, rng.randint(1, 3)) for p in sorted(rng.sample(ids, rng.randint(1, 2)))]
        for product, quantity in lines:
            demand[product] += quantity
        if scenario is Scenario.OVERSIZED:
            lines.append((scarce, SCARCE_STOCK + rng.randint(1, 4)))
        country = "XX" if scenario is Scenario.RESTRICTED else rng.choice(COUNTRIES)
        method = scenario.value if scenario in (Scenario.FLAKY, Scenario.DECLINED) else "card"
        order_id = f"o{i}"
        body = {
            "order_id": order_id,
            "customer_id": f"c{rng.randint(1, 20)}",
            "items": [{"product_id": p, "quantity": q} for p, q in lines],
            "payment_method": method,
            "shipping_address": {"country": country, "city": "Somewhere"},
        }
        planned.append(PlannedOrder(order_id, f"place-{order_id}", scenario, body))
    stock = {p: demand[p] + 10 for p in ids} | {scarce: SCARCE_STOCK}
    return Plan(stock, tuple(planned))


def headers(ce_id: str, message_type: str) -> dict[str, str]:
    ctx = MessageContext(id=ce_id, type=message_type, source=SOURCE, correlation_id=ce_id)
    return encode_context(ctx)


class SentCount:
    """How many orders the load has sent (its ``on_sent``), and a wait until a given
    number has gone: faults are timed by the share of the load sent, not by the clock."""

    def __init__(self) -> None:
        self.sent = 0
        self._moved = asyncio.Event()

    def __call__(self, sent: int) -> None:
        self.sent = sent
        self._moved.set()

    async def reach(self, count: int) -> None:
        while self.sent < count:
            self._moved.clear()
            await self._moved.wait()


@dataclass
class Acknowledgement:
    """One request's fate: how it was answered, after how many attempts."""

    attempts: int = 0
    #: ``ok``, ``refused:<code>``, or ``unacknowledged`` (gave up at the deadline).
    status: str = "unacknowledged"
    reply: dict[str, Any] | None = None
    #: What each attempt got: ok, timeout, no_responders, disconnected, refused:<code>.
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def acknowledged(self) -> bool:
        return self.status != "unacknowledged"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ClientPolicy:
    request_timeout: float = 3.0
    #: Per request, from its first attempt.
    deadline: float = 90.0
    max_attempts: int = 300
    backoff: float = 0.05
    backoff_max: float = 1.0


async def send_until_acknowledged(
    nc: NATS,
    subject: str,
    body: dict[str, Any],
    ce_id: str,
    policy: ClientPolicy,
) -> Acknowledgement:
    """Send, and resend the very same request (same ``ce-id``, same body) until it is
    acknowledged, ``policy.max_attempts`` are spent or ``policy.deadline`` passes."""
    ack = Acknowledgement()
    payload = json.dumps(body).encode()
    message_type = subject.removeprefix("commands.")
    hdrs = headers(ce_id, message_type)
    deadline = time.monotonic() + policy.deadline
    delay = policy.backoff
    while ack.attempts < policy.max_attempts:
        ack.attempts += 1
        try:
            msg = await nc.request(subject, payload, timeout=policy.request_timeout, headers=hdrs)
        except NoRespondersError:
            kind = "no_responders"
        except (NatsTimeoutError, TimeoutError):
            kind = "timeout"
        except (NatsError, OSError):
            kind = "disconnected"
        else:
            reply = json.loads(msg.data)
            if reply.get("ok"):
                ack.outcomes["ok"] += 1
                ack.status, ack.reply = "ok", reply
                return ack
            code = (reply.get("error") or {}).get("code") or "unknown"
            kind = f"refused:{code}"
            if code not in RETRYABLE:
                ack.outcomes[kind] += 1
                ack.status, ack.reply = kind, reply
                return ack
        ack.outcomes[kind] += 1
        if time.monotonic() + delay > deadline:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, policy.backoff_max)
    return ack


@dataclass
class LoadResult:
    acks: dict[str, Acknowledgement]
    seconds: float

    def count(self, status: str) -> int:
        return sum(1 for a in self.acks.values() if a.status == status)

    @property
    def acknowledged(self) -> int:
        return sum(1 for a in self.acks.values() if a.acknowledged)

    def attempt_outcomes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for ack in self.acks.values():
            total.update(ack.outcomes)
        return total

    def statuses(self) -> Counter[str]:
        return Counter(a.status for a in self.acks.values())

    def __add__(self, other: LoadResult) -> LoadResult:
        return LoadResult(self.acks | other.acks, self.seconds + other.seconds)


async def seed_products(nc: NATS, plan: Plan, policy: ClientPolicy) -> None:
    for product_id, stock in plan.products.items():
        body = {"product_id": product_id, "name": product_id, "price": "9.90", "stock": stock}
        ack = await send_until_acknowledged(
            nc, "commands.product.create", body, f"create-{product_id}", policy
        )
        assert ack.ok, (product_id, ack)


async def place_orders(
    nc: NATS,
    orders: Sequence[PlannedOrder],
    *,
    policy: ClientPolicy,
    concurrency: int = 32,
    rate: float = 40.0,
    on_sent: Callable[[int], None] | None = None,
) -> LoadResult:
    """Place ``orders`` at most ``rate`` a second, ``concurrency`` in flight; each is
    retried until acknowledged (:func:`send_until_acknowledged`). ``on_sent`` is told how
    many orders went out so far (the fault injector keys on it)."""
    slots = asyncio.Semaphore(concurrency)
    acks: dict[str, Acknowledgement] = {}
    started = time.monotonic()
    period = 1.0 / rate

    async def one(order: PlannedOrder) -> None:
        try:
            acks[order.order_id] = await send_until_acknowledged(
                nc, "commands.order.place", order.body, order.ce_id, policy
            )
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    try:
        for index, order in enumerate(orders):
            due = started + index * period
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # the schedule's pace
            await slots.acquire()
            tasks.append(asyncio.create_task(one(order)))
            if on_sent is not None:
                on_sent(index + 1)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return LoadResult(acks, time.monotonic() - started)
