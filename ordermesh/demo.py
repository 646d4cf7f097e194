"""The workload behind ``ordermesh demo``: a seeded catalogue and a steady mix of orders.

It is a client like any other: plain NATS request/reply with CloudEvents headers, and a
core subscription to the saga's end transitions. Nothing here knows the services' code,
so the demo also shows that the protocol alone is enough to drive the system.

Outcomes depend on the seed only, never on timing: every product's stock covers all the
ordinary orders that name it, and the orders meant to run out ask for more than the
product ever had. Two runs with the same seed therefore end the same way, whichever of
two racing orders happens to reserve first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from broker.cloudevents import encode_context
from broker.connection import connect
from broker.subjects import command_subject, event_subject
from domain.metadata import MessageContext
from ordermesh.bench.measure import percentile
from ordermesh.outgoing import child_traceparent

SOURCE = "cli.demo"
PLACE = "order.place"
CREATE_PRODUCT = "product.create"
COMPLETED = event_subject("order_fulfillment.completed")
FAILED = event_subject("order_fulfillment.failed")

START_SERVICES = "start the services first, e.g. `ordermesh up` in another terminal"


class Mix(StrEnum):
    """Which paths the orders take."""

    REALISTIC = "realistic"
    HAPPY = "happy"


class Scenario(StrEnum):
    """What an order is built to exercise; each maps to one deterministic saga path."""

    CARD = "card"
    DECLINED = "declined-card"
    FLAKY = "flaky-card"
    SLOW = "slow-card"
    RESTRICTED = "restricted-area"
    OVERSIZED = "insufficient-stock"


#: Mostly orders that go through, with each failure path often enough to be seen in a
#: few hundred orders. ``slow-card`` is left out: it holds the saga for the payment
#: step's whole timeout (60 s by default), which would dominate a demo's run time.
MIXES: Mapping[Mix, tuple[tuple[Scenario, float], ...]] = {
    Mix.REALISTIC: (
        (Scenario.CARD, 0.72),
        (Scenario.DECLINED, 0.08),
        (Scenario.FLAKY, 0.07),
        (Scenario.RESTRICTED, 0.07),
        (Scenario.OVERSIZED, 0.06),
    ),
    Mix.HAPPY: ((Scenario.CARD, 0.85), (Scenario.FLAKY, 0.15)),
}
SLOW_SHARE = 0.03

COUNTRIES = {
    "DE": "Berlin",
    "FR": "Paris",
    "NL": "Amsterdam",
    "SE": "Stockholm",
    "ES": "Madrid",
    "IT": "Rome",
    "GB": "London",
    "US": "Boston",
}
RESTRICTED_COUNTRY = "XX"
ADJECTIVES = ("Blue", "Compact", "Heavy", "Quiet", "Smart", "Tiny", "Vintage", "Wireless")
NOUNS = ("Widget", "Gadget", "Kettle", "Lamp", "Speaker", "Backpack", "Mug", "Notebook")
CUSTOMERS = 25


class DemoUnavailable(Exception):
    """NATS or the services cannot be reached: nothing was measured."""


@dataclass(frozen=True)
class DemoOptions:
    """``connect_options`` are passed to nats-py as they are (credentials, TLS…), so the
    CLI's connection options apply without this module knowing about them."""

    nats_url: str
    orders: int = 200
    rate: float = 20.0
    concurrency: int = 16
    seed: int = 1
    products: int = 8
    mix: Mix = Mix.REALISTIC
    slow: bool = False
    wait: float = 90.0
    connect_options: Mapping[str, Any] = field(default_factory=dict)
    #: The run id in every product and order id; a fresh random one unless given.
    run: str | None = None
    #: How long one command may take to be answered before it counts as unanswered.
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("orders", "concurrency", "products"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.rate <= 0:
            raise ValueError("rate must be above 0")
        if self.wait < 0 or self.request_timeout <= 0:
            raise ValueError("wait must be 0 or more, request_timeout above 0")


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    name: str
    price: Decimal
    stock: int

    def body(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "name": self.name,
            "price": f"{self.price:.2f}",
            "stock": self.stock,
        }


@dataclass(frozen=True, slots=True)
class Line:
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    order_id: str
    customer_id: str
    lines: tuple[Line, ...]
    payment_method: str
    country: str
    scenario: Scenario

    def body(self) -> dict[str, Any]:
        address = {"country": self.country}
        if self.country in COUNTRIES:
            address["city"] = COUNTRIES[self.country]
        return {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "items": [{"product_id": ln.product_id, "quantity": ln.quantity} for ln in self.lines],
            "payment_method": self.payment_method,
            "shipping_address": address,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    run: str
    products: tuple[Product, ...]
    orders: tuple[PlannedOrder, ...]


def new_run_id() -> str:
    """Random, not seeded: two demos with the same seed must not share ids."""
    return secrets.token_hex(3)


def product_id(run: str, index: int) -> str:
    return f"demo-{run}-p{index}"


def order_id(run: str, index: int) -> str:
    return f"demo-{run}-o{index}"


def make_plan(options: DemoOptions, run: str) -> Plan:
    """The catalogue and every order, drawn from ``options.seed`` alone.

    Stock is sized after the orders are drawn, so that it covers all the ordinary demand
    for each product; a quarter of the products get almost no headroom (scarce), and the
    orders meant to fail on stock ask one of those for more than it ever had.
    """
    rng = random.Random(options.seed)
    n = options.products
    names = [f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}" for _ in range(n)]
    prices = [Decimal(rng.randint(199, 12_999)).scaleb(-2) for _ in range(n)]
    scarce = list(range(n - max(1, n // 4), n))

    scenarios, weights = zip(*MIXES[options.mix], strict=True)
    choices = [*scenarios, Scenario.SLOW] if options.slow else list(scenarios)
    shares = [*weights, SLOW_SHARE] if options.slow else list(weights)
    picked = rng.choices(choices, shares, k=options.orders)
    if options.slow and Scenario.SLOW not in picked:
        picked[options.orders // 2] = Scenario.SLOW  # "a few" must mean at least one

    demand = [0] * n
    drafts: list[tuple[Scenario, str, str, list[tuple[int, int]]]] = []
    for scenario in picked:
        customer = f"demo-{run}-c{rng.randint(1, CUSTOMERS)}"
        country = (
            RESTRICTED_COUNTRY if scenario is Scenario.RESTRICTED else rng.choice(list(COUNTRIES))
        )
        if scenario is Scenario.OVERSIZED:
            lines = [(rng.choice(scarce), 0)]  # the quantity is known once stock is
        else:
            count = min(rng.choice((1, 1, 1, 2, 2, 3)), n)
            lines = [(i, rng.randint(1, 3)) for i in sorted(rng.sample(range(n), count))]
            for i, quantity in lines:
                demand[i] += quantity
        drafts.append((scenario, customer, country, lines))

    stock = [
        demand[i] + (rng.randint(0, 2) if i in scarce else rng.randint(20, 60)) for i in range(n)
    ]
    products = tuple(
        Product(product_id(run, i + 1), names[i], prices[i], stock[i]) for i in range(n)
    )
    orders = []
    for index, (scenario, customer, country, lines) in enumerate(drafts, start=1):
        sized = [(i, q or stock[i] + rng.randint(1, 5)) for i, q in lines]
        orders.append(
            PlannedOrder(
                order_id=order_id(run, index),
                customer_id=customer,
                lines=tuple(Line(products[i].product_id, q) for i, q in sized),
                payment_method=_payment_method(scenario),
                country=country,
                scenario=scenario,
            )
        )
    return Plan(run, products, tuple(orders))


def _payment_method(scenario: Scenario) -> str:
    if scenario in (Scenario.DECLINED, Scenario.FLAKY, Scenario.SLOW):
        return scenario.value
    return "card"


def headers_for(message_type: str, correlation_id: str) -> dict[str, str]:
    """Each request starts its own trace, so every order can be followed on its own."""
    ctx = MessageContext(
        id=secrets.token_hex(16),
        type=message_type,
        source=SOURCE,
        correlation_id=correlation_id,
        traceparent=child_traceparent(None),
    )
    return encode_context(ctx)


# -- the summary ------------------------------------------------------------------------

CONFIRMED = "confirmed"
PENDING = "pending"


def _outcome_rank(outcome: str) -> tuple[int, str]:
    kind = outcome.split(":", 1)[0]
    order = {CONFIRMED: 0, "cancelled": 1, "rejected": 2, PENDING: 3}
    return order.get(kind, 4), outcome


@dataclass(frozen=True)
class Summary:
    """``rate`` counts one period per order sent, so a perfectly paced run reports
    exactly the requested rate; ``seconds`` runs from the first order to the last
    outcome (or the end of the wait)."""

    run: str
    orders: int
    outcomes: dict[str, int]
    latency_ms: dict[str, float | None]
    seconds: float
    rate: float

    @property
    def pending(self) -> int:
        return self.outcomes.get(PENDING, 0)

    @property
    def ended(self) -> int:
        """Orders whose saga reported an end (so the saga service is running)."""
        return sum(
            n for k, n in self.outcomes.items() if k == CONFIRMED or k.startswith("cancelled:")
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "outcomes": self.outcomes,
            "latency_ms": self.latency_ms,
            "seconds": self.seconds,
            "rate": self.rate,
            "run": self.run,
        }


def summarise(
    plan: Plan,
    outcomes: Mapping[str, str],
    latencies_s: list[float],
    seconds: float,
    rate: float,
) -> Summary:
    counts = Counter(outcomes.get(o.order_id, PENDING) for o in plan.orders)
    values = sorted(latencies_s)
    latency: dict[str, float | None] = {
        f"p{p}": round(percentile(values, p) * 1000, 3) if values else None for p in (50, 95, 99)
    }
    return Summary(
        run=plan.run,
        orders=len(plan.orders),
        outcomes={k: counts[k] for k in sorted(counts, key=_outcome_rank)},
        latency_ms=latency,
        seconds=round(seconds, 3),
        rate=round(rate, 3),
    )


# -- running it -------------------------------------------------------------------------

#: Called with (orders sent, orders finished) whenever either changes.
ProgressHook = Callable[[int, int], None]


class _Outcomes:
    """Each order's first outcome, and an event set once every order has one."""

    def __init__(self, order_ids: set[str], on_change: Callable[[], None]) -> None:
        self._expected = order_ids
        self._on_change = on_change
        self.by_order: dict[str, str] = {}
        self.all_in = asyncio.Event()

    def record(self, order_id: str | None, outcome: str) -> None:
        if order_id not in self._expected or order_id in self.by_order:
            return  # another run's order, or a duplicate delivery
        self.by_order[order_id] = outcome
        if len(self.by_order) == len(self._expected):
            self.all_in.set()
        self._on_change()

    async def on_saga_end(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        subject_id = (msg.headers or {}).get("ce-subject")
        order = subject_id or body.get("order_id") or body.get("saga_id")
        if msg.subject == COMPLETED:
            self.record(order, CONFIRMED)
        else:
            self.record(order, f"cancelled:{body.get('code') or 'unknown'}")


async def _connect(options: DemoOptions) -> NATS:
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        # Instead of nats-py's default: a traceback per failed attempt.
        errors.append(exc)

    try:
        return await connect(options.nats_url, **{**options.connect_options, "error_cb": remember})
    except (NatsError, OSError, TimeoutError) as exc:
        cause = errors[-1] if errors else exc
        raise DemoUnavailable(
            f"cannot reach NATS at {options.nats_url} ({str(cause) or type(cause).__name__}); "
            f"{START_SERVICES}, or point --server at a running NATS"
        ) from exc


async def _seed(nc: NATS, plan: Plan, options: DemoOptions) -> None:
    subject = command_subject(CREATE_PRODUCT)

    async def create(product: Product) -> None:
        try:
            msg = await nc.request(
                subject,
                json.dumps(product.body()).encode(),
                timeout=options.request_timeout,
                headers=headers_for(CREATE_PRODUCT, f"demo-{plan.run}"),
            )
        except NoRespondersError:
            raise DemoUnavailable(
                f"no service answers {subject} on {options.nats_url}; {START_SERVICES}"
            ) from None
        except (NatsTimeoutError, TimeoutError):
            raise DemoUnavailable(
                f"{subject} got no reply within {options.request_timeout:g} s on "
                f"{options.nats_url}; {START_SERVICES}"
            ) from None
        reply = json.loads(msg.data)
        if not reply.get("ok"):
            raise DemoUnavailable(f"seeding {product.product_id} was refused: {reply.get('error')}")

    await asyncio.gather(*(create(p) for p in plan.products))


async def run_demo(options: DemoOptions, progress: ProgressHook | None = None) -> Summary:
    """Seed, place every order on schedule, wait for their outcomes, and summarise.

    Raises :class:`DemoUnavailable` when NATS or the command service cannot be reached.
    """
    plan = make_plan(options, options.run or new_run_id())
    nc = await _connect(options)
    try:
        await _seed(nc, plan, options)
        return await _drive(nc, plan, options, progress or (lambda sent, finished: None))
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()


async def _drive(nc: NATS, plan: Plan, options: DemoOptions, progress: ProgressHook) -> Summary:
    """The open loop: order i+1 is due one period after order i was due, whatever the
    replies do, so latency is measured under the offered load. When all ``concurrency``
    slots are busy the order waits, and the schedule restarts from when it went out
    rather than sending a burst to catch up: the rate never exceeds ``options.rate``.
    """
    sent = 0
    outcomes = _Outcomes({o.order_id for o in plan.orders}, lambda: progress(sent, finished()))

    def finished() -> int:
        return len(outcomes.by_order)

    # Core subscriptions, made before any order exists, so no end can be missed.
    subs = [await nc.subscribe(s, cb=outcomes.on_saga_end) for s in (COMPLETED, FAILED)]
    await nc.flush()

    latencies: list[float] = []
    slots = asyncio.Semaphore(options.concurrency)
    subject = command_subject(PLACE)

    async def place(order: PlannedOrder) -> None:
        try:
            payload = json.dumps(order.body()).encode()
            headers = headers_for(PLACE, secrets.token_hex(16))
            started = time.perf_counter()
            try:
                msg = await nc.request(
                    subject, payload, timeout=options.request_timeout, headers=headers
                )
            except NoRespondersError:
                outcomes.record(order.order_id, "rejected:no_responders")
                return
            except (NatsError, TimeoutError):
                return  # unanswered: it may still have been placed; its saga will tell
            latencies.append(time.perf_counter() - started)
            try:
                reply = json.loads(msg.data)
            except ValueError:
                outcomes.record(order.order_id, "rejected:malformed_reply")
                return
            if not reply.get("ok"):
                code = (reply.get("error") or {}).get("code") or "unknown"
                outcomes.record(order.order_id, f"rejected:{code}")
        finally:
            slots.release()

    loop = asyncio.get_running_loop()
    period = 1.0 / options.rate
    tasks: list[asyncio.Task[None]] = []
    start = due = loop.time()
    last_sent = start
    try:
        for order in plan.orders:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            last_sent = loop.time()
            tasks.append(asyncio.create_task(place(order)))
            sent += 1
            progress(sent, finished())
            due = (due if last_sent - due < period else last_sent) + period
        await asyncio.gather(*tasks)
        remaining = last_sent + options.wait - loop.time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await outcomes.all_in.wait()
    finally:
        for task in tasks:
            task.cancel()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    end = loop.time()
    rate = sent / (last_sent - start + period)
    return summarise(plan, outcomes.by_order, latencies, end - start, rate)
