"""What must hold after a fault, checked against the store, ``EVENTS`` and the read models.

Each check returns findings (one line each) instead of asserting, so one run reports
every broken invariant at once, with numbers, for the result table:

* every acknowledged order reached a terminal state (confirmed or cancelled), in the
  store and in the read model, and ended the way its scenario says;
* no effect twice: per order at most one placement, reservation, charge, refund,
  shipment…, per product and order at most one stock hold and one release;
* stock conserved: per product, initial + restocks - reserved + released is the stock
  the store and the read model show, and only confirmed orders hold any;
* every stored event is in ``EVENTS`` exactly once, in store order;
* the read models equal a rebuild from the store, row by row.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker.cloudevents import H_ID, H_POSITION
from domain.event_store import RecordedEvent
from infra.eventstore.sqlite import SQLiteEventStore
from ordermesh.read_models import open_read_models, rebuild
from projections import all_projections
from tests.chaos.load import CONFIRMED, LoadResult, Plan

PAGE = 5000
READ_IDLE = 5.0
EXAMPLES = 5

#: Per order, streams in which each event type may appear once at most.
ONCE_PER_STREAM = ("order-", "inventory-", "payment-", "shipment-")
SAGA_PREFIX = "saga-order_fulfillment-"
SAGA_ENDS = ("order_fulfillment.completed", "order_fulfillment.failed")


async def read_store(path: Path) -> list[RecordedEvent]:
    store = await SQLiteEventStore.open(path)
    try:
        events: list[RecordedEvent] = []
        while batch := await store.read_all(events[-1].position if events else 0, PAGE):
            events += batch
        return events
    finally:
        await store.close()


def stream_id(stream: str, prefix: str) -> str:
    return stream[len(prefix) :]


def decoded(event: RecordedEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.data)
    return data


# -- orders ---------------------------------------------------------------------------------


def order_fates(events: Iterable[RecordedEvent]) -> dict[str, str]:
    """Order id → ``confirmed``, the cancel reason, or ``pending``, from the order streams."""
    fates: dict[str, str] = {}
    for event in events:
        if not event.stream.startswith("order-"):
            continue
        order_id = stream_id(event.stream, "order-")
        if event.type == "order.placed":
            fates.setdefault(order_id, "pending")
        elif event.type == "order.confirmed":
            fates[order_id] = CONFIRMED
        elif event.type == "order.cancelled":
            fates[order_id] = str(decoded(event).get("reason"))
    return fates


def terminal(fate: str | None) -> bool:
    return fate is not None and fate != "pending"


def duplicate_effects(events: Iterable[RecordedEvent]) -> list[str]:
    """Every effect found more than once, as ``stream: type xN``."""
    per_stream: Counter[tuple[str, str]] = Counter()
    holds: Counter[tuple[str, str, str]] = Counter()
    steps: Counter[tuple[str, str]] = Counter()
    for event in events:
        if event.stream.startswith(ONCE_PER_STREAM):
            per_stream[(event.stream, event.type)] += 1
        elif event.stream.startswith("product-") and event.type in (
            "product.stock_reserved",
            "product.stock_released",
        ):
            holds[(event.stream, str(decoded(event)["order_id"]), event.type)] += 1
        elif event.stream.startswith(SAGA_PREFIX):
            if event.type == "order_fulfillment.started" or event.type in SAGA_ENDS:
                kind = "ended" if event.type in SAGA_ENDS else "started"
                per_stream[(event.stream, kind)] += 1
            elif event.type == "order_fulfillment.step_completed":
                steps[(event.stream, str(decoded(event)["step"]))] += 1
    found = [f"{s}: {t} x{n}" for (s, t), n in per_stream.items() if n > 1]
    found += [f"{s} for {o}: {t} x{n}" for (s, o, t), n in holds.items() if n > 1]
    found += [f"{s}: step {st} completed x{n}" for (s, st), n in steps.items() if n > 1]
    confirmed_and_cancelled = {s for (s, t) in per_stream if t == "order.confirmed"} & {
        s for (s, t) in per_stream if t == "order.cancelled"
    }
    found += [f"{s}: both confirmed and cancelled" for s in sorted(confirmed_and_cancelled)]
    return sorted(found)


def payment_findings(events: Iterable[RecordedEvent], fates: dict[str, str]) -> list[str]:
    """A confirmed order was charged once and kept it; a cancelled one kept nothing."""
    payments: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        if event.stream.startswith("payment-"):
            payments[stream_id(event.stream, "payment-")][event.type] += 1
    found = []
    for order_id, fate in fates.items():
        kinds = payments.get(order_id, Counter())
        charged, refunded = kinds["payment.processed"], kinds["payment.refunded"]
        if fate == CONFIRMED and (charged != 1 or refunded or kinds["payment.voided"]):
            found.append(f"{order_id} confirmed with payments {dict(kinds)}")
        # A void closes a payment never taken (nothing to give back).
        elif terminal(fate) and fate != CONFIRMED and charged != refunded:
            found.append(f"{order_id} cancelled ({fate}) with payments {dict(kinds)}")
    return found


# -- stock ----------------------------------------------------------------------------------


@dataclass
class StockLedger:
    initial: int = 0
    restocked: int = 0
    reserved: int = 0
    released: int = 0
    current: int = 0
    #: Order id → units it holds now (reserved - released).
    held: Counter[str] = field(default_factory=Counter)

    @property
    def balance(self) -> int:
        return self.initial + self.restocked - self.reserved + self.released


def stock_ledgers(events: Iterable[RecordedEvent]) -> dict[str, StockLedger]:
    ledgers: dict[str, StockLedger] = defaultdict(StockLedger)
    for event in events:
        if not event.stream.startswith("product-"):
            continue
        ledger = ledgers[stream_id(event.stream, "product-")]
        data = decoded(event)
        if event.type == "product.created":
            ledger.initial = ledger.current = int(data["stock"])
        elif event.type == "product.restocked":
            ledger.restocked += int(data["quantity"])
            ledger.current = int(data["stock"])
        elif event.type == "product.stock_reserved":
            ledger.reserved += int(data["quantity"])
            ledger.held[str(data["order_id"])] += int(data["quantity"])
            ledger.current = int(data["stock"])
        elif event.type == "product.stock_released":
            ledger.released += int(data["quantity"])
            ledger.held[str(data["order_id"])] -= int(data["quantity"])
            ledger.current = int(data["stock"])
    return dict(ledgers)


def ordered_quantities(events: Iterable[RecordedEvent]) -> dict[str, Counter[str]]:
    """Order id → product id → units, from ``order.placed``."""
    ordered: dict[str, Counter[str]] = {}
    for event in events:
        if event.type == "order.placed":
            lines: Counter[str] = Counter()
            for line in decoded(event)["items"]:
                lines[str(line["product_id"])] += int(line["quantity"])
            ordered[stream_id(event.stream, "order-")] = lines
    return ordered


def stock_findings(
    events: list[RecordedEvent],
    fates: dict[str, str],
    read_model_stock: dict[str, int],
) -> list[str]:
    ledgers = stock_ledgers(events)
    ordered = ordered_quantities(events)
    found = []
    for product_id, ledger in sorted(ledgers.items()):
        if ledger.balance != ledger.current:
            found.append(
                f"{product_id}: initial {ledger.initial} + restocked {ledger.restocked}"
                f" - reserved {ledger.reserved} + released {ledger.released}"
                f" = {ledger.balance}, but the store says {ledger.current}"
            )
        if read_model_stock.get(product_id) != ledger.current:
            found.append(
                f"{product_id}: the read model says {read_model_stock.get(product_id)},"
                f" the store {ledger.current}"
            )
        for order_id, units in ledger.held.items():
            fate = fates.get(order_id)
            if not terminal(fate):
                continue  # reported as not terminal
            should = ordered.get(order_id, Counter())[product_id] if fate == CONFIRMED else 0
            if units != should:
                found.append(f"{product_id}: order {order_id} ({fate}) holds {units}, not {should}")
    for order_id, lines in ordered.items():
        if fates.get(order_id) == CONFIRMED:
            for product_id, units in lines.items():
                held = ledgers.get(product_id, StockLedger()).held[order_id]
                if held != units:
                    found.append(f"{product_id}: confirmed {order_id} holds {held}, not {units}")
    return found


# -- EVENTS ---------------------------------------------------------------------------------


@dataclass
class StreamMessage:
    sequence: int
    ce_id: str | None
    position: int | None


async def read_events(nc: NATS, stream: str = "EVENTS") -> list[StreamMessage]:
    """Every message in ``stream``, in stream order, through an ordered consumer."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return []
    last, total = info.state.last_seq, info.state.messages
    if total == 0:
        return []
    sub = await js.subscribe(
        ">",
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        pending_msgs_limit=total + 1000,
    )
    messages: list[StreamMessage] = []
    try:
        while len(messages) < total:
            try:
                msg = await sub.next_msg(timeout=READ_IDLE)
            except TimeoutError:
                break
            headers = msg.headers or {}
            position = headers.get(H_POSITION)
            messages.append(
                StreamMessage(
                    msg.metadata.sequence.stream,
                    headers.get(H_ID),
                    int(position) if position is not None else None,
                )
            )
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return messages


