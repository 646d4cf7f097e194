"""The inventory, payment and shipping services over a real SQLite store, with the
partners (gateway, carrier) in process over their own real ledgers."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from domain import inventory as inv
from domain import payment as pay
from domain import product as p
from domain import shipment as sh
from domain.catalog import decode_event
from domain.errors import (
    InsufficientStock,
    InvalidState,
    PaymentDeclined,
    PaymentUnavailable,
    RestrictedArea,
    Unresponsive,
)
from domain.messages import Event
from domain.metadata import MessageContext
from domain.partners import ChargeReply, ChargeRequest, RefundRequest
from domain.shipping import ShippingAddress
from handlers import inventory as inventory_handlers
from handlers import payment as payment_handlers
from handlers import product as product_handlers
from handlers import shipment as shipment_handlers
from handlers.executor import CommandExecutor
from infra.eventstore.sqlite import SQLiteEventStore
from partners.carrier import ShippingCarrierService
from partners.gateway import PaymentGatewayService
from partners.ledger import open_ledger
from partners.rules import DECLINED_CARD, FLAKY_CARD, SLOW_CARD

ORDER = "o-1"


def ctx(command_id: str, command_type: str = "test.command") -> MessageContext:
    return MessageContext(
        id=command_id,
        type=command_type,
        source="tests",
        correlation_id=f"corr-{command_id}",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    s = await SQLiteEventStore.open(tmp_path / "events.db")
    yield s
    await s.close()


@pytest.fixture
def ex(store: SQLiteEventStore) -> CommandExecutor:
    return CommandExecutor(store)


class CountingGateway(PaymentGatewayService):
    """The gateway, counting the charges it is asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    async def charge(
        self, request: ChargeRequest, ctx: MessageContext | None = None
    ) -> ChargeReply:
        self.calls += 1
        return await super().charge(request, ctx)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[CountingGateway]:
    ledger = open_ledger(tmp_path / "payment-gateway.db", "gateway")
    yield CountingGateway(ledger)
    await ledger.close()


@pytest.fixture
async def carrier(tmp_path: Path) -> AsyncIterator[ShippingCarrierService]:
    ledger = open_ledger(tmp_path / "shipping-carrier.db", "carrier")
    yield ShippingCarrierService(ledger)
    await ledger.close()


async def stored(store: SQLiteEventStore, stream: str) -> list[Event]:
    return [decode_event(r.type, r.data) for r in await store.read_stream(stream)]


async def stored_types(store: SQLiteEventStore, stream: str) -> list[str]:
    return [r.type for r in await store.read_stream(stream)]


# -- inventory ----------------------------------------------------------------------------


async def create_products(ex: CommandExecutor, **stock: int) -> None:
    for pid, level in stock.items():
        await product_handlers.create(
            ex,
            p.CreateProduct(product_id=pid, name=pid, price=Decimal("1.00"), stock=level),
            ctx(f"create-{pid}"),
        )


async def stock_of(store: SQLiteEventStore, pid: str) -> tuple[int, dict[str, int]]:
    """The product as stored, read by a fresh executor (no cache to trust)."""
    product = await CommandExecutor(store).load(
        p.stream_name(pid), functools.partial(p.Product, pid)
    )
    return product.stock, product.reservations


def lines(**quantities: int) -> list[inv.StockLine]:
    return [inv.StockLine(product_id=pid, quantity=q) for pid, q in quantities.items()]


def reserve(**quantities: int) -> inv.ReserveInventory:
    return inv.ReserveInventory(order_id=ORDER, items=lines(**quantities))


async def test_reserve_holds_stock_on_every_product(
    store: SQLiteEventStore, ex: CommandExecutor
) -> None:
    await create_products(ex, pa=5, pb=3)
    outcome = await inventory_handlers.reserve(ex, reserve(pa=2, pb=3), ctx("r1"))

    assert outcome.data["status"] == "reserved"
    assert outcome.data["items"] == [
        {"product_id": "pa", "quantity": 2},
        {"product_id": "pb", "quantity": 3},
    ]
    assert await stock_of(store, "pa") == (3, {ORDER: 2})
    assert await stock_of(store, "pb") == (0, {ORDER: 3})
    assert await stored_types(store, inv.stream_name(ORDER)) == ["inventory.reserved"]

    # A resend holds nothing more.
    again = await inventory_handlers.reserve(ex, reserve(pa=2, pb=3), ctx("r1"))
    assert again.duplicate and again.data == outcome.data
    assert await stock_of(store, "pa") == (3, {ORDER: 2})
    assert await stored_types(store, p.stream_name("pa")) == [
        "product.created",
        "product.stock_reserved",
    ]


