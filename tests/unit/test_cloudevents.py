"""The wire format: CloudEvents binary mode with blanks filled in."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from broker import replies
from broker.cloudevents import decode_context, encode_context, event_headers
from broker.subjects import command_subject, event_subject, stream_id, type_from_subject
from domain.event_store import RecordedEvent
from domain.metadata import event_metadata, trace_id_of

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_headerless_message_gets_every_attribute() -> None:
    ctx = decode_context("commands.order.place", None)
    assert ctx.type == "order.place"
    assert uuid.UUID(ctx.id)
    assert ctx.correlation_id == ctx.id
    assert ctx.causation_id is None and ctx.traceparent is None and ctx.time is None
    assert encode_context(ctx)["ce-time"].endswith("Z")


def test_headers_win_over_defaults_and_round_trip() -> None:
    headers = {
        "ce-id": "c-1",
        "ce-type": "order.place",
        "ce-source": "shop",
        "ce-time": "2026-01-01T00:00:00Z",
        "ce-correlationid": "corr",
        "traceparent": TRACEPARENT,
        "baggage": "tenant=a",
    }
    ctx = decode_context("commands.order.place", headers)
    assert ctx.trace_id == "0af7651916cd43dd8448eb211c80319c"
    encoded = encode_context(ctx)
    assert {k: encoded[k] for k in headers} == headers
    assert encoded["ce-specversion"] == "1.0"
    assert encoded["content-type"] == "application/json"


def test_event_metadata_keeps_cause_and_trace_for_kurrentdb_clients() -> None:
    ctx = decode_context("commands.order.place", {"ce-id": "cmd", "traceparent": TRACEPARENT})
    meta = json.loads(event_metadata(ctx, "ordermesh.command"))
    assert meta["causation_id"] == "cmd" and meta["correlation_id"] == "cmd"
    assert meta["traceparent"] == TRACEPARENT
    assert meta["$traceId"] == "0xaf7651916cd43dd8448eb211c80319c"
    assert meta["$spanId"] == "0xb7ad6b7169203331"
    # A traceparent of another shape is kept as it came, without ids read out of it.
    for odd in (TRACEPARENT + "-future", TRACEPARENT.replace("-", "_"), "00-ab-cd-01"):
        meta = json.loads(event_metadata(ctx, "ordermesh.command", traceparent=odd))
        assert meta["traceparent"] == odd and "$traceId" not in meta and "$spanId" not in meta


def test_event_headers() -> None:
    ctx = decode_context(
        "commands.order.place",
        {
            "ce-id": "cmd",
            "ce-correlationid": "corr",
            "traceparent": TRACEPARENT,
            "baggage": "tenant=a",
        },
    )
    event = RecordedEvent(
        id=str(uuid.uuid4()),
        stream="order-o-1",
        revision=3,
        position=42,
        type="order.placed",
        data=b"{}",
        metadata=event_metadata(ctx, "ordermesh.command"),
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    h = event_headers(event)
    assert h["ce-id"] == h["Nats-Msg-Id"] == str(event.id)
    assert (h["ce-stream"], h["ce-revision"], h["ce-position"]) == ("order-o-1", "3", "42")
    assert (h["ce-subject"], h["ce-type"], h["ce-source"]) == (
        "o-1",
        "order.placed",
        "ordermesh.command",
    )
    assert (h["ce-correlationid"], h["ce-causationid"]) == ("corr", "cmd")
    assert h["traceparent"] == TRACEPARENT
    assert h["baggage"] == "tenant=a"
    assert h["ce-time"] == "2026-01-01T00:00:00Z"


def test_foreign_metadata_does_not_break_headers() -> None:
    event = RecordedEvent(
        id=str(uuid.uuid4()),
        stream="x",
        revision=0,
        position=1,
        type="t",
        data=b"{}",
        metadata=b"not json",
        recorded_at=datetime.now(UTC),
    )
    assert event_headers(event)["ce-correlationid"] == str(event.id)


def test_subjects() -> None:
    assert command_subject("order.place") == "commands.order.place"
    assert event_subject("order.placed") == "events.order.placed"
    assert type_from_subject("queries.product.get") == "product.get"
    assert stream_id("saga-order_fulfillment-o-1") == "o-1"
    assert stream_id("product-p-1-b") == "p-1-b"


def test_trace_id_of_rejects_garbage() -> None:
    assert trace_id_of("nope") is None and trace_id_of(None) is None


def test_reply_envelopes() -> None:
    assert json.loads(replies.ok({"a": 1})) == {"ok": True, "data": {"a": 1}}
    assert json.loads(replies.error("x", "m")) == {
        "ok": False,
        "error": {"code": "x", "message": "m", "details": None},
    }
