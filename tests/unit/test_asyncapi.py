"""The published AsyncAPI contract: current, complete, self-contained and faithful."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from faststream.nats import NatsBroker
from typer.testing import CliRunner

from broker import asyncapi as core
from broker.subjects import (
    PAYMENT_CHARGE,
    PAYMENT_GATEWAY,
    PAYMENT_REFUND,
    SHIPPING_BOOK,
    SHIPPING_CANCEL,
    SHIPPING_CARRIER,
    command_subject,
    event_subject,
    query_subject,
)
from domain.catalog import EVENTS
from domain.partners import ChargeReply, ChargeRequest, PaymentGateway, ShippingCarrier
from handlers import COMMAND_MODELS
from ordermesh.asyncapi import (
    PAYMENT_REPLIES,
    SHIPPING_REPLIES,
    PartnerApp,
    asyncapi_document,
    asyncapi_json,
    faststream_document,
    merged_document,
    partner_documents,
)
from ordermesh.cli import app
from projections.queries import QUERY_HANDLERS

#: The nats-server the partners' brokers are given (partners.apps.DEFAULT_URL).
SERVER = "nats://127.0.0.1:4222"
PARTNER_SUBJECTS = {PAYMENT_CHARGE, PAYMENT_REFUND, SHIPPING_BOOK, SHIPPING_CANCEL}

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
REGENERATE = "regenerate with `ordermesh asyncapi --output docs/asyncapi.json`"


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer (RFC 6901); KeyError/IndexError if it leads nowhere."""
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node: Any = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def test_committed_document_is_current() -> None:
    committed = json.loads(DOC_PATH.read_text(encoding="utf-8"))
    assert committed == asyncapi_document(), REGENERATE


