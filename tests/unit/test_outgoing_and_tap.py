"""What the CLI sends and how the tap reads: pure functions, no NATS."""

from __future__ import annotations

import json

import pytest

from broker.subjects import type_from_subject
from ordermesh.outgoing import BadBody, build, child_traceparent, parse_header
from ordermesh.tap.filters import Filter, subject_matches
from ordermesh.tap.message import REPLY, Request, Tapped, kind_of
from ordermesh.tap.render import json_line, line, summary
from ordermesh.tap.session import DEFAULT_SUBJECTS

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


def partner_request() -> Tapped:
    """``partners.payment.charge`` as the command service sends it: FastStream's headers."""
    body = {"payment_id": "pay-o-1", "order_id": "o-1", "amount": "5.00", "method": "card"}
    headers = {"correlation_id": "k-partner-1", "traceparent": PARENT}
    return Tapped(
        "partners.payment.charge",
        json.dumps(body).encode(),
        headers,
        kind=kind_of("partners.payment.charge"),
        reply="_INBOX.command.x.1",
    )


def partner_reply(request: Tapped, body: bytes) -> Tapped:
    asked = Request(request.subject, request.type, request.correlation_id, request.trace_id, 0.0)
    return Tapped(
        "_INBOX.command.x.1",
        body,
        {"correlation_id": "k-partner-1"},
        kind=REPLY,
        request=asked,
        latency_ms=3.25,
    )


def test_a_tap_with_no_subject_watches_the_partners() -> None:
    assert "partners.>" in DEFAULT_SUBJECTS
    assert subject_matches("partners.>", "partners.shipping.cancel")


def test_a_partner_request_reads_like_a_command() -> None:
    request = partner_request()
    assert request.kind == "partner"
    assert request.type == "payment.charge"  # the request model's TYPE, not the subject
    assert request.correlation_id == "k-partner-1"  # FastStream's header
    assert request.trace_id == PARENT.split("-")[1]
    assert request.aggregate_id == "o-1"
    text = line(request, colour=False)
    assert text.split("  ")[1:4] == ["PTNR", "partners.payment.charge", "payment.charge"]
    assert "corr=k-partne" in text and "trace=4bf92f35" in text and "method=card" in text
    coloured = line(request, colour=True)
    assert "\x1b[96mPTNR" in coloured
    as_json = json.loads(json_line(request))
    assert (as_json["kind"], as_json["type"]) == ("partner", "payment.charge")
    assert as_json["body"]["payment_id"] == "pay-o-1"
    # ce-* headers, when a sender sets them, still win.
    ours = Tapped("partners.payment.charge", b"{}", {"ce-type": "x.y", "ce-correlationid": "k"})
    ours.kind = "partner"
    assert (ours.type, ours.correlation_id) == ("x.y", "k")
    # --type 'payment.*' shows the partner's calls beside the payment commands.
    assert Filter(types=("payment.*",))(request)
    assert Filter(correlation="k-partner-1")(request)


def test_a_partner_reply_shows_the_answer_and_an_unreadable_request_shows_red() -> None:
    request = partner_request()
    declined = partner_reply(
        request,
        b'{"payment_id": "pay-o-1", "status": "declined", "charge_id": null, "reason": "no"}',
    )
    assert not declined.failed  # a business answer, not an error
    assert declined.type == "payment.charge reply"
    assert declined.correlation_id == "k-partner-1"
    text = line(declined, colour=False)
    assert "REP" in text and "3.2ms" in text
    assert text.endswith("payment_id=pay-o-1 status=declined charge_id=null reason=no")
    as_json = json.loads(json_line(declined))
    assert as_json["kind"] == "reply" and as_json["request_subject"] == "partners.payment.charge"
    assert as_json["latency_ms"] == 3.25 and as_json["body"]["status"] == "declined"
    assert Filter(types=("payment.charge*",))(declined)

    garbled = partner_reply(
        request, b'{"ok": false, "error": {"code": "malformed_json", "message": "m"}}'
    )
    assert garbled.failed
    assert line(garbled, colour=False).endswith("error code=malformed_json message=m")
    assert line(garbled, colour=True).split("  ")[1].startswith("\x1b[31m")  # red
