"""The one AsyncAPI contract: ordermesh's own subjects and the partners', in one document.

Two generators describe the system. :mod:`broker.asyncapi` describes ordermesh's commands,
queries, events and saga messages from its registries; the partners (:mod:`partners`)
are FastStream applications, and FastStream describes its own subscribers better than we
could from the outside: the subject, the queue group, the pydantic model it validates
each request into, all as the running broker sees them. So each partner broker's
document is FastStream's own, and this module merges them into the core one. It lives
here, not in ``broker``, because ``broker`` must not import ``partners``.

The merge keeps FastStream's channels, operations, messages and schemas as FastStream
wrote them, changing only what two documents cannot both keep:

- a component whose name is already taken by a *different* definition is renamed
  ``<service>.<name>`` and every reference to it follows; an identical one (the
  ``ShippingAddress`` both the core and the carrier use) is kept once;
- FastStream's server (``development``, in every partner document) is the nats-server
  the core's document already names, so its references point at the core's server
  instead (a partner on another server would keep it, under the service's name).

And it adds what FastStream does not emit but a client of the contract needs: for each
partner operation its AsyncAPI 3 ``reply`` (the reply model's schema from
:mod:`domain.partners`, or the error envelope of ordermesh's other replies), the
NATS queue group as an operation binding, as the core operations carry it, and a tag and
description naming the service that serves it.

One document rather than three because clients and tools (code generators, the
validator, the docs) take one contract: every subject a process on this NATS may use,
with no name defined twice and every reference resolving inside it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from broker import asyncapi as core
from broker.replies import INTERNAL_ERROR, MALFORMED_JSON, VALIDATION_ERROR
from broker.subjects import (
    PAYMENT_CHARGE,
    PAYMENT_GATEWAY,
    PAYMENT_REFUND,
    SHIPPING_BOOK,
    SHIPPING_CANCEL,
    SHIPPING_CARRIER,
)
from domain.partners import BookingReply, CancelBookingReply, ChargeReply, RefundReply
from partners.apps import payment_gateway, shipping_carrier
from partners.carrier import ShippingCarrierService
from partners.gateway import PaymentGatewayService
from partners.ledger import open_ledger

SCHEMAS = core.SCHEMAS
MESSAGES = core.MESSAGES
TAGS = "#/components/tags/"
#: The codes a partner replies with when it cannot read a request (:mod:`partners.apps`).
PARTNER_ERROR_CODES = (MALFORMED_JSON, VALIDATION_ERROR, INTERNAL_ERROR)
PARTNER_REPLY_ERROR = "PartnerReplyError"
PARTNER_ERROR = "PartnerError"
#: Top-level sections of a FastStream document that the merge knows what to do with.
FASTSTREAM_SECTIONS = frozenset(
    {"asyncapi", "info", "defaultContentType", "servers", "channels", "operations", "components"}
)


@dataclass(frozen=True, slots=True)
class PartnerApp:
    """A partner service as the contract needs it: its broker, and what it replies.

    FastStream's document says what a subscriber accepts but not what it answers, so the
    reply models are given here, by subject.
    """

    service: str
    broker: NatsBroker
    replies: Mapping[str, type[BaseModel]]


#: What each partner subject answers (the return type of its handler in partners.apps).
PAYMENT_REPLIES: Mapping[str, type[BaseModel]] = {
    PAYMENT_CHARGE: ChargeReply,
    PAYMENT_REFUND: RefundReply,
}
SHIPPING_REPLIES: Mapping[str, type[BaseModel]] = {
    SHIPPING_BOOK: BookingReply,
    SHIPPING_CANCEL: CancelBookingReply,
}


def partner_apps(ledger_dir: Path) -> tuple[PartnerApp, ...]:
    """Both partners' brokers, as ``ordermesh run partners`` builds them.

    Building a broker neither connects it nor touches its ledger (a ledger opens its file
    on first use), so ``ledger_dir`` is never written to when the brokers are only
    described.
    """
    gateway = PaymentGatewayService(open_ledger(ledger_dir / "gateway.db", PAYMENT_GATEWAY))
    carrier = ShippingCarrierService(open_ledger(ledger_dir / "carrier.db", SHIPPING_CARRIER))
    return (
        PartnerApp(PAYMENT_GATEWAY, payment_gateway(gateway), PAYMENT_REPLIES),
        PartnerApp(SHIPPING_CARRIER, shipping_carrier(carrier), SHIPPING_REPLIES),
    )


def faststream_document(broker: NatsBroker) -> dict[str, Any]:
    """FastStream's own AsyncAPI 3.0.0 document of one broker, untouched."""
    document: dict[str, Any] = (
        AsyncAPI(broker, schema_version="3.0.0").to_specification().to_jsonable()
    )
    return document