def test_cli_prints_the_document() -> None:
    result = CliRunner().invoke(app, ["asyncapi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == asyncapi_json()


def test_every_type_has_a_channel_at_its_subject() -> None:
    addresses = {channel["address"] for channel in asyncapi_document()["channels"].values()}
    expected = {
        *(command_subject(t) for t in COMMAND_MODELS),
        *(query_subject(t) for t in QUERY_HANDLERS),
        *(event_subject(t) for t in EVENTS),
        "dlq.{subject}",
        *PARTNER_SUBJECTS,
    }
    assert expected <= addresses, sorted(expected - addresses)
    assert "sagas.order_fulfillment.step_started" in addresses


def test_every_ref_resolves() -> None:
    assert not dangling_refs(asyncapi_document())


def test_order_place_payload_schema_accepts_what_the_service_accepts() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = asyncapi_document()
    channel = next(
        c for c in doc["channels"].values() if c["address"] == command_subject("order.place")
    )
    (message_ref,) = (m["$ref"] for m in channel["messages"].values())
    payload = resolve(doc, message_ref)["payload"]
    # A root holding the components lets the payload's #/components/... refs resolve.
    validator = jsonschema.Draft7Validator({**payload, "components": doc["components"]})
    body: dict[str, Any] = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "items": [{"product_id": "p-1", "quantity": 2}],
    }
    assert list(validator.iter_errors(body)) == []
    body["items"][0]["quantity"] = -1
    assert list(validator.iter_errors(body)) != []


def dangling_refs(doc: dict[str, Any]) -> list[str]:
    dangling = []
    for ref in set(refs(doc)):
        try:
            resolve(doc, ref)
        except (KeyError, IndexError, ValueError, TypeError):
            dangling.append(ref)
    return sorted(dangling)


# -- the partners: FastStream's description, merged --------------------------------------


def request_message(doc: dict[str, Any], subject: str) -> Any:
    """The one message of the channel at ``subject``, whatever FastStream named them."""
    (channel,) = (c for c in doc["channels"].values() if c["address"] == subject)
    (message,) = channel["messages"].values()
    return resolve(doc, message["$ref"])


@pytest.fixture(scope="module")
def merged() -> dict[str, Any]:
    return asyncapi_document()


@pytest.fixture(scope="module")
def faststream_docs() -> dict[str, dict[str, Any]]:
    return partner_documents()


def test_each_partner_has_its_faststream_document(
    faststream_docs: dict[str, dict[str, Any]],
) -> None:
    assert set(faststream_docs) == {PAYMENT_GATEWAY, SHIPPING_CARRIER}
    addresses = {
        channel["address"]
        for doc in faststream_docs.values()
        for channel in doc["channels"].values()
    }
    assert addresses == PARTNER_SUBJECTS


def test_the_partners_part_is_faststreams_own(
    merged: dict[str, Any], faststream_docs: dict[str, dict[str, Any]]
) -> None:
    """Every channel, operation, message and schema FastStream writes for a partner is in
    the contract as FastStream wrote it: only its server reference is the core's (the same
    nats-server), and the operations gain what FastStream does not say."""
    (server,) = merged["servers"]
    for service, doc in faststream_docs.items():
        (fs_server,) = doc["servers"]
        for key, channel in doc["channels"].items():
            ours = json.dumps(channel).replace(f"#/servers/{fs_server}", f"#/servers/{server}")
            assert merged["channels"][key] == json.loads(ours), (service, key)
        for key, operation in doc["operations"].items():
            assert operation.items() <= merged["operations"][key].items(), (service, key)
        for kind, entries in doc["components"].items():
            for name, value in entries.items():
                assert merged["components"][kind][name] == value, (service, kind, name)


def test_faststream_names_the_partner_messages(merged: dict[str, Any]) -> None:
    """The names FastStream gives a subscriber's channel, operation and message."""
    for subject in PARTNER_SUBJECTS:
        channel = merged["channels"][subject]
        assert channel["address"] == subject
        assert channel["messages"] == {
            "SubscribeMessage": {"$ref": f"#/components/messages/{subject}:SubscribeMessage"}
        }
        assert merged["operations"][subject]["action"] == "receive"
    payload = merged["components"]["messages"][f"{PAYMENT_CHARGE}:SubscribeMessage"]["payload"]
    assert payload == {"$ref": "#/components/schemas/ChargeRequest"}


def test_every_partner_operation_says_its_reply_service_and_queue(merged: dict[str, Any]) -> None:
    replies = {**PAYMENT_REPLIES, **SHIPPING_REPLIES}
    services = dict.fromkeys(PAYMENT_REPLIES, PAYMENT_GATEWAY) | dict.fromkeys(
        SHIPPING_REPLIES, SHIPPING_CARRIER
    )
    for subject in PARTNER_SUBJECTS:
        operation = merged["operations"][subject]
        service, model = services[subject], replies[subject].__name__
        assert operation["tags"] == [{"$ref": f"#/components/tags/{service}"}]
        assert resolve(merged, operation["tags"][0]["$ref"])["name"] == service
        assert operation["bindings"]["nats"]["queue"] == service
        assert service in operation["description"]
        (reply,) = operation["reply"]["messages"]
        message = resolve(merged, resolve(merged, reply["$ref"])["$ref"])
        assert reply["$ref"].startswith(operation["reply"]["channel"]["$ref"] + "/messages/")
        assert message["payload"]["oneOf"] == [
            {"$ref": f"#/components/schemas/{model}"},
            {"$ref": "#/components/schemas/PartnerReplyError"},
        ]
    statuses = merged["components"]["schemas"]["ChargeReply"]["properties"]["status"]["enum"]
    assert statuses == ["approved", "declined", "unavailable", "voided"]


def test_the_reply_models_are_what_the_ports_return(
    faststream_docs: dict[str, dict[str, Any]],
) -> None:
    """The merge's table of replies against domain.partners' ports: the subscriber's
    request model (as FastStream sees it) is a port method's, and its reply is that
    method's return type."""
    ports: list[tuple[type, str]] = [(PaymentGateway, "charge"), (PaymentGateway, "refund")]
    ports += [(ShippingCarrier, "book"), (ShippingCarrier, "cancel")]
    returns = {}
    for port, method in ports:
        hints = get_type_hints(getattr(port, method))
        returns[hints["request"].__name__] = hints["return"]
    for subject, reply in {**PAYMENT_REPLIES, **SHIPPING_REPLIES}.items():
        (doc,) = (
            d
            for d in faststream_docs.values()
            if subject in {c["address"] for c in d["channels"].values()}
        )
        request = request_message(doc, subject)["payload"]["$ref"].rsplit("/", 1)[1]
        assert returns[request] is reply, subject


def test_the_partner_error_envelope_is_the_core_ones_with_three_codes(
    merged: dict[str, Any],
) -> None:
    schemas = merged["components"]["schemas"]
    envelope, error = schemas["PartnerReplyError"], schemas["PartnerError"]
    assert envelope["properties"]["error"] == {"$ref": "#/components/schemas/PartnerError"}
    assert {**envelope, "properties": {}} == {**schemas["ReplyError"], "properties": {}}
    assert error["properties"]["code"]["enum"] == [
        "internal_error",
        "malformed_json",
        "validation_error",
    ]
    assert set(error["properties"]["code"]["enum"]) <= set(schemas["ErrorCode"]["enum"])
    assert error["required"] == ["code", "message"]


def test_a_changed_partner_model_shows_in_the_contract() -> None:
    """The partners' part comes from the brokers' subscribers, not from a copy of them."""

    class ChargeRequestV2(ChargeRequest):
        currency: str

    broker = NatsBroker(SERVER)

    @broker.subscriber(PAYMENT_CHARGE, queue=PAYMENT_GATEWAY)
    async def charge(body: ChargeRequestV2) -> ChargeReply:
        raise NotImplementedError

    doc = merged_document(
        core.asyncapi_document(),
        [PartnerApp(PAYMENT_GATEWAY, broker, {PAYMENT_CHARGE: ChargeReply})],
    )
    payload = resolve(doc, request_message(doc, PAYMENT_CHARGE)["payload"]["$ref"])
    assert payload["title"] == "ChargeRequestV2"
    assert "currency" in payload["properties"]
    assert "currency" in payload["required"]
    assert not dangling_refs(doc)


def test_a_clashing_partner_schema_is_renamed_and_its_references_follow() -> None:
    """A partner model named like a different core schema (here PlaceOrder) keeps its own
    definition under the service's name; one equal to the core's is kept once."""

    class PlaceOrder(ChargeRequest):
        pass

    broker = NatsBroker(SERVER)

    @broker.subscriber(PAYMENT_CHARGE, queue=PAYMENT_GATEWAY)
    async def charge(body: PlaceOrder) -> ChargeReply:
        raise NotImplementedError

    core_doc = core.asyncapi_document()
    doc = merged_document(
        core_doc, [PartnerApp(PAYMENT_GATEWAY, broker, {PAYMENT_CHARGE: ChargeReply})]
    )
    schemas = doc["components"]["schemas"]
    assert schemas["PlaceOrder"] == core_doc["components"]["schemas"]["PlaceOrder"]
    renamed = f"{PAYMENT_GATEWAY}.PlaceOrder"
    assert schemas[renamed] == faststream_document(broker)["components"]["schemas"]["PlaceOrder"]
    message = request_message(doc, PAYMENT_CHARGE)
    assert message["payload"] == {"$ref": f"#/components/schemas/{renamed}"}
    assert not dangling_refs(doc)


def test_a_subject_served_twice_is_refused() -> None:
    broker = NatsBroker(SERVER)

    @broker.subscriber(command_subject("order.place"))
    async def place(body: ChargeRequest) -> ChargeReply:
        raise NotImplementedError

    with pytest.raises(ValueError, match="described by ordermesh and by"):
        merged_document(
            core.asyncapi_document(),
            [PartnerApp(PAYMENT_GATEWAY, broker, {command_subject("order.place"): ChargeReply})],
        )


def test_the_shared_shipping_address_is_defined_once(merged: dict[str, Any]) -> None:
    schemas = merged["components"]["schemas"]
    assert "ShippingAddress" in schemas
    assert not [name for name in schemas if name.endswith(".ShippingAddress")]


def test_a_partner_on_another_server_keeps_it_under_its_name() -> None:
    broker = NatsBroker("nats://partners.example:4222")

    @broker.subscriber(PAYMENT_CHARGE, queue=PAYMENT_GATEWAY)
    async def charge(body: ChargeRequest) -> ChargeReply:
        raise NotImplementedError

    doc = merged_document(
        core.asyncapi_document(),
        [PartnerApp(PAYMENT_GATEWAY, broker, {PAYMENT_CHARGE: ChargeReply})],
    )
    assert doc["servers"][PAYMENT_GATEWAY]["host"] == "partners.example:4222"
    (channel,) = (c for c in doc["channels"].values() if c["address"] == PAYMENT_CHARGE)
    assert channel["servers"] == [{"$ref": f"#/servers/{PAYMENT_GATEWAY}"}]
    assert not dangling_refs(doc)


EXAMPLE_DOC = DOC_PATH.parents[1] / "examples" / "notifications" / "asyncapi.json"


def test_the_example_document_is_faststreams_and_current() -> None:
    """The notifications example publishes its own AsyncAPI document beside it, made by
    FastStream's generator (an extension is not part of ordermesh's contract); regenerate
    with `faststream docs gen examples.notifications.app:app --out
    examples/notifications/asyncapi.json`."""
    from examples.notifications.app import app as example

    assert example.schema is not None
    generated = example.schema.to_specification().to_jsonable()
    assert json.loads(EXAMPLE_DOC.read_text()) == generated
    assert set(generated["channels"]) == {
        "notifications:events.order.confirmed",
        "notifications:events.order.cancelled",
    }
