"""The partners over a real nats-server: ``ordermesh run partners`` in a process of its
own, reached the way the command service reaches it, restarted, refused bad input, and
traced in the order's trace under their own service names."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from broker.partner_clients import NatsPaymentGateway, NatsShippingCarrier
from broker.subjects import PAYMENT_CHARGE, SHIPPING_BOOK
from domain.errors import PaymentUnavailable, ShippingUnavailable, Unresponsive
from domain.metadata import MessageContext
from domain.partners import BookingRequest, ChargeRequest
from domain.shipping import ShippingAddress
from infra.nats_server import EmbeddedNatsServer, free_port
from ordermesh.app import App
from ordermesh.child import PartnersProcess
from tests.conftest import request, settings_for
from tests.integration.test_saga import create_product
from tests.integration.test_traces import client_request


def ctx(command_id: str = "c-1") -> MessageContext:
    return MessageContext(
        id=command_id, type="payment.process", source="tests", correlation_id="k-1"
    )


def charge(method: str = "card", order: str = "o-1") -> ChargeRequest:
    return ChargeRequest(
        payment_id=f"pay-{order}", order_id=order, amount=Decimal("25.00"), method=method
    )


async def test_a_partners_process_answers_keeps_its_word_across_a_restart_and_exports_metrics(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    settings = settings_for(nats_server, tmp_path / "data")
    port = free_port()
    gateway, carrier = NatsPaymentGateway(nc, timeout=2), NatsShippingCarrier(nc, timeout=2)

    partners = PartnersProcess(nats_server.url, settings, metrics_port=port)
    await partners.start()
    try:
        first = await gateway.charge(charge(), ctx())
        assert (first.status, first.charge_id) == ("approved", "ch-pay-o-1")
        flaky = await gateway.charge(charge("flaky-card", "o-2"), ctx())
        assert flaky.status == "unavailable"
        booked = await carrier.book(
            BookingRequest(
                shipment_id="shp-o-1", order_id="o-1", address=ShippingAddress(country="DE")
            ),
            ctx(),
        )
        assert (booked.status, booked.tracking_number) == ("booked", "trk-o-1")
        async with httpx.AsyncClient() as client:
            exposition = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        for app_name, handler in (
            ("payment-gateway", PAYMENT_CHARGE),
            ("shipping-carrier", SHIPPING_BOOK),
        ):
            assert (
                f'faststream_received_messages_total{{app_name="{app_name}",broker="nats",'
                f'handler="{handler}"}}'
            ) in exposition
    finally:
        await partners.stop()

    # Nobody serves the partners now: "unavailable, try later", for either partner.
    with pytest.raises(PaymentUnavailable):
        await gateway.charge(charge(), ctx())
    with pytest.raises(ShippingUnavailable):
        await carrier.book(BookingRequest(shipment_id="shp-o-1", order_id="o-1"), ctx())

    restarted = PartnersProcess(nats_server.url, settings, metrics_port=free_port())
    await restarted.start()
    try:
        # The gateway's record outlived the process: the same answer, nothing charged twice,
        # and the flaky card's count carried on from where it was.
        assert await gateway.charge(charge(), ctx()) == first
        assert (await gateway.charge(charge("flaky-card", "o-2"), ctx())).status == "unavailable"
        assert (await gateway.charge(charge("flaky-card", "o-2"), ctx())).status == "approved"
        with pytest.raises(Unresponsive):
            await NatsPaymentGateway(nc, timeout=0.3).charge(charge("slow-card", "o-3"), ctx())
        # A request nobody could read: a structured error, and nothing recorded.
        for raw, code in ((b"{oops", "malformed_json"), (b'{"payment_id": 1}', "validation_error")):
            reply = json.loads((await nc.request(PAYMENT_CHARGE, raw, timeout=2)).data)
            assert reply["ok"] is False and reply["error"]["code"] == code
    finally:
        await restarted.stop()


async def test_a_payment_command_answers_payment_unavailable_while_no_gateway_runs(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    app = App(settings_for(nats_server, tmp_path / "data"), ("command",))
    await app.start()
    try:
        reply = await request(
            nc, "commands.payment.process", {"order_id": "o-1", "amount": "5.00", "method": "card"}
        )
        assert reply["ok"] is False and reply["error"]["code"] == "payment_unavailable"
        assert await app.store.read_stream("payment-o-1") == []  # type: ignore[union-attr]
    finally:
        await app.stop()


async def test_partner_spans_sit_in_the_order_trace_under_their_own_service_names(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    app = App(settings_for(nats_server, tmp_path / "data"), ("command", "partners"))
    await app.start()
    try:
        await create_product(nc, "p-1", 10)
        trace_hex, reply = await client_request(
            nc, "payment.process", {"order_id": "o-1", "amount": "5.00", "method": "card"}
        )
        assert reply["ok"], reply
        trace_hex2, reply = await client_request(
            nc, "shipment.arrange", {"order_id": "o-1", "address": {"country": "DE"}}
        )
        assert reply["ok"], reply
    finally:
        await app.stop()
    finished = spans.get_finished_spans()
    index = {s.context.span_id: s for s in finished}
    for trace, service, subject, operation in (
        (trace_hex, "payment-gateway", PAYMENT_CHARGE, "charge"),
        (trace_hex2, "shipping-carrier", SHIPPING_BOOK, "book"),
    ):
        in_trace = [s for s in finished if s.context.trace_id == int(trace, 16)]
        (consumer,) = [s for s in in_trace if s.name == f"{subject} process"]
        assert consumer.kind == SpanKind.CONSUMER
        assert consumer.resource.attributes["service.name"] == service
        # Its parent is the command service's call to the partner, in the same trace.
        assert consumer.parent is not None
        client = index[consumer.parent.span_id]
        assert (client.name, client.kind) == (f"{service} {operation}", SpanKind.CLIENT)
        assert client.resource.attributes["service.name"] != service
        # The reply's span is named for what it is, not for the caller's inbox.
        replies = [s for s in in_trace if s.resource.attributes["service.name"] == service]
        assert {s.name for s in replies} == {f"{subject} process", "(reply) publish"}
