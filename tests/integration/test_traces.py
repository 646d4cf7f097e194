"""One trace per order: every hop of a placed order, through the store, the relay, the
projections and the saga, in the trace of the client's request."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from telemetry import tracing
from tests.conftest import eventually, request, settings_for
from tests.integration.test_saga import create_product, settled


async def client_request(
    nc: NATS, command_type: str, body: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """What ``ordermesh request`` does: a client span, its traceparent in the headers."""
    with tracing.span(f"{command_type} send", kind=SpanKind.PRODUCER) as span:
        traceparent = tracing.traceparent_of(span)
        assert traceparent is not None
        reply = await request(
            nc, f"commands.{command_type}", body, headers={"traceparent": traceparent}
        )
    return traceparent.split("-")[1], reply


def by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


def parent_of(span: ReadableSpan, index: dict[int, ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    return index[span.parent.span_id]


def only(spans: list[ReadableSpan], name: str, **attributes: Any) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [s.name for s in found])
    return found[0]


async def test_a_placed_order_is_one_trace_through_store_relay_projections_and_saga(
    traced_app: App, nc: NATS, spans: InMemorySpanExporter
) -> None:
    await create_product(nc, "p-1", 10)
    trace_hex, reply = await client_request(
        nc,
        "order.place",
        {"order_id": "o-1", "customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 2}]},
    )
    assert reply["ok"], reply
    await settled(nc, "o-1")
    trace_id = int(trace_hex, 16)

    def lifecycle_applied() -> bool:
        names = [s.name for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
        return "order_fulfillment.completed process" in names and "order.confirmed process" in names

    async def settled_spans() -> bool:
        return lifecycle_applied()

    await eventually(settled_spans)
    everything = list(spans.get_finished_spans())
    trace = [s for s in everything if s.context.trace_id == trace_id]
    index = by_id(trace)

    # Nothing of this order's lies in another trace: the others are the product's
    # creation and the test's own polling queries.
    other_roots = {
        s.name for s in everything if s.context.trace_id != trace_id and s.parent is None
    }
    assert other_roots == {"product.create process", "order.get process"}

    # Every parent is in the trace, except the client's root span.
    roots = [s for s in trace if s.parent is None]
    assert [r.name for r in roots] == ["order.place send"]
    for s in trace:
        if s.parent is not None:
            assert s.parent.span_id in index, f"{s.name}: parent missing"
        assert "_INBOX" not in s.name and "o-1" not in s.name, s.name

    # client → command → append → relay → projection, and → saga.
    handled = only(trace, "order.place process")
    assert parent_of(handled, index).name == "order.place send"
    assert handled.kind is SpanKind.CONSUMER
    attrs = handled.attributes or {}
    assert attrs["messaging.system"] == "nats"
    assert attrs["messaging.destination.name"] == "commands.order.place"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["order.id"] == "o-1" and attrs["order.total"] == "20.00"
    assert attrs["items_count"] == 1
    assert [e.name for e in handled.events] == ["order_processed"]
    append = [s for s in trace if s.name == "eventstore.append" and parent_of(s, index) is handled]
    assert len(append) == 1
    published = only(trace, "order.placed publish")
    assert parent_of(published, index) is append[0]
    assert published.kind is SpanKind.PRODUCER
    assert (published.attributes or {})["messaging.destination.name"] == "events.order.placed"
    applied = [s for s in trace if s.name == "order.placed process"]
    assert {parent_of(s, index).name for s in applied} == {"order.placed publish"}
    assert {(s.attributes or {})["messaging.consumer.group.name"] for s in applied} == {
        "products+orders+sagas",
        "saga_inbox",
    }

    started = only(trace, "order_fulfillment.start")
    assert parent_of(started, index) is published
    for step, command in (
        ("reserve_inventory", "inventory.reserve"),
        ("process_payment", "payment.process"),
        ("arrange_shipping", "shipment.arrange"),
        ("confirm_order", "order.confirm"),
    ):
        step_span = only(trace, f"order_fulfillment.{step}")
        assert parent_of(step_span, index) is published
        sent = only(trace, f"{command} send")
        assert parent_of(sent, index) is step_span
        served = only(trace, f"{command} process")
        assert parent_of(served, index) is sent
        # The step's transition is stored under it, and published as a lifecycle message.
        stored = [
            s for s in trace if s.name == "eventstore.append" and parent_of(s, index) is step_span
        ]
        assert stored, step

    lifecycle = [
        s for s in trace if s.name.startswith("order_fulfillment.") and s.name.endswith(" publish")
    ]
    assert Counter(s.name for s in lifecycle) == Counter(
        {
            "order_fulfillment.started publish": 1,
            "order_fulfillment.step_started publish": 4,
            "order_fulfillment.step_completed publish": 4,
            "order_fulfillment.completed publish": 1,
        }
    )
    for s in lifecycle:
        assert (s.attributes or {})["messaging.destination.name"].startswith(
            "sagas.order_fulfillment."
        )
        assert parent_of(s, index).name == "eventstore.append"
    assert all(s.status.status_code is not StatusCode.ERROR for s in trace)


async def test_a_refused_command_marks_its_span_failed(
    traced_app: App, nc: NATS, spans: InMemorySpanExporter
) -> None:
    trace_hex, reply = await client_request(
        nc,
        "order.place",
        {"order_id": "o-1", "customer_id": "c-1", "items": [{"product_id": "nope", "quantity": 1}]},
    )
    assert reply["error"]["code"] == "product_not_found"
    handled = only(
        [s for s in spans.get_finished_spans() if s.context.trace_id == int(trace_hex, 16)],
        "order.place process",
    )
    assert handled.status.status_code is StatusCode.ERROR
    assert (handled.attributes or {})["error.type"] == "product_not_found"
    assert any(e.name == "exception" for e in handled.events)


async def test_unknown_subjects_never_become_span_names(
    traced_app: App, nc: NATS, spans: InMemorySpanExporter
) -> None:
    reply = await request(nc, "commands.order.o-123-secret", {})
    assert reply["error"]["code"] == "unknown_command"
    names = {s.name for s in spans.get_finished_spans()}
    assert "unknown process" in names
    assert not any("o-123" in n for n in names)


async def test_tracing_off_still_passes_the_callers_trace_along(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    """No exporter configured: no spans, but the caller's traceparent reaches the events."""
    assert not tracing.enabled()
    application = App(settings_for(nats_server, tmp_path / "data"), ("command", "relay"))
    await application.start()
    try:
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        reply = await request(
            nc,
            "commands.product.create",
            {"product_id": "p-1", "name": "W", "price": "1.00"},
            headers={"traceparent": traceparent},
        )
        assert reply["ok"]
        assert application.store is not None
        [event] = await application.store.read_stream("product-p-1")
        assert json.loads(event.metadata)["traceparent"] == traceparent
    finally:
        await application.stop()