async def test_lines_for_one_product_are_held_as_one(
    store: SQLiteEventStore, ex: CommandExecutor
) -> None:
    await create_products(ex, pa=5)
    command = inv.ReserveInventory(order_id=ORDER, items=lines(pa=1) + lines(pa=2))
    outcome = await inventory_handlers.reserve(ex, command, ctx("r1"))
    assert outcome.data["items"] == [{"product_id": "pa", "quantity": 3}]
    assert await stock_of(store, "pa") == (2, {ORDER: 3})


async def test_insufficient_stock_gives_back_what_was_held(
    store: SQLiteEventStore, ex: CommandExecutor
) -> None:
    await create_products(ex, pa=5, pb=1)
    with pytest.raises(InsufficientStock) as info:
        await inventory_handlers.reserve(ex, reserve(pa=2, pb=3), ctx("r1"))
    assert info.value.details == {"product_id": "pb", "available": 1, "requested": 3}

    assert await stock_of(store, "pa") == (5, {})
    assert await stock_of(store, "pb") == (1, {})
    assert await stored_types(store, p.stream_name("pa")) == [
        "product.created",
        "product.stock_reserved",
        "product.stock_released",
    ]
    (failed,) = await stored(store, inv.stream_name(ORDER))
    assert isinstance(failed, inv.InventoryReservationFailed)
    assert (failed.reason, failed.product_id, failed.available, failed.requested) == (
        "insufficient_stock",
        "pb",
        1,
        3,
    )

    # A resend (same id or not) is refused the same way, holding nothing, even though
    # stock has arrived meanwhile: the order's outcome is already decided.
    await product_handlers.restock(ex, p.Restock(product_id="pb", quantity=10), ctx("restock"))
    for command_id in ("r1", "r2"):
        with pytest.raises(InsufficientStock) as again:
            await inventory_handlers.reserve(ex, reserve(pa=2, pb=3), ctx(command_id))
        assert again.value.details == info.value.details
    assert await stock_of(store, "pa") == (5, {})
    assert await stock_of(store, "pb") == (11, {})
    assert len(await store.read_stream(inv.stream_name(ORDER))) == 1


async def test_release_after_reserve_restores_stock(
    store: SQLiteEventStore, ex: CommandExecutor
) -> None:
    await create_products(ex, pa=5, pb=3)
    await inventory_handlers.reserve(ex, reserve(pa=2, pb=1), ctx("r1"))
    outcome = await inventory_handlers.release(
        ex, inv.ReleaseInventory(order_id=ORDER), ctx("rel1")
    )

    assert outcome.data["status"] == "released"
    assert await stock_of(store, "pa") == (5, {})
    assert await stock_of(store, "pb") == (3, {})
    events = await stored(store, inv.stream_name(ORDER))
    assert [e.TYPE for e in events] == ["inventory.reserved", "inventory.released"]
    released = events[1]
    assert isinstance(released, inv.InventoryReleased)
    assert released.items == lines(pa=2, pb=1)

    # Released twice: nothing goes back twice.
    await inventory_handlers.release(ex, inv.ReleaseInventory(order_id=ORDER), ctx("rel2"))
    assert await stock_of(store, "pa") == (5, {})
    assert len(events) == len(await store.read_stream(inv.stream_name(ORDER)))


async def test_release_before_reserve_leaves_a_tombstone(
    store: SQLiteEventStore, ex: CommandExecutor
) -> None:
    await create_products(ex, pa=5, pb=3)
    await inventory_handlers.release(
        ex, inv.ReleaseInventory(order_id=ORDER, items=lines(pa=2, pb=1)), ctx("rel1")
    )
    (tombstone,) = await stored(store, inv.stream_name(ORDER))
    assert isinstance(tombstone, inv.InventoryReleased) and tombstone.items == []

    with pytest.raises(InvalidState):
        await inventory_handlers.reserve(ex, reserve(pa=2, pb=1), ctx("r1"))
    assert await stock_of(store, "pa") == (5, {})
    assert await stock_of(store, "pb") == (3, {})
    assert await stored_types(store, p.stream_name("pa")) == ["product.created"]
    assert await stored_types(store, inv.stream_name(ORDER)) == ["inventory.released"]


def test_the_inventory_record_releases_once_and_refuses_a_late_reservation() -> None:
    """The aggregate's own guards, for a release racing in from another replica."""
    state = inv.Inventory(ORDER)
    (tombstone,) = state.release([])
    state.apply(tombstone)
    assert state.status == "released"
    assert state.release(lines(pa=1)) == []
    with pytest.raises(InvalidState):
        state.reserved(lines(pa=1))


# -- payment ------------------------------------------------------------------------------


def charge(method: str = "card", order_id: str = ORDER) -> pay.ProcessPayment:
    return pay.ProcessPayment(order_id=order_id, amount=Decimal("25.00"), method=method)


