"""JSON log lines: each parses, carries the ids of the message being handled (the same
trace and span as the handler's span), and successful messages log nothing at INFO."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ordermesh.app import App
from ordermesh.logs import configure_logging
from tests.conftest import eventually, request
from tests.integration.test_saga import create_product
from tests.integration.test_traces import client_request, only


def json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


async def test_a_handlers_log_line_carries_its_spans_ids(
    traced_app: App, nc: NATS, spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_product(nc, "p-1", 10)
    capsys.readouterr()
    configure_logging("ordermesh-test", fmt="json", level="INFO")
    try:
        trace_hex, reply = await client_request(
            nc,
            "order.place",
            {
                "order_id": "o-1",
                "customer_id": "c-1",
                "items": [{"product_id": "p-9", "quantity": 1}],
            },
        )
        logging.getLogger("nats.aio.client").warning("a stdlib record")
    finally:
        configure_logging("tests")
    assert reply["error"]["code"] == "product_not_found"
    lines = json_lines(capsys.readouterr().err)
    [refusal] = [line for line in lines if "refused" in line["message"]]
    handled = only(
        [s for s in spans.get_finished_spans() if s.context.trace_id == int(trace_hex, 16)],
        "order.place process",
    )
    assert refusal["level"] == "WARNING"
    assert refusal["service"] == "ordermesh-test"
    assert refusal["trace_id"] == trace_hex
    assert refusal["span_id"] == f"{handled.context.span_id:016x}"
    assert refusal["correlation_id"]
    assert refusal["message_type"] == "order.place"
    assert "p-9" in refusal["message"] and "customer_id" not in json.dumps(refusal)
    [stdlib] = [line for line in lines if line["message"] == "a stdlib record"]
    assert stdlib["level"] == "WARNING" and stdlib["service"] == "ordermesh-test"


async def test_successful_messages_log_nothing_at_info(
    traced_app: App, nc: NATS, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_product(nc, "p-1", 1000)

    async def projected() -> bool:
        reply = await request(nc, "queries.product.get", {"product_id": "p-1"})
        return bool(reply["ok"])

    # The read model is eventually consistent: a query right after the create may refuse
    # (and log that it did) before the product is projected.
    await eventually(projected)
    capsys.readouterr()
    configure_logging("ordermesh-test", fmt="json", level="INFO")
    try:
        for i in range(20):
            body = {"product_id": "p-1", "quantity": i + 1}
            assert (await request(nc, "commands.product.restock", body))["ok"]
            assert (await request(nc, "queries.product.get", {"product_id": "p-1"}))["ok"]
    finally:
        configure_logging("tests")
    assert json_lines(capsys.readouterr().err) == []
