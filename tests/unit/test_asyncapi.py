"""The published AsyncAPI contract: current, complete, self-contained and faithful."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broker.asyncapi import asyncapi_document, asyncapi_json
from broker.subjects import command_subject, event_subject, query_subject
from domain.catalog import EVENTS
from handlers import COMMAND_HANDLERS
from ordermesh.cli import app
from projections.queries import QUERY_HANDLERS

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
        *(command_subject(t) for t in COMMAND_HANDLERS),
        *(query_subject(t) for t in QUERY_HANDLERS),
        *(event_subject(t) for t in EVENTS),
        "dlq.{subject}",
    }
    assert expected <= addresses, sorted(expected - addresses)
    assert "sagas.order_fulfillment.step_started" in addresses


def test_every_ref_resolves() -> None:
    doc = asyncapi_document()
    dangling = []
    for ref in set(refs(doc)):
        try:
            resolve(doc, ref)
        except (KeyError, IndexError, ValueError, TypeError):
            dangling.append(ref)
    assert not dangling, sorted(dangling)


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
