"""The partners' FastStream apps in memory (FastStream's ``TestNatsBroker``): the
contract's requests and replies, idempotency, and the errors a bad request gets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from broker.subjects import PAYMENT_CHARGE, PAYMENT_REFUND, SHIPPING_BOOK, SHIPPING_CANCEL
from domain.partners import BookingReply, ChargeReply, RefundReply
from partners.apps import payment_gateway, shipping_carrier
from partners.carrier import ShippingCarrierService
from partners.gateway import PaymentGatewayService
from partners.ledger import open_ledger


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[NatsBroker]:
    ledger = open_ledger(tmp_path / "payment-gateway.db", "gateway")
    broker = payment_gateway(PaymentGatewayService(ledger, failure_rate=0.0))
    async with TestNatsBroker(broker) as test_broker:
        yield test_broker
    await ledger.close()


@pytest.fixture
async def carrier(tmp_path: Path) -> AsyncIterator[NatsBroker]:
    ledger = open_ledger(tmp_path / "shipping-carrier.db", "carrier")
    broker = shipping_carrier(ShippingCarrierService(ledger))
    async with TestNatsBroker(broker) as test_broker:
        yield test_broker
    await ledger.close()


async def ask(broker: NatsBroker, subject: str, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await broker.request(raw, subject, timeout=5)
    return json.loads(response.body)


def charge(method: str = "card", order: str = "o-1") -> dict[str, str]:
    return {"payment_id": f"pay-{order}", "order_id": order, "amount": "25.00", "method": method}


async def test_a_charge_is_approved_once_and_answered_the_same_again(gateway: NatsBroker) -> None:
    first = ChargeReply.model_validate(await ask(gateway, PAYMENT_CHARGE, charge()))
    assert (first.status, first.charge_id) == ("approved", "ch-pay-o-1")
    again = ChargeReply.model_validate(await ask(gateway, PAYMENT_CHARGE, charge()))
    assert again == first


async def test_a_declined_card_is_declined_every_time(gateway: NatsBroker) -> None:
    for _ in range(2):
        reply = ChargeReply.model_validate(
            await ask(gateway, PAYMENT_CHARGE, charge("declined-card"))
        )
        assert (reply.status, reply.reason) == ("declined", "payment_declined")


async def test_a_flaky_card_is_unavailable_twice_then_approved(gateway: NatsBroker) -> None:
    statuses = [
        ChargeReply.model_validate(await ask(gateway, PAYMENT_CHARGE, charge("flaky-card"))).status
        for _ in range(4)
    ]
    assert statuses == ["unavailable", "unavailable", "approved", "approved"]


async def test_a_refund_before_the_charge_voids_it(gateway: NatsBroker) -> None:
    refund = {"payment_id": "pay-o-1", "order_id": "o-1", "reason": "timeout"}
    voided = RefundReply.model_validate(await ask(gateway, PAYMENT_REFUND, refund))
    assert voided.status == "voided"
    late = ChargeReply.model_validate(await ask(gateway, PAYMENT_CHARGE, charge()))
    assert late.status == "voided"


async def test_a_refund_after_the_charge_refunds_once(gateway: NatsBroker) -> None:
    await ask(gateway, PAYMENT_CHARGE, charge())
    refund = {"payment_id": "pay-o-1", "order_id": "o-1"}
    for _ in range(2):
        reply = RefundReply.model_validate(await ask(gateway, PAYMENT_REFUND, refund))
        assert reply.status == "refunded"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        ({"payment_id": "pay-o-1"}, "validation_error"),
        ({**charge(), "amount": "-1.00"}, "validation_error"),
        ({**charge(), "surprise": 1}, "validation_error"),
    ],
)
async def test_a_bad_request_gets_a_structured_error_and_changes_nothing(
    gateway: NatsBroker, body: Any, code: str
) -> None:
    reply = await ask(gateway, PAYMENT_CHARGE, body)
    assert reply["ok"] is False and reply["error"]["code"] == code
    # Nothing was recorded: the first real charge is decided afresh.
    flaky = ChargeReply.model_validate(await ask(gateway, PAYMENT_CHARGE, charge("flaky-card")))
    assert flaky.status == "unavailable"


async def test_the_carrier_books_once_refuses_xx_and_honours_a_prior_cancel(
    carrier: NatsBroker,
) -> None:
    book = {"shipment_id": "shp-o-1", "order_id": "o-1", "address": {"country": "DE"}}
    first = BookingReply.model_validate(await ask(carrier, SHIPPING_BOOK, book))
    assert (first.status, first.tracking_number) == ("booked", "trk-o-1")
    assert BookingReply.model_validate(await ask(carrier, SHIPPING_BOOK, book)) == first

    refused = BookingReply.model_validate(
        await ask(
            carrier,
            SHIPPING_BOOK,
            {"shipment_id": "shp-o-2", "order_id": "o-2", "address": {"country": "XX"}},
        )
    )
    assert (refused.status, refused.reason) == ("refused", "restricted_area")

    cancel = {"shipment_id": "shp-o-3", "order_id": "o-3", "reason": "payment_declined"}
    assert (await ask(carrier, SHIPPING_CANCEL, cancel))["status"] == "cancelled"
    late = BookingReply.model_validate(
        await ask(carrier, SHIPPING_BOOK, {"shipment_id": "shp-o-3", "order_id": "o-3"})
    )
    assert late.status == "cancelled"


async def test_a_slow_card_is_never_answered(gateway: NatsBroker) -> None:
    """In memory the request returns the handler's nothing at once (an empty body); over
    a real server nothing is sent and the caller times out (tests/integration)."""
    response = await gateway.request(
        json.dumps(charge("slow-card")).encode(), PAYMENT_CHARGE, timeout=0.2
    )
    assert response.body == b""
    # And nothing was recorded for it.
    flaky = ChargeReply.model_validate(await ask(gateway, PAYMENT_CHARGE, charge("flaky-card")))
    assert flaky.status == "unavailable"