async def test_a_card_payment_is_processed_once(
    store: SQLiteEventStore, ex: CommandExecutor, gateway: CountingGateway
) -> None:
    provider = gateway
    outcome = await payment_handlers.process(provider, ex, charge(), ctx("pay1"))
    assert outcome.data == {
        "order_id": ORDER,
        "payment_id": f"pay-{ORDER}",
        "status": "processed",
        "amount": "25.00",
        "method": "card",
    }
    for command_id in ("pay1", "pay2"):
        again = await payment_handlers.process(provider, ex, charge(), ctx(command_id))
        assert again.duplicate and again.data == outcome.data
    assert provider.calls == 1
    (processed,) = await stored(store, pay.stream_name(ORDER))
    assert isinstance(processed, pay.PaymentProcessed)
    assert processed.amount == Decimal("25.00") and processed.payment_id == f"pay-{ORDER}"


async def test_a_declined_card_is_refused_and_the_decline_stored(
    store: SQLiteEventStore, ex: CommandExecutor, gateway: CountingGateway
) -> None:
    provider = gateway
    with pytest.raises(PaymentDeclined) as info:
        await payment_handlers.process(provider, ex, charge(DECLINED_CARD), ctx("pay1"))
    assert info.value.code == "payment_declined"
    (declined,) = await stored(store, pay.stream_name(ORDER))
    assert isinstance(declined, pay.PaymentWasDeclined)
    assert (declined.reason, declined.method) == ("payment_declined", DECLINED_CARD)
    # A resend is answered from the stored decline, without asking the gateway.
    with pytest.raises(PaymentDeclined):
        await payment_handlers.process(provider, ex, charge(DECLINED_CARD), ctx("pay2"))
    assert provider.calls == 1
    assert len(await store.read_stream(pay.stream_name(ORDER))) == 1


async def test_a_flaky_card_fails_twice_then_succeeds(
    store: SQLiteEventStore, ex: CommandExecutor, gateway: CountingGateway, tmp_path: Path
) -> None:
    provider = gateway
    for attempt in (1, 2):
        with pytest.raises(PaymentUnavailable) as info:
            await payment_handlers.process(provider, ex, charge(FLAKY_CARD), ctx(f"p{attempt}"))
        assert info.value.code == "payment_unavailable"
        assert info.value.details["reason"] == f"gateway busy (attempt {attempt})"
        assert await store.read_stream(pay.stream_name(ORDER)) == []
        if attempt == 1:
            # The count is the gateway's record, not its memory: a restart keeps it.
            await gateway.ledger.close()
            provider = CountingGateway(open_ledger(tmp_path / "payment-gateway.db", "again"))
    outcome = await payment_handlers.process(provider, ex, charge(FLAKY_CARD), ctx("p3"))
    assert outcome.data["status"] == "processed"
    assert await stored_types(store, pay.stream_name(ORDER)) == ["payment.processed"]
    # Per order: another order's flaky card starts failing from scratch.
    with pytest.raises(PaymentUnavailable):
        await payment_handlers.process(provider, ex, charge(FLAKY_CARD, "o-2"), ctx("q1"))
    await provider.ledger.close()


async def test_a_slow_card_never_answers_and_stores_nothing(
    store: SQLiteEventStore, ex: CommandExecutor, gateway: CountingGateway
) -> None:
    with pytest.raises(Unresponsive):
        await payment_handlers.process(gateway, ex, charge(SLOW_CARD), ctx("pay1"))
    assert await store.read_stream(pay.stream_name(ORDER)) == []


async def test_refund_after_processing_refunds(
    store: SQLiteEventStore, ex: CommandExecutor, gateway: CountingGateway
) -> None:
    await payment_handlers.process(gateway, ex, charge(), ctx("pay1"))
    outcome = await payment_handlers.refund(
        gateway, ex, pay.RefundPayment(order_id=ORDER, reason="payment_declined"), ctx("ref1")
    )
    assert outcome.data["status"] == "refunded"
    events = await stored(store, pay.stream_name(ORDER))
    assert [e.TYPE for e in events] == ["payment.processed", "payment.refunded"]
    refunded = events[1]
    assert isinstance(refunded, pay.PaymentRefunded)
    assert (refunded.amount, refunded.reason) == (Decimal("25.00"), "payment_declined")
    # Refunded once only, even when asked again under another id.
    await payment_handlers.refund(gateway, ex, pay.RefundPayment(order_id=ORDER), ctx("ref2"))
    assert len(await store.read_stream(pay.stream_name(ORDER))) == 2
    # The gateway refunded the charge it made: a charge retried now is not charged again.
    late = await gateway.charge(
        ChargeRequest(
            payment_id=f"pay-{ORDER}", order_id=ORDER, amount=Decimal("25.00"), method="card"
        )
    )
    assert late.status == "voided"


