"""The monitor's buffer: the ring's bound, statistics over a sliding window, payload
capping, replies attached to their requests, and fan-out that never waits."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ordermesh.monitor.buffer import (
    PAYLOAD_CAP,
    TOPICS,
    MessageBuffer,
    cap_payload,
    monitored,
)
from ordermesh.tap.message import REPLY, Request, Tapped, kind_of

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tapped(
    subject: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    reply: str | None = None,
    received: datetime = T0,
    data: bytes | None = None,
) -> Tapped:
    raw = data if data is not None else json.dumps(body if body is not None else {}).encode()
    return Tapped(
        subject, raw, headers or {}, received=received, kind=kind_of(subject), reply=reply
    )


def event(i: int, type_: str = "order.placed", **kw: Any) -> Tapped:
    return tapped(
        f"events.{type_}",
        {"order_id": f"o-{i}"},
        headers={"ce-id": f"e-{i}", "ce-type": type_},
        **kw,
    )


def command(i: int, type_: str = "order.place") -> Tapped:
    return tapped(
        f"commands.{type_}",
        {"order_id": f"o-{i}"},
        headers={"ce-id": f"c-{i}", "ce-type": type_, "ce-correlationid": f"k-{i}"},
        reply=f"_INBOX.test.{i}",
    )


def partner_call(i: int, subject: str = "partners.payment.charge") -> Tapped:
    """A request as the command service sends it to a partner: FastStream's headers, no
    ``ce-*`` (``broker/partner_clients.py``)."""
    return tapped(
        subject,
        {"payment_id": f"pay-o-{i}", "order_id": f"o-{i}", "amount": "5.00", "method": "card"},
        headers={
            "correlation_id": f"k-{i}",
            "content-type": "application/json",
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        },
        reply=f"_INBOX.command.{i}",
    )


def reply_to(request: Tapped, body: dict[str, Any], *, latency_ms: float = 12.5) -> Tapped:
    assert request.reply is not None
    asked = Request(request.subject, request.type, request.correlation_id, None, 0.0)
    return Tapped(
        request.reply,
        json.dumps(body).encode(),
        kind=REPLY,
        request=asked,
        latency_ms=latency_ms,
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the ring ------------------------------------------------------------------------------


def test_the_ring_keeps_the_newest_1000_of_1500() -> None:
    buffer = MessageBuffer()
    before = sample("ordermesh_monitor_messages_total", topic="events")
    for i in range(1500):
        buffer.take(event(i))
    assert len(buffer) == 1000
    kept = buffer.messages(limit=5000)
    assert [m.id for m in kept] == [f"e-{i}" for i in range(500, 1500)]
    # Newest last, as a stream reads; ``limit`` takes the newest.
    assert [m.id for m in buffer.messages(limit=3)] == ["e-1497", "e-1498", "e-1499"]
    assert buffer.messages(limit=0) == []
    assert sample("ordermesh_monitor_messages_total", topic="events") == before + 1500
    # The statistics count everything seen, not what the ring still holds.
    events = next(s for s in buffer.topic_stats() if s.topic == "events")
    assert events.count == 1500


def test_messages_of_one_topic() -> None:
    buffer = MessageBuffer(capacity=10)
    for i in range(4):
        buffer.take(event(i))
        buffer.take(command(i))
    assert [m.id for m in buffer.messages("commands", limit=2)] == ["c-2", "c-3"]
    assert [m.topic for m in buffer.messages("events")] == ["events"] * 4
    assert buffer.messages("dlq") == []


# -- statistics ----------------------------------------------------------------------------


def test_counts_rates_and_last_seen_over_a_sliding_window() -> None:
    clock = FakeClock(1000.0)
    buffer = MessageBuffer(window_seconds=60, clock=clock)
    for i in range(30):
        buffer.take(event(i, received=T0 + timedelta(seconds=i)))
    clock.now = 1030.5
    for i in range(30, 45):
        buffer.take(event(i, "order.confirmed"))
    buffer.take(command(99))

    clock.now = 1031.0
    stats = {s.topic: s for s in buffer.topic_stats()}
    assert list(stats) == list(TOPICS)  # every topic, seen or not
    assert stats["events"].count == 45
    assert stats["events"].rate_per_minute == pytest.approx(45.0)
    assert stats["commands"].count == 1 and stats["commands"].rate_per_minute == 1.0
    assert stats["queries"].count == 0 and stats["queries"].last_seen is None
    assert stats["events"].last_seen == T0  # the newest message's arrival

    by_type = {(s.topic, s.type): s for s in buffer.type_stats()}
    assert list(by_type) == [
        ("commands", "order.place"),
        ("events", "order.confirmed"),
        ("events", "order.placed"),
    ]
    placed = by_type[("events", "order.placed")]
    assert placed.count == 30 and placed.last_seen == T0 + timedelta(seconds=29)
    assert [s.type for s in buffer.type_stats("events")] == ["order.confirmed", "order.placed"]

    # 70 s on: the first 30 have left the window, the next 15 have not.
    clock.now = 1070.0
    events = next(s for s in buffer.topic_stats() if s.topic == "events")
    assert events.count == 45 and events.rate_per_minute == pytest.approx(15.0)
    clock.now = 1200.0
    assert all(s.rate_per_minute == 0 for s in buffer.type_stats())
    assert next(s for s in buffer.topic_stats() if s.topic == "events").count == 45


def test_the_rate_is_per_minute_whatever_the_window() -> None:
    clock = FakeClock(500.0)
    buffer = MessageBuffer(window_seconds=10, clock=clock)
    for i in range(20):
        buffer.take(event(i))
    assert buffer.topic_stats()[1].rate_per_minute == pytest.approx(120.0)


def test_errors_are_replies_that_say_ok_false() -> None:
    buffer = MessageBuffer()
    good, bad, refused = command(1), command(2, "payment.process"), command(3)
    for request in (good, bad, refused):
        buffer.take(request)
    buffer.take(reply_to(good, {"ok": True, "data": {}}))
    buffer.take(reply_to(bad, {"ok": False, "error": {"code": "payment_declined"}}))
    buffer.take(reply_to(refused, {"ok": False, "error": {"code": "validation_error"}}))

    commands = next(s for s in buffer.topic_stats() if s.topic == "commands")
    assert commands.count == 3 and commands.errors == 2
    by_type = {s.type: s for s in buffer.type_stats("commands")}
    assert by_type["order.place"].errors == 1
    assert by_type["payment.process"].errors == 1
    # Replies are not messages of their own.
    assert len(buffer) == 3
    assert all(m.topic == "commands" for m in buffer.messages())


def test_a_reply_fills_in_latency_and_ok_on_its_request() -> None:
    buffer = MessageBuffer()
    first, second = command(1), command(2)
    buffer.take(first)
    buffer.take(event(1))
    buffer.take(second)
    assert [m.ok for m in buffer.messages()] == [None, None, None]

    buffer.take(reply_to(second, {"ok": False, "error": {"code": "x"}}, latency_ms=3.0))
    buffer.take(reply_to(first, {"ok": True}, latency_ms=7.25))
    kept = buffer.messages()
    assert [m.id for m in kept] == ["c-1", "e-1", "c-2"]  # in place, order unchanged
    assert (kept[0].latency_ms, kept[0].ok) == (7.25, True)
    assert (kept[2].latency_ms, kept[2].ok) == (3.0, False)
    assert kept[1].latency_ms is None and kept[1].ok is None
    # A second reply on the same inbox (or one for a request never seen) changes nothing.
    buffer.take(reply_to(first, {"ok": False}))
    assert buffer.messages()[0].ok is True


def test_a_request_without_ce_id_still_gets_its_reply() -> None:
    buffer = MessageBuffer()
    plain = tapped("queries.order.get", {"order_id": "o-1"}, reply="_INBOX.plain.1")
    buffer.take(plain)
    buffer.take(reply_to(plain, {"ok": True, "data": {}}, latency_ms=1.5))
    (stored,) = buffer.messages()
    assert stored.topic == "queries" and stored.latency_ms == 1.5 and stored.ok is True


def test_a_reply_after_its_request_left_the_ring_still_counts() -> None:
    buffer = MessageBuffer(capacity=2)
    request = command(1)
    buffer.take(request)
    buffer.take(event(1))
    buffer.take(event(2))
    buffer.take(reply_to(request, {"ok": False, "error": {"code": "x"}}))
    assert [m.id for m in buffer.messages()] == ["e-1", "e-2"]
    assert next(s for s in buffer.topic_stats() if s.topic == "commands").errors == 1


# -- the partners ----------------------------------------------------------------------------


def test_a_partner_call_is_a_request_of_its_own_topic() -> None:
    buffer = MessageBuffer()
    before = sample("ordermesh_monitor_messages_total", topic="partners")
    call = partner_call(1)
    buffer.take(call)
    (msg,) = buffer.messages("partners")
    assert (msg.topic, msg.subject, msg.type) == (
        "partners",
        "partners.payment.charge",
        "payment.charge",
    )
    # FastStream's correlation header, the W3C trace, the order from the body.
    assert (msg.correlation_id, msg.trace_id, msg.aggregate_id) == ("k-1", TRACE_ID, "o-1")
    assert msg.source is None and msg.ok is None and len(msg.id) == 32
    assert sample("ordermesh_monitor_messages_total", topic="partners") == before + 1
    assert buffer.type_stats("partners")[0].type == "payment.charge"

    answer = {"payment_id": "pay-o-1", "status": "approved", "charge_id": "ch-pay-o-1"}
    buffer.take(reply_to(call, answer | {"reason": None}, latency_ms=4.5))
    (answered,) = buffer.messages("partners")
    assert (answered.latency_ms, answered.ok) == (4.5, True)
    assert answered.correlation_id == "k-1"


def test_a_partner_saying_no_is_an_answer_and_an_unreadable_request_an_error() -> None:
    buffer = MessageBuffer()
    declined, refused, unavailable, garbled = (
        partner_call(1),
        partner_call(2, "partners.shipping.book"),
        partner_call(3),
        partner_call(4, "partners.payment.refund"),
    )
    for call in (declined, refused, unavailable, garbled):
        buffer.take(call)
    buffer.take(reply_to(declined, {"payment_id": "pay-o-1", "status": "declined"}))
    buffer.take(reply_to(refused, {"shipment_id": "shp-o-2", "status": "refused"}))
    buffer.take(reply_to(unavailable, {"payment_id": "pay-o-3", "status": "unavailable"}))
    buffer.take(reply_to(garbled, {"ok": False, "error": {"code": "malformed_json"}}))

    assert [m.ok for m in buffer.messages("partners")] == [True, True, True, False]
    partners = next(s for s in buffer.topic_stats() if s.topic == "partners")
    assert partners.count == 4 and partners.errors == 1
    by_type = {s.type: s for s in buffer.type_stats("partners")}
    assert by_type["payment.refund"].errors == 1 and by_type["payment.charge"].errors == 0
    assert by_type["shipping.book"].count == 1
    # A partner's types are its own: the command of the same name is another entry.
    buffer.take(command(9, "payment.refund"))
    assert {(s.topic, s.type) for s in buffer.type_stats()} >= {
        ("commands", "payment.refund"),
        ("partners", "payment.refund"),
    }


def test_no_responders_to_a_partner_call_is_a_failure() -> None:
    buffer = MessageBuffer()
    call = partner_call(1)
    buffer.take(call)
    status = reply_to(call, {})
    status.data = b""
    status.headers = {"Status": "503"}
    buffer.take(status)
    assert buffer.messages()[0].ok is False
    assert next(s for s in buffer.topic_stats() if s.topic == "partners").errors == 1


def test_partner_calls_awaiting_a_reply_are_bounded() -> None:
    buffer = MessageBuffer(max_awaiting=2)
    calls = [partner_call(i) for i in range(3)]
    for call in calls:
        buffer.take(call)
    buffer.take(reply_to(calls[0], {"payment_id": "pay-o-0", "status": "approved"}))
    buffer.take(reply_to(calls[2], {"payment_id": "pay-o-2", "status": "approved"}))
    # The oldest was forgotten: its reply finds nothing to fill in.
    assert [m.ok for m in buffer.messages("partners")] == [None, None, True]


def test_no_responders_is_a_failed_reply() -> None:
    buffer = MessageBuffer()
    request = command(1)
    buffer.take(request)
    status = reply_to(request, {})
    status.data = b""
    status.headers = {"Status": "503"}
    buffer.take(status)
    assert buffer.messages()[0].ok is False


def test_types_are_bounded() -> None:
    buffer = MessageBuffer(max_types=3)
    for i in range(10):
        buffer.take(event(i, f"foreign.t{i}"))
    types = [s.type for s in buffer.type_stats()]
    assert types == ["(other)", "foreign.t0", "foreign.t1", "foreign.t2"]
    assert sum(s.count for s in buffer.type_stats()) == 10


# -- what a message keeps ------------------------------------------------------------------


def test_payload_is_capped_at_4_kib_on_a_character_boundary() -> None:
    body = ("a" + "é" * 3000).encode()  # "é" is 2 bytes: byte 4095 starts one
    msg = monitored(tapped("events.x.y", data=body))
    assert msg is not None
    assert msg.truncated
    assert msg.payload == "a" + "é" * 2047
    assert len(msg.payload.encode()) == 4095 <= PAYLOAD_CAP

    exact = monitored(tapped("events.x.y", data=b"x" * PAYLOAD_CAP))
    assert exact is not None and not exact.truncated and len(exact.payload) == PAYLOAD_CAP
    small = monitored(tapped("events.x.y", {"a": 1}))
    assert small is not None and small.payload == '{"a": 1}' and not small.truncated


def test_binary_payloads_are_base64_within_the_cap() -> None:
    blob = bytes(range(256)) * 40  # 10 KiB, not UTF-8
    text, cut = cap_payload(blob)
    assert cut and text.startswith("base64:") and len(text) <= PAYLOAD_CAP
    assert blob.startswith(base64.b64decode(text.removeprefix("base64:")))
    text, cut = cap_payload(b"\xff\x00\x01")
    assert (text, cut) == ("base64:/wAB", False)
    assert cap_payload(b"") == ("", False)
    # Invalid UTF-8 before the cap is binary, not "text cut short".
    text, cut = cap_payload(b"\xff" + b"a" * 5000)
    assert text.startswith("base64:") and cut


def test_what_a_message_keeps() -> None:
    headers = {
        "ce-id": "e-1",
        "ce-type": "order.placed",
        "ce-source": "ordermesh.command",
        "ce-time": "2025-01-01T10:00:00.5+02:00",
        "ce-correlationid": "k-1",
        "ce-subject": "o-1",
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    }
    msg = monitored(tapped("events.order.placed", {"order_id": "o-1"}, headers=headers))
    assert msg is not None
    assert (msg.id, msg.topic, msg.type, msg.source) == (
        "e-1",
        "events",
        "order.placed",
        "ordermesh.command",
    )
    assert msg.timestamp == datetime(2025, 1, 1, 8, 0, 0, 500000, tzinfo=UTC)
    assert msg.received_at == T0
    assert (msg.trace_id, msg.correlation_id, msg.aggregate_id) == (TRACE_ID, "k-1", "o-1")
    assert msg.headers == headers and msg.ok is None and msg.latency_ms is None

    plain = monitored(tapped("commands.order.place", {"order_id": "o-2"}))
    assert plain is not None
    assert plain.timestamp == T0 and plain.aggregate_id == "o-2" and plain.type == "order.place"
    assert len(plain.id) == 32  # a uuid, as nothing names it
    bad_time = monitored(tapped("events.x", headers={"ce-time": "yesterday"}))
    assert bad_time is not None and bad_time.timestamp == T0
    replayed = tapped("events.x")
    replayed.sequence = 42
    assert (m := monitored(replayed)) is not None and m.id == "events.x#42"


def test_a_dead_letter_is_not_ok_and_has_its_own_id() -> None:
    headers = {"ce-id": "e-1", "Nats-Msg-Id": "products+orders+sagas:events.x:7"}
    msg = monitored(tapped("dlq.events.x", data=b"\x00junk", headers=headers))
    assert msg is not None
    assert (msg.topic, msg.id, msg.ok) == ("dlq", "products+orders+sagas:events.x:7", False)


def test_huge_headers_are_bounded() -> None:
    headers = {f"h{i}": "v" * 5000 for i in range(100)}
    msg = monitored(tapped("events.x", headers=headers))
    assert msg is not None
    assert len(msg.headers) == 64 and all(len(v) == 1024 for v in msg.headers.values())


@pytest.mark.parametrize(
    "subject",
    [
        "ordermesh.heartbeat.ordermesh",
        "_INBOX.abc.def",
        "orders.placed",
        "commands",
        "partners",
        "partner.payment.charge",
        "$JS.API.STREAM.INFO.EVENTS",
    ],
)
def test_only_the_topics_are_monitored(subject: str) -> None:
    assert monitored(tapped(subject)) is None
    buffer = MessageBuffer()
    buffer.take(tapped(subject))
    assert len(buffer) == 0 and all(s.count == 0 for s in buffer.topic_stats())


def test_a_reply_is_never_a_message() -> None:
    request = command(1)
    assert monitored(reply_to(request, {"ok": True})) is None


def test_add_refuses_a_message_of_no_topic() -> None:
    msg = monitored(event(1))
    assert msg is not None
    with pytest.raises(ValueError, match="not a topic"):
        MessageBuffer().add(replace(msg, topic="other"))


# -- fan-out -------------------------------------------------------------------------------


async def test_subscribers_get_their_topic_in_order() -> None:
    buffer = MessageBuffer()
    everything = buffer.subscribe()
    events = buffer.subscribe("events")
    buffer.take(command(1))
    buffer.take(event(1))
    buffer.take(event(2))
    assert [(await anext(everything)).id for _ in range(3)] == ["c-1", "e-1", "e-2"]
    assert [(await anext(events)).id for _ in range(2)] == ["e-1", "e-2"]
    assert everything.pending() == 0 and events.pending() == 0
    with pytest.raises(ValueError, match="not a topic"):
        buffer.subscribe("orders")


async def test_a_full_subscriber_misses_messages_and_the_feed_goes_on() -> None:
    buffer = MessageBuffer()
    slow = buffer.subscribe(maxsize=2)
    fast = buffer.subscribe(maxsize=100)
    before = sample("ordermesh_monitor_dropped_total", reason="subscriber_full")
    for i in range(5):
        buffer.take(event(i))  # synchronous: it cannot wait on anybody
    assert slow.dropped == 3 and fast.dropped == 0
    assert sample("ordermesh_monitor_dropped_total", reason="subscriber_full") == before + 3
    assert [(await anext(slow)).id for _ in range(2)] == ["e-0", "e-1"]
    assert fast.pending() == 5
    assert len(buffer) == 5


async def test_closing_ends_a_waiting_iteration() -> None:
    buffer = MessageBuffer()
    received: list[str] = []

    async def consume() -> None:
        async with buffer.subscribe("events", maxsize=1) as subscription:
            async for msg in subscription:
                received.append(msg.id)
                if len(received) == 1:
                    subscription.close()

    task = asyncio.create_task(consume())
    for _ in range(100):  # let the consumer subscribe (yields, not a wait for time)
        if buffer.subscribers:
            break
        await asyncio.sleep(0)
    assert buffer.subscribers == 1
    buffer.take(event(1))
    await asyncio.wait_for(task, timeout=5)
    assert received == ["e-1"]
    assert buffer.subscribers == 0

    # A subscription closed while full and while waiting also ends.
    full = buffer.subscribe(maxsize=1)
    buffer.take(event(2))
    buffer.take(event(3))
    full.close()
    assert [m async for m in full] == []
    waiting = buffer.subscribe()
    pending = asyncio.create_task(anext(waiting))
    await asyncio.sleep(0)
    waiting.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, timeout=5)