@dataclass
class EventsComparison:
    in_stream: int
    foreign: int
    duplicates: int
    missing: int
    phantom: int
    out_of_order: int
    exact: bool
    examples: list[str]


def compare_events(stored: list[RecordedEvent], messages: list[StreamMessage]) -> EventsComparison:
    ours = [m for m in messages if m.position is not None and m.ce_id is not None]
    ids = [m.ce_id for m in ours]
    stored_ids = [e.id for e in stored]
    counts = Counter(ids)
    stored_set = set(stored_ids)
    present = set(ids)
    missing = [e for e in stored if e.id not in present]
    out_of_order = [
        (a, b) for a, b in itertools.pairwise(ours) if (b.position or 0) < (a.position or 0)
    ]
    examples = [f"missing from EVENTS: position {e.position} ({e.type})" for e in missing]
    examples += [
        f"out of order: seq {b.sequence} position {b.position} after seq {a.sequence}"
        f" position {a.position}"
        for a, b in out_of_order
    ]
    examples += [f"in EVENTS {n} times: {i}" for i, n in counts.items() if n > 1]
    return EventsComparison(
        in_stream=len(ours),
        foreign=len(messages) - len(ours),
        duplicates=sum(n - 1 for n in counts.values()),
        missing=len(missing),
        phantom=len(present - stored_set),
        out_of_order=len(out_of_order),
        exact=ids == stored_ids,
        examples=examples[:EXAMPLES],
    )


