"""The checker catches what it is there to catch: on hand-made stores and streams, each
broken invariant is reported (a checker that finds nothing would make every chaos run
pass)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from domain.event_store import RecordedEvent
from tests.chaos.checks import (
    Findings,
    StreamMessage,
    compare_events,
    duplicate_effects,
    order_fates,
    order_findings,
    payment_findings,
    stock_findings,
)
from tests.chaos.load import Acknowledgement, LoadResult, make_plan

AT = datetime(2026, 1, 1, tzinfo=UTC)


def store(*events: tuple[str, str, dict[str, Any]]) -> list[RecordedEvent]:
    revisions: Counter[str] = Counter()
    recorded = []
    for position, (stream, type_, data) in enumerate(events, start=1):
        recorded.append(
            RecordedEvent(
                f"e{position}",
                stream,
                revisions[stream],
                position,
                type_,
                json.dumps(data).encode(),
                b"{}",
                AT,
            )
        )
        revisions[stream] += 1
    return recorded


def placed(
    order_id: str, product_id: str = "p1", quantity: int = 2
) -> tuple[str, str, dict[str, Any]]:
    items = [{"product_id": product_id, "quantity": quantity}]
    return (f"order-{order_id}", "order.placed", {"order_id": order_id, "items": items})


def stock(type_: str, order_id: str, quantity: int, left: int) -> tuple[str, str, dict[str, Any]]:
    data = {"product_id": "p1", "order_id": order_id, "quantity": quantity, "stock": left}
    return ("product-p1", f"product.{type_}", data)


CREATED = ("product-p1", "product.created", {"product_id": "p1", "stock": 10})


def test_events_missing_duplicated_and_out_of_order_are_told_apart() -> None:
    stored = store(CREATED, placed("o1"), placed("o2"))

    def msg(seq: int, event: RecordedEvent) -> StreamMessage:
        return StreamMessage(seq, event.id, event.position)

    exact = compare_events(stored, [msg(i + 1, e) for i, e in enumerate(stored)])
    assert exact.exact and exact.missing == exact.duplicates == exact.out_of_order == 0

    a, b, c = stored
    gap = compare_events(stored, [msg(1, a), msg(2, c)])
    assert not gap.exact and gap.missing == 1 and gap.out_of_order == 0

    jumbled = compare_events(stored, [msg(1, a), msg(2, c), msg(3, b), msg(4, c)])
    assert jumbled.duplicates == 1 and jumbled.out_of_order == 1 and jumbled.missing == 0

    foreign = compare_events(stored, [msg(1, a), StreamMessage(2, None, None), msg(3, b)])
    assert foreign.foreign == 1 and foreign.missing == 1


def test_an_effect_applied_twice_is_reported() -> None:
    charge = ("payment-o1", "payment.processed", {"order_id": "o1"})
    stored = store(CREATED, placed("o1"), stock("stock_reserved", "o1", 2, 8), charge, charge)
    assert duplicate_effects(stored) == ["payment-o1: payment.processed x2"]

    held_twice = store(
        CREATED,
        placed("o1"),
        stock("stock_reserved", "o1", 2, 8),
        stock("stock_reserved", "o1", 2, 6),
    )
    assert duplicate_effects(held_twice) == ["product-p1 for o1: product.stock_reserved x2"]


def test_stock_held_by_a_cancelled_order_or_miscounted_is_reported() -> None:
    cancelled = ("order-o1", "order.cancelled", {"order_id": "o1", "reason": "timeout"})
    stored = store(CREATED, placed("o1"), stock("stock_reserved", "o1", 2, 8), cancelled)
    fates = order_fates(stored)
    assert fates == {"o1": "timeout"}
    found = stock_findings(stored, fates, {"p1": 8})
    assert found == ["p1: order o1 (timeout) holds 2, not 0"]

    released = store(
        CREATED,
        placed("o1"),
        stock("stock_reserved", "o1", 2, 8),
        stock("stock_released", "o1", 2, 10),
        cancelled,
    )
    assert stock_findings(released, order_fates(released), {"p1": 10}) == []
    assert stock_findings(released, order_fates(released), {"p1": 12}) == [
        "p1: the read model says 12, the store 10"
    ]


def test_a_cancelled_order_that_kept_its_charge_is_reported() -> None:
    stored = store(
        placed("o1"),
        ("payment-o1", "payment.processed", {"order_id": "o1"}),
        ("order-o1", "order.cancelled", {"order_id": "o1", "reason": "timeout"}),
    )
    assert payment_findings(stored, order_fates(stored)) == [
        "o1 cancelled (timeout) with payments {'payment.processed': 1}"
    ]
    voided = store(
        placed("o1"),
        ("payment-o1", "payment.voided", {"order_id": "o1"}),
        ("order-o1", "order.cancelled", {"order_id": "o1", "reason": "timeout"}),
    )
    assert payment_findings(voided, order_fates(voided)) == []


def test_an_acknowledged_order_that_never_ends_is_lost() -> None:
    plan = make_plan(2)
    first, second = plan.orders
    load = LoadResult(
        {first.order_id: Acknowledgement(1, "ok"), second.order_id: Acknowledgement(1, "ok")},
        1.0,
    )
    confirmed = (f"order-{first.order_id}", "order.confirmed", {"order_id": first.order_id})
    stored = store(placed(first.order_id), confirmed)
    findings = Findings()
    order_findings(findings, plan, load, order_fates(stored), {first.order_id: "confirmed"})
    assert findings.lost == 1
    assert findings.failures["acknowledged orders reach a terminal state"] == [
        f"{second.order_id}: acknowledged, not in the store"
    ]