def partner_documents() -> dict[str, dict[str, Any]]:
    """Each partner's FastStream document, by service name: what the merge starts from,
    and what the validator checks on its own, so that a defect is known to be FastStream's
    or the merge's."""
    with TemporaryDirectory(prefix="ordermesh-asyncapi-") as tmp:
        return {app.service: faststream_document(app.broker) for app in partner_apps(Path(tmp))}


# -- references -------------------------------------------------------------------------

#: A renamable section of a document: ("servers",), ("channels",), ("operations",) or
#: ("components", kind).
Section = tuple[str, ...]
Renames = dict[Section, dict[str, str]]


def _split(ref: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in ref.removeprefix("#/").split("/")]


def _join(tokens: Sequence[str]) -> str:
    return "#/" + "/".join(t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _rename_ref(ref: str, renames: Renames) -> str:
    if not ref.startswith("#/"):
        return ref
    tokens = _split(ref)
    at = 2 if tokens[0] == "components" else 1
    if len(tokens) <= at:
        return ref
    names = renames.get(tuple(tokens[:at]), {})
    if tokens[at] not in names:
        return ref
    tokens[at] = names[tokens[at]]
    return _join(tokens)


def _rewrite(node: Any, renames: Renames) -> Any:
    """A copy of ``node`` with every local ``$ref`` following the renames."""
    if isinstance(node, dict):
        return {
            key: _rename_ref(value, renames)
            if key == "$ref" and isinstance(value, str)
            else _rewrite(value, renames)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(item, renames) for item in node]
    return node


# -- merging ----------------------------------------------------------------------------


def _add(into: dict[str, Any], extra: Mapping[str, Any], what: str) -> None:
    """Our own additions: a name taken already is a bug here, not something to rename."""
    clash = sorted(k for k in into.keys() & extra.keys() if into[k] != extra[k])
    if clash:
        raise ValueError(f"{what} defined twice in the AsyncAPI document: {clash}")
    into.update(extra)


def _component_renames(
    target: Mapping[str, Any], components: Mapping[str, Any], renames: Renames, service: str
) -> None:
    """Rename the partner's components that clash with different ones already merged.

    Repeated until nothing changes: a schema equal to the core's but referring to one that
    had to be renamed is no longer equal, and must be renamed in turn.
    """
    changed = True
    while changed:
        changed = False
        for kind, entries in components.items():
            names = renames.setdefault(("components", kind), {})
            existing = target.get(kind, {})
            for name, value in entries.items():
                if name in names or name not in existing:
                    continue
                if existing[name] != _rewrite(value, renames):
                    new = f"{service}.{name}"
                    if new in existing or new in entries:
                        raise ValueError(f"cannot rename components/{kind}/{name}: {new} taken")
                    names[name] = new
                    changed = True


def _merge_servers(
    target: dict[str, Any], servers: Mapping[str, Any], service: str
) -> dict[str, str]:
    """FastStream calls the server it was given ``development``, in every document.

    One that is the core's (same host, protocol and path: the partners connect to the
    nats-server ordermesh runs) is referred to by the core's name; another one is kept
    under the service's name, so that two partners' ``development`` do not collide.
    """

    def where(server: Mapping[str, Any]) -> tuple[Any, ...]:
        return (server.get("host"), server.get("protocol"), server.get("pathname") or None)

    renames = {}
    for name, server in servers.items():
        same = sorted(key for key, ours in target.items() if where(ours) == where(server))
        if same:
            renames[name] = same[0]
            continue
        new = service if len(servers) == 1 else f"{service}.{name}"
        if new in target:
            raise ValueError(f"cannot add FastStream's server {name} as {new}: taken")
        target[new] = dict(server)
        renames[name] = new
    return renames


def merge_faststream(doc: dict[str, Any], service: str, fs_doc: Mapping[str, Any]) -> Renames:
    """Merge one FastStream document into ``doc``; returns what was renamed, by section.

    Channels and operations are never renamed: two definitions of one subject would be two
    services claiming it, which the contract must not hide.
    """
    unknown = sorted(fs_doc.keys() - FASTSTREAM_SECTIONS)
    if unknown:
        raise ValueError(f"FastStream's document has sections the merge ignores: {unknown}")
    servers = _merge_servers(doc["servers"], fs_doc.get("servers", {}), service)
    renames: Renames = {("servers",): servers}
    components: Mapping[str, Any] = fs_doc.get("components", {})
    _component_renames(doc["components"], components, renames, service)
    content_type = fs_doc.get("defaultContentType", doc["defaultContentType"])
    for kind, entries in components.items():
        section = doc["components"].setdefault(kind, {})
        names = renames[("components", kind)]
        for name, value in entries.items():
            merged = _rewrite(value, renames)
            if kind == "messages" and content_type != doc["defaultContentType"]:
                merged.setdefault("contentType", content_type)
            key = names.get(name, name)
            if key in section and section[key] != merged:
                raise ValueError(f"components/{kind}/{key} defined twice")
            section[key] = merged
    channels: Mapping[str, Any] = fs_doc.get("channels", {})
    taken = {c.get("address") for c in doc["channels"].values()} - {None}
    clash = sorted(taken & {c.get("address") for c in channels.values()})
    clash += sorted(doc["channels"].keys() & channels.keys())
    clash += sorted(doc["operations"].keys() & fs_doc.get("operations", {}).keys())
    if clash:
        raise ValueError(f"described by ordermesh and by {service}: {clash}")
    for part in ("channels", "operations"):
        doc[part].update(_rewrite(fs_doc.get(part, {}), renames))
    return renames


def _partner_error_schemas(schemas: Mapping[str, Any]) -> dict[str, Any]:
    """The error envelope of every ordermesh reply, as a partner sends it.

    Derived from the core's ``ReplyError`` and ``Error``, so the two cannot drift apart
    unseen; it differs where the partners do: only three codes, ``details`` as
    ``{loc, msg}`` for a validation_error, and absent from an internal_error.
    """
    codes = set(schemas["ErrorCode"]["enum"])
    missing = sorted(set(PARTNER_ERROR_CODES) - codes)
    if missing:
        raise ValueError(f"partner error codes unknown to the contract: {missing}")
    error = {
        "description": "The error of every ordermesh reply, as a partner sends it for a "
        "request it could not read.",
        **copy.deepcopy(schemas["Error"]),
    }
    error["required"] = [name for name in error["required"] if name != "details"]
    error["properties"]["code"] = {
        "type": "string",
        "description": schemas["ErrorCode"]["description"],
        "enum": sorted(PARTNER_ERROR_CODES),
    }
    error["properties"]["details"] = {
        "description": "A validation_error's (and a malformed_json's) list of {loc, msg}; "
        "absent from an internal_error."
    }
    envelope = _rewrite(
        schemas["ReplyError"], {("components", "schemas"): {"Error": PARTNER_ERROR}}
    )
    return {PARTNER_REPLY_ERROR: envelope, PARTNER_ERROR: error}


def _channel_queue(channel: Mapping[str, Any]) -> str | None:
    queue = channel.get("bindings", {}).get("nats", {}).get("queue")
    return str(queue) if queue else None


def _set_new(operation: dict[str, Any], key: str, value: Any) -> None:
    """FastStream's content wins; if it ever emits what we add, the merge must be revisited
    rather than overwrite it."""
    if key in operation:
        where = operation["channel"]["$ref"]
        raise ValueError(f"FastStream now emits {key!r} on {where}: revisit the merge")
    operation[key] = value


def add_partner_contract(doc: dict[str, Any], app: PartnerApp, description: str) -> None:
    """What FastStream does not say of the partner's operations: replies, service, queue."""
    schemas = doc["components"]["schemas"]
    _add(schemas, _partner_error_schemas(schemas), "schemas")
    refs, defs = models_json_schema(
        [(model, "serialization") for model in app.replies.values()],
        ref_template=SCHEMAS + "{model}",
    )
    _add(schemas, defs.get("$defs", {}), "schemas")
    _add(
        doc["components"].setdefault("tags", {}),
        {app.service: {"name": app.service, "description": description}},
        "tags",
    )
    reply_channel = doc["channels"][core.REPLY_CHANNEL]
    served = set()
    for operation in doc["operations"].values():
        channel = doc["channels"][_split(operation["channel"]["$ref"])[1]]
        subject = channel["address"]
        if subject not in app.replies:
            continue
        served.add(subject)
        model = app.replies[subject]
        message = model.__name__
        _add(
            doc["components"]["messages"],
            {
                message: {
                    "name": f"{subject}.reply",
                    "title": message,
                    "summary": f"The {app.service}'s reply to {subject}.",
                    "payload": {
                        "oneOf": [
                            refs[(model, "serialization")],
                            {"$ref": SCHEMAS + PARTNER_REPLY_ERROR},
                        ]
                    },
                }
            },
            "messages",
        )
        _add(reply_channel["messages"], {message: {"$ref": MESSAGES + message}}, "reply messages")
        queue = _channel_queue(channel)
        _set_new(operation, "tags", [{"$ref": TAGS + app.service}])
        _set_new(
            operation,
            "description",
            f"Request/reply over core NATS, served by the {app.service} (a FastStream "
            f"application) in the queue group {queue}. The reply is a {message} with a status "
            f"for every business outcome, or {{ok: false, error}} ("
            f"{', '.join(PARTNER_ERROR_CODES)}) for a request the {app.service} could not read.",
        )
        _set_new(
            operation,
            "reply",
            {
                "channel": {"$ref": f"#/channels/{core.REPLY_CHANNEL}"},
                "messages": [
                    {"$ref": _join(["channels", core.REPLY_CHANNEL, "messages", message])}
                ],
            },
        )
        if queue is not None:
            _set_new(
                operation,
                "bindings",
                {"nats": {"queue": queue, "bindingVersion": core.NATS_BINDING_VERSION}},
            )
    unserved = sorted(set(app.replies) - served)
    if unserved:
        raise ValueError(f"{app.service} has no subscriber for {unserved}")


def _service_description(app: PartnerApp, fs_doc: Mapping[str, Any]) -> str:
    """FastStream's server description is the broker's own (``ordermesh's simulated …``);
    the server itself goes, so its words move to the service's tag."""
    said = sorted(
        {s["description"] for s in fs_doc.get("servers", {}).values() if "description" in s}
    )
    queues = sorted(
        {q for c in fs_doc.get("channels", {}).values() if (q := _channel_queue(c)) is not None}
    )
    return (
        f"{'; '.join(said) or app.service}: a partner service, a FastStream application with "
        f"its own NATS connection. It serves {', '.join(sorted(app.replies))} as request/reply "
        f"over core NATS, in the queue group {', '.join(queues)} (any number of instances "
        "share the load), and is idempotent on the id ordermesh sends."
    )


def _sorted_sections(doc: dict[str, Any]) -> dict[str, Any]:
    """Sorted names, as the core document has them, so the committed copy does not churn
    with the order subscribers happen to be declared in."""

    def by_key(mapping: Mapping[str, Any]) -> dict[str, Any]:
        return dict(sorted(mapping.items()))

    doc["channels"] = by_key(doc["channels"])
    doc["operations"] = by_key(doc["operations"])
    reply = doc["channels"][core.REPLY_CHANNEL]
    reply["messages"] = by_key(reply["messages"])
    doc["components"] = {kind: by_key(entries) for kind, entries in doc["components"].items()}
    return doc


def merged_document(core_doc: Mapping[str, Any], apps: Sequence[PartnerApp]) -> dict[str, Any]:
    """The core document with every partner's FastStream document merged in.

    Takes the brokers rather than their documents so that what is merged is always what
    FastStream says of them now (the unit tests merge altered brokers to prove it).
    """
    doc = copy.deepcopy(dict(core_doc))
    for app in sorted(apps, key=lambda a: a.service):
        fs_doc = faststream_document(app.broker)
        merge_faststream(doc, app.service, fs_doc)
        add_partner_contract(doc, app, _service_description(app, fs_doc))
    doc["info"] = {
        **doc["info"],
        "description": f"{doc['info']['description']} The partners' subjects (partners.*) are "
        "described by FastStream, which serves them, and merged in.",
    }
    return _sorted_sections(doc)


def asyncapi_document() -> dict[str, Any]:
    """The whole contract: deterministic, since the committed copy is compared with it."""
    with TemporaryDirectory(prefix="ordermesh-asyncapi-") as tmp:
        return merged_document(core.asyncapi_document(), partner_apps(Path(tmp)))


def asyncapi_json() -> str:
    """The one rendering, shared by the CLI and the drift test."""
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"