# -- read models ----------------------------------------------------------------------------


def _select(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def table_rows(path: Path, table: str) -> dict[Any, tuple[Any, ...]]:
    """Rows by their first column (every projection table's primary key)."""
    return {row[0]: tuple(row) for row in _select(path, f"SELECT * FROM {table}")}


def checkpoints(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, position FROM projection_checkpoints").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {str(name): int(position) for name, position in rows}


async def rebuild_findings(events_db: Path, live: Path, scratch: Path) -> list[str]:
    """Rebuild every projection from the store into ``scratch``; compare with ``live``."""
    db = open_read_models(scratch)
    store = await SQLiteEventStore.open(events_db)
    try:
        for projection in all_projections():
            await rebuild(db, store, projection)
    finally:
        await store.close()
        await db.close()
    found = []
    for projection in all_projections():
        for table in projection.tables:
            have = await asyncio.to_thread(table_rows, live, table)
            want = await asyncio.to_thread(table_rows, scratch, table)
            differ = [k for k in want if k in have and have[k] != want[k]]
            absent = [k for k in want if k not in have]
            extra = [k for k in have if k not in want]
            if differ or absent or extra:
                found.append(
                    f"{table}: {len(differ)} rows differ, {len(absent)} missing,"
                    f" {len(extra)} extra (of {len(want)})"
                )
                for key in differ[:EXAMPLES]:
                    found.append(f"  {table} {key}: live {have[key]} / rebuilt {want[key]}")
                found += [f"  {table} {key}: missing in live" for key in absent[:EXAMPLES]]
    return found


def read_model_orders(path: Path) -> dict[str, str]:
    """Order id → ``pending``, ``confirmed`` or ``cancelled:<reason>`` in the read model."""
    rows = _select(path, "SELECT order_id, status, cancel_reason FROM orders")
    return {
        str(order_id): f"cancelled:{reason}" if status == "cancelled" else str(status)
        for order_id, status, reason in rows
    }


def read_model_stock(path: Path) -> dict[str, int]:
    return {str(p): int(n) for p, n in _select(path, "SELECT product_id, stock FROM products")}


# -- all of it ------------------------------------------------------------------------------


@dataclass
class Findings:
    """The numbers of the result table, and every broken invariant."""

    attempted: int = 0
    acknowledged: int = 0
    acked_ok: int = 0
    confirmed: int = 0
    cancelled: int = 0
    lost: int = 0
    duplicated_effects: int = 0
    events_stored: int = 0
    events_in_stream: int = 0
    out_of_order: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def fail(self, check: str, lines: list[str]) -> None:
        if lines:
            self.failures.setdefault(check, []).extend(lines)


def order_findings(
    findings: Findings,
    plan: Plan,
    load: LoadResult,
    fates: dict[str, str],
    live: dict[str, str],
    tolerate: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """``tolerate``: per scenario, other endings a fault legitimately causes (listed as a
    note, not a failure)."""
    planned = plan.by_id()
    lost, stuck, wrong, refused = [], [], [], []
    for order_id, ack in load.acks.items():
        fate = fates.get(order_id)
        if ack.ok or ack.status == "refused:order_already_exists":
            if not terminal(fate):
                lost.append(f"{order_id}: acknowledged, {fate or 'not in the store'}")
            elif not terminal(live.get(order_id, "pending").split(":")[0]):
                lost.append(f"{order_id}: {fate} in the store, {live.get(order_id)} in the model")
        if ack.status.startswith("refused:"):
            refused.append(f"{order_id}: {ack.status} after {ack.attempts} attempt(s)")
    for order_id, fate in fates.items():
        answer = load.acks.get(order_id)
        if not terminal(fate) and (answer is None or not answer.ok):
            stuck.append(f"{order_id}: placed, never acknowledged, still {fate}")
        order = planned.get(order_id)
        if order is not None and terminal(fate) and fate != order.expected:
            line = f"{order_id} ({order.scenario}): {fate}, expected {order.expected}"
            if fate in (tolerate or {}).get(str(order.scenario.value), frozenset()):
                findings.notes.append(f"tolerated: {line}")
            else:
                wrong.append(line)
    findings.lost = len(lost)
    findings.fail("acknowledged orders reach a terminal state", lost)
    findings.fail("placed orders reach a terminal state", stuck)
    findings.fail("orders end as their scenario says", wrong)
    findings.fail("requests are acknowledged with ok (same ce-id resent)", refused)
    unacked = [o for o, a in load.acks.items() if not a.acknowledged]
    findings.fail(
        "every request is acknowledged before its deadline",
        [f"{o}: {dict(load.acks[o].outcomes)}" for o in unacked[:EXAMPLES]]
        + ([f"... {len(unacked)} in all"] if len(unacked) > EXAMPLES else []),
    )
    statuses = Counter(live.values())
    findings.notes.append(f"read model orders by status: {dict(statuses)}")


def check_all(
    plan: Plan,
    load: LoadResult,
    stored: list[RecordedEvent],
    messages: list[StreamMessage],
    live_orders: dict[str, str],
    live_stock: dict[str, int],
    rebuilt: list[str],
    tolerate: Mapping[str, frozenset[str]] | None = None,
) -> Findings:
    fates = order_fates(stored)
    findings = Findings(
        attempted=len(plan.orders),
        acknowledged=load.acknowledged,
        acked_ok=load.count("ok"),
        confirmed=sum(1 for f in fates.values() if f == CONFIRMED),
        cancelled=sum(1 for f in fates.values() if terminal(f) and f != CONFIRMED),
        events_stored=len(stored),
    )
    order_findings(findings, plan, load, fates, live_orders, tolerate)
    placed = Counter(e.stream for e in stored if e.type == "order.placed")
    findings.fail(
        "each order placed at most once", [f"{s} x{n}" for s, n in placed.items() if n > 1]
    )
    duplicates = duplicate_effects(stored)
    findings.duplicated_effects = len(duplicates)
    findings.fail("no effect twice", duplicates[:20])
    findings.fail(
        "payments: charged once if confirmed, refunded if cancelled",
        payment_findings(stored, fates)[:20],
    )
    findings.fail("stock conserved", stock_findings(stored, fates, live_stock)[:20])
    events = compare_events(stored, messages)
    findings.events_in_stream = events.in_stream
    findings.out_of_order = events.out_of_order
    if not events.exact:
        findings.fail(
            "every stored event in EVENTS exactly once, in store order",
            [
                f"stored {len(stored)}, in EVENTS {events.in_stream} (foreign {events.foreign}),"
                f" missing {events.missing}, duplicated {events.duplicates},"
                f" not stored {events.phantom}, out of order {events.out_of_order}",
                *events.examples,
            ],
        )
    findings.fail("read models equal a rebuild from the store", rebuilt)
    outcomes = load.attempt_outcomes()
    findings.notes.append(f"request attempts by outcome: {dict(outcomes)}")
    findings.notes.append(f"requests by final status: {dict(load.statuses())}")
    findings.notes.append(f"orders by fate in the store: {dict(Counter(fates.values()))}")
    return findings