async def test_refund_before_processing_voids_and_refuses_a_late_charge(
    store: SQLiteEventStore, ex: CommandExecutor, gateway: CountingGateway
) -> None:
    outcome = await payment_handlers.refund(
        gateway, ex, pay.RefundPayment(order_id=ORDER, reason="timeout"), ctx("ref1")
    )
    assert outcome.data["status"] == "voided"
    (voided,) = await stored(store, pay.stream_name(ORDER))
    assert isinstance(voided, pay.PaymentVoided) and voided.reason == "timeout"

    with pytest.raises(InvalidState):
        await payment_handlers.process(gateway, ex, charge(), ctx("pay1"))
    assert gateway.calls == 0
    assert await stored_types(store, pay.stream_name(ORDER)) == ["payment.voided"]
    # The gateway voided it too: a charge already on its way when the refund came is
    # refused there, and the handler refuses it without recording a decline.
    fresh = CommandExecutor(store)
    other = await gateway.refund(RefundRequest(payment_id="pay-o-9", order_id="o-9"))
    assert other.status == "voided"
    with pytest.raises(InvalidState):
        await payment_handlers.process(gateway, fresh, charge(order_id="o-9"), ctx("pay9"))
    assert await store.read_stream(pay.stream_name("o-9")) == []


async def test_the_simulated_failure_rate_is_deterministic_per_order(tmp_path: Path) -> None:
    ids = [f"o-{i}" for i in range(300)]

    async def approvals(seed: int, rate: float, name: str) -> list[bool]:
        ledger = open_ledger(tmp_path / f"{name}.db", name)
        gw = PaymentGatewayService(ledger, failure_rate=rate, seed=seed)
        replies = [
            await gw.charge(
                ChargeRequest(
                    payment_id=f"pay-{i}", order_id=i, amount=Decimal("1.00"), method="card"
                )
            )
            for i in ids
        ]
        await ledger.close()
        return [r.status == "approved" for r in replies]

    first = await approvals(1, 0.5, "a")
    assert await approvals(1, 0.5, "b") == first  # another gateway, the same answers
    declines = first.count(False)
    assert 100 <= declines <= 200
    # Another seed picks other orders; no failure rate declines nobody.
    assert await approvals(2, 0.5, "c") != first
    assert all(await approvals(1, 0.0, "d"))
    with pytest.raises(ValueError):
        PaymentGatewayService(open_ledger(tmp_path / "e.db", "e"), failure_rate=1.5)


# -- shipment -----------------------------------------------------------------------------


def arrange(country: str | None) -> sh.ArrangeShipment:
    address = ShippingAddress(country=country) if country else None
    return sh.ArrangeShipment(order_id=ORDER, address=address)


async def test_a_shipment_is_arranged_once(
    store: SQLiteEventStore, ex: CommandExecutor, carrier: ShippingCarrierService
) -> None:
    outcome = await shipment_handlers.arrange(carrier, ex, arrange("DE"), ctx("s1"))
    assert outcome.data == {
        "order_id": ORDER,
        "status": "arranged",
        "tracking_number": f"trk-{ORDER}",
        "country": "DE",
    }
    await shipment_handlers.arrange(carrier, ex, arrange("DE"), ctx("s2"))
    assert await stored_types(store, sh.stream_name(ORDER)) == ["shipment.arranged"]


async def test_a_restricted_area_is_refused_and_the_failure_stored(
    store: SQLiteEventStore, ex: CommandExecutor, carrier: ShippingCarrierService
) -> None:
    with pytest.raises(RestrictedArea) as info:
        await shipment_handlers.arrange(carrier, ex, arrange("XX"), ctx("s1"))
    assert info.value.code == "restricted_area"
    (failed,) = await stored(store, sh.stream_name(ORDER))
    assert isinstance(failed, sh.ShipmentFailed)
    assert (failed.reason, failed.country) == ("restricted_area", "XX")
    # A resend is refused the same way and stores nothing more.
    with pytest.raises(RestrictedArea):
        await shipment_handlers.arrange(carrier, ex, arrange("XX"), ctx("s2"))
    assert len(await store.read_stream(sh.stream_name(ORDER))) == 1


async def test_cancel_before_arrange_refuses_a_late_arrangement(
    store: SQLiteEventStore, ex: CommandExecutor, carrier: ShippingCarrierService
) -> None:
    outcome = await shipment_handlers.cancel(
        carrier, ex, sh.CancelShipment(order_id=ORDER, reason="payment_declined"), ctx("c1")
    )
    assert outcome.data["status"] == "cancelled"
    with pytest.raises(InvalidState):
        await shipment_handlers.arrange(carrier, ex, arrange("DE"), ctx("s1"))
    assert await stored_types(store, sh.stream_name(ORDER)) == ["shipment.cancelled"]
