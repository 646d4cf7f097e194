"""Every metric family of the contract, after a short mixed workload, scraped from the
real /metrics endpoint; exemplars in OpenMetrics; ``promtool check metrics`` clean."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from broker.stream_gauges import StreamGauges
from infra.nats_server import EmbeddedNatsServer, free_port
from ordermesh.app import SERVICES, App
from telemetry.metrics import appended_position
from tests.conftest import FAST, eventually, request, settings_for
from tests.contract import ORDERMESH_METRICS
from tests.integration.test_api import Subscriber, data, gql
from tests.integration.test_saga import create_product, place, settled
from tests.stack.tools import require_tool

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

#: The contract (tests/contract.py), by OpenMetrics family name (a counter's without
#: ``_total``) → the labels every sample of it carries.
FAMILIES = {
    (name.removesuffix("_total") if family.kind == "counter" else name): family.labels
    for name, family in ORDERMESH_METRICS.items()
}
#: Histograms observed inside a trace, so with an exemplar (a WebSocket connection's
#: duration belongs to no request).
HISTOGRAMS = {
    name
    for name, family in ORDERMESH_METRICS.items()
    if family.kind == "histogram" and not name.startswith("ordermesh_websocket_")
}


@pytest.fixture
async def metered_app(
    spans: InMemorySpanExporter, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> AsyncIterator[App]:
    settings = settings_for(nats_server, tmp_path / "data", saga=FAST, metrics_port=free_port())
    # A process has one event store; this suite's process has had many, each from 0.
    appended_position.value = 0
    application = App(settings, SERVICES)
    await application.start()
    try:
        yield application
    finally:
        await application.stop()


def scrape(url: str, accept: str | None = None) -> str:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def workload(app: App, nc: NATS) -> None:
    await create_product(nc, "p-1", 10)
    await place(nc, "o-ok", [("p-1", 1)])
    await place(nc, "o-declined", [("p-1", 1)], payment_method="declined-card")
    await place(nc, "o-flaky", [("p-1", 1)], payment_method="flaky-card")
    bad = await request(nc, "commands.order.place", {"customer_id": "c-1", "items": []})
    assert bad["error"]["code"] == "validation_error"
    assert (await request(nc, "queries.order.list", {}))["ok"]
    assert not (await request(nc, "queries.order.get", {"order_id": "o-none"}))["ok"]
    # The monitor's API: a query, a refused mutation, and a WebSocket session.
    assert data(await gql(app, "{ dashboardStats { commandsExecuted } }"))
    assert (await gql(app, 'mutation { cancelOrder(orderId: "o-none", reason: "x") }'))["errors"]
    subscriber = await Subscriber.connect(app)
    await subscriber.socket.close()
    # Not ours: no headers, not JSON. It must end in the DLQ, not block the projections.
    await nc.jetstream().publish("events.foreign.thing", b"\x00garbage")
    await settled(nc, "o-ok")
    await settled(nc, "o-declined")
    await settled(nc, "o-flaky")
    assert app.store is not None
    await app.store.read_all(0, 10)

    async def dead_lettered() -> bool:
        info = await nc.jetstream().stream_info("DLQ")
        return bool(info.state.messages >= 2)  # once per consumer: read models and saga

    await eventually(dead_lettered)
    for component in app.components:
        if isinstance(component, StreamGauges):
            await component.refresh()  # rather than wait for its next round


async def test_every_family_has_samples_with_its_labels_and_exemplars(
    metered_app: App, nc: NATS
) -> None:
    assert metered_app.metrics is not None
    url = metered_app.metrics.url
    started = value("ordermesh_saga_started_total", saga_type="order_fulfillment")
    done = value(
        "ordermesh_saga_completed_total", saga_type="order_fulfillment", status="completed"
    )
    failed = value("ordermesh_saga_completed_total", saga_type="order_fulfillment", status="failed")
    declined = value(
        "ordermesh_command_errors_total", command_type="payment.process", code="payment_declined"
    )
    saga = {"saga_type": "order_fulfillment"}
    retries = value("ordermesh_saga_step_retries_total", **saga, step="process_payment")
    released = value(
        "ordermesh_saga_compensations_total", **saga, action="release_inventory", outcome="done"
    )
    cancelled = value("ordermesh_order_cancelled_total", reason="payment_declined")

    await workload(metered_app, nc)

    text = await asyncio.to_thread(scrape, url, OPENMETRICS)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, labels in FAMILIES.items():
        assert name in families, name
        samples = families[name].samples
        assert samples, name
        for sample in samples:
            assert labels <= set(sample.labels), (name, sample.labels)

    def samples(name: str) -> list[Sample]:
        return list(families[name].samples)

    def label_values(name: str, label: str) -> set[str]:
        return {s.labels[label] for s in samples(name) if label in s.labels}

    assert {"order.place", "inventory.reserve", "payment.process", "shipment.arrange"} <= (
        label_values("ordermesh_command_dispatched", "command_type")
    )
    # Fault series exist at 0 before any fault, so the first burst shows in rate().
    assert (
        value(
            "ordermesh_command_errors_total", command_type="shipment.cancel", code="internal_error"
        )
        == 0
    )
    assert ("shipment.cancel", "internal_error") in {
        (s.labels["command_type"], s.labels["code"]) for s in samples("ordermesh_command_errors")
    }
    assert ("order.place", "validation_error") in {
        (s.labels["command_type"], s.labels["code"]) for s in samples("ordermesh_command_errors")
    }
    assert {"order.placed", "order_fulfillment.completed", "payment.declined"} <= label_values(
        "ordermesh_event_stored", "event_type"
    )
    assert {"products+orders+sagas", "saga_inbox"} <= label_values(
        "ordermesh_event_processing_duration_seconds", "consumer"
    )
    assert {"order.list", "order.get"} <= label_values("ordermesh_query_executed", "query_type")
    assert {"append", "read_stream", "read_all", "subscribe"} <= label_values(
        "ordermesh_eventstore_operation_duration_seconds", "operation"
    )
    assert {"products", "orders", "sagas", "saga_inbox"} <= label_values(
        "ordermesh_projection_lag_seconds", "projection"
    )
    # A foreign subject becomes "events.other": nobody outside can mint label values.
    assert "events.other" in label_values("ordermesh_dlq_messages", "subject")
    assert ("order.get", "order_not_found") in {
        (s.labels["query_type"], s.labels["code"]) for s in samples("ordermesh_query_errors")
    }
    assert any(name.startswith("process_") for name in families)
    assert any(name.startswith("python_gc_") for name in families)

    # Business counts moved by exactly this workload.
    assert value("ordermesh_saga_started_total", saga_type="order_fulfillment") == started + 3
    assert (
        value("ordermesh_saga_completed_total", saga_type="order_fulfillment", status="completed")
        == done + 2
    )
    # flaky-card fails twice, then pays; declined-card releases its stock and cancels.
    assert value("ordermesh_saga_step_retries_total", **saga, step="process_payment") == retries + 2
    assert (
        value(
            "ordermesh_saga_compensations_total", **saga, action="release_inventory", outcome="done"
        )
        == released + 1
    )
    assert value("ordermesh_order_cancelled_total", reason="payment_declined") == cancelled + 1
    steps = label_values("ordermesh_saga_step_duration_seconds", "step")
    assert steps == {"reserve_inventory", "process_payment", "arrange_shipping", "confirm_order"}
    # Every stored event reached JetStream and every projection: the positions agree.
    head = value("ordermesh_eventstore_head_position")
    projections = ("products", "orders", "sagas", "saga_inbox")

    async def caught_up() -> bool:
        positions = [value("ordermesh_projection_position", projection=p) for p in projections]
        return value("ordermesh_relay_position") == head and positions == [head] * 4

    assert head > 0
    await eventually(caught_up)
    assert value("ordermesh_projection_backlog_messages", consumer="products+orders+sagas") == 0
    assert value("ordermesh_jetstream_stream_messages", stream="DLQ") >= 2
    assert value("ordermesh_jetstream_stream_messages", stream="EVENTS") > 0
    assert value("ordermesh_jetstream_stream_bytes", stream="EVENTS") > 0
    assert (
        value("ordermesh_saga_completed_total", saga_type="order_fulfillment", status="failed")
        == failed + 1
    )
    assert value("ordermesh_saga_active", saga_type="order_fulfillment") == 0
    # Unlabelled gauges read 0 until set: the relay's lag is set at each ack, and an event
    # is always older than its ack.
    assert value("ordermesh_relay_lag_seconds") > 0
    assert (
        value(
            "ordermesh_command_errors_total",
            command_type="payment.process",
            code="payment_declined",
        )
        == declined + 1
    )

    # Latency spikes link to traces.
    for name in HISTOGRAMS:
        exemplars = [s.exemplar for s in samples(name) if s.exemplar is not None]
        assert exemplars, name
        for exemplar in exemplars:
            assert re.fullmatch(r"[0-9a-f]{32}", exemplar.labels["trace_id"]), exemplar

    # Low cardinality: no order id ever became a label value.
    for family in families.values():
        for sample in family.samples:
            assert not any(v.startswith("o-") for v in sample.labels.values()), sample


async def test_promtool_finds_nothing_wrong(metered_app: App, nc: NATS) -> None:
    promtool = require_tool("promtool")
    await workload(metered_app, nc)
    assert metered_app.metrics is not None
    text = await asyncio.to_thread(scrape, metered_app.metrics.url)
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0 and out.decode().strip() == "", out.decode()
