"""What the CLI sends and how the tap reads: pure functions, no NATS."""

from __future__ import annotations

import json

import pytest

from broker.subjects import type_from_subject
from ordermesh.outgoing import BadBody, build, child_traceparent, parse_header
from ordermesh.tap.filters import Filter, subject_matches
from ordermesh.tap.message import Tapped, kind_of
from ordermesh.tap.render import line, summary

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_child_traceparent_joins_the_trace_and_keeps_its_sampling_flag() -> None:
    child = child_traceparent(PARENT)
    assert child.split("-")[1] == PARENT.split("-")[1]
    assert child.split("-")[2] != PARENT.split("-")[2]
    assert child.endswith("-01")
    unsampled = child_traceparent(PARENT[:-2] + "00")
    assert unsampled.endswith("-00")
    fresh = child_traceparent(None)
    assert len(fresh.split("-")[1]) == 32 and fresh.endswith("-01")
    assert child_traceparent("garbage").endswith("-01")


def test_build_makes_a_cloudevent_and_reports_what_was_really_sent() -> None:
    out = build(
        "commands.order.place",
        '{"order_id": "o-1"}',
        traceparent=PARENT,
        extra_headers={"ce-id": "mine", "X-Origin": "laptop"},
    )
    assert out.headers["ce-type"] == "order.place"
    assert out.headers["ce-source"] == "cli"
    assert out.headers["ce-subject"] == "o-1"
    assert out.message_id == "mine" and out.headers["X-Origin"] == "laptop"
    assert out.trace_id == PARENT.split("-")[1]
    assert json.loads(out.body) == {"order_id": "o-1"}
    with pytest.raises(BadBody):
        build("x.y", "{nope", traceparent=PARENT)
    assert parse_header("K: v") == ("K", "v")
    with pytest.raises(ValueError):
        parse_header("novalue")


def test_subjects_types_and_kinds() -> None:
    assert type_from_subject("dlq.events.order.placed") == "order.placed"
    assert type_from_subject("sagas.order_fulfillment.started") == "order_fulfillment.started"
    assert kind_of("dlq.events.x.y") == "dlq" and kind_of("whatever") == "other"
    assert subject_matches("events.>", "events.order.placed")
    assert not subject_matches("events.>", "events")
    assert subject_matches("events.*.placed", "events.order.placed")
    assert not subject_matches("events.*", "events.order.placed")


def test_tapped_messages_never_fail_to_decode() -> None:
    binary = Tapped("raw.x", b"\xff\x00")
    assert not binary.is_json and binary.raw_text().startswith("base64:")
    assert "raw_base64" in binary.as_json()
    reply = Tapped("_INBOX.a", b'{"ok": false, "error": {"code": "x_y", "message": "m"}}')
    assert reply.failed
    assert summary(Tapped("e.x", b'{"a": 1, "b": [1, 2], "c": {"d": 1}}')) == "a=1 b=[2] c={…}"
    text = line(Tapped("events.order.placed", b"{}", {"ce-type": "order.placed"}), colour=False)
    assert "events.order.placed" in text and "\x1b" not in text
    only_orders = Filter(types=("order.*",))
    assert only_orders(Tapped("e", b"", {"ce-type": "order.placed"}))
    assert not only_orders(Tapped("e", b"", {"ce-type": "product.created"}))
