"""The AsyncAPI 3.0.0 contract, built from the registries so that it cannot drift from them.

``docs/asyncapi.json`` is this document rendered, and a unit test fails when the two
differ: a new command, query, event or error code reaches the published contract in the
same change that adds it. Bodies are the pydantic models' own JSON schemas, so the
document says exactly what the services accept and what the relay sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from broker import cloudevents as ce
from broker import dead_letters, replies
from broker.subjects import (
    COMMAND_QUEUE,
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENTS_STREAM,
    QUERY_QUEUE,
    command_subject,
    event_subject,
    query_subject,
)
from domain import errors
from domain.catalog import EVENTS
from handlers import COMMAND_MODELS, ConcurrencyConflict
from handlers.executor import IdempotencyConflict
from projections.queries import QUERY_HANDLERS

SCHEMAS = "#/components/schemas/"
MESSAGES = "#/components/messages/"
REPLY_CHANNEL = "reply"
REPLY_MESSAGE = "Reply"
NATS_BINDING_VERSION = "0.1.0"

HEADER_DOCS = {
    ce.H_SPECVERSION: "CloudEvents version: 1.0.",
    ce.H_ID: "Message id. On a command it is the idempotency key: a resend with the same id "
    "appends nothing and gets the first reply. A new UUID when absent.",
    ce.H_TYPE: "Message type, e.g. order.place; taken from the subject when absent.",
    ce.H_SOURCE: "Who sent the message; 'unknown' when absent on a request.",
    ce.H_TIME: "When the message was sent (an event: stored), RFC 3339 in UTC; now when absent.",
    ce.H_SUBJECT: "What the message is about; on an event, its aggregate id (e.g. o-1).",
    ce.H_CORRELATION: "Ties together every message of one business flow; defaults to ce-id.",
    ce.H_CAUSATION: "Id of the message that caused this one.",
    ce.H_TRACEPARENT: "W3C Trace Context traceparent.",
    ce.H_TRACESTATE: "W3C Trace Context tracestate.",
    ce.H_BAGGAGE: "W3C Baggage.",
    ce.H_CONTENT_TYPE: f"Body encoding: {ce.CONTENT_TYPE}.",
    ce.H_STREAM: "The event-store stream, e.g. order-o-1.",
    ce.H_REVISION: "0-based revision of the event in its stream, as a decimal string.",
    ce.H_POSITION: f"Global event-store position, as a decimal string; increases in "
    f"{EVENTS_STREAM}, so a consumer can remember the last one it applied.",
    ce.NATS_MSG_ID: "Equal to ce-id: JetStream drops an event the relay publishes twice.",
}
CE_HEADERS = (
    ce.H_SPECVERSION,
    ce.H_ID,
    ce.H_TYPE,
    ce.H_SOURCE,
    ce.H_TIME,
    ce.H_SUBJECT,
    ce.H_CORRELATION,
    ce.H_CAUSATION,
    ce.H_TRACEPARENT,
    ce.H_TRACESTATE,
    ce.H_BAGGAGE,
    ce.H_CONTENT_TYPE,
)
EVENT_HEADERS = (*CE_HEADERS, ce.H_STREAM, ce.H_REVISION, ce.H_POSITION, ce.NATS_MSG_ID)
#: What ``cloudevents.event_headers`` sets for every event a command stored.
EVENT_REQUIRED = (
    ce.H_SPECVERSION,
    ce.H_ID,
    ce.H_TYPE,
    ce.H_SOURCE,
    ce.H_TIME,
    ce.H_SUBJECT,
    ce.H_CORRELATION,
    ce.H_CAUSATION,
    ce.H_STREAM,
    ce.H_REVISION,
    ce.H_POSITION,
    ce.NATS_MSG_ID,
)


@dataclass(frozen=True, slots=True)
class _Family:
    """Commands, queries or events: what differs between them in the document."""

    name: str
    subject: Callable[[str], str]
    models: Mapping[str, type[BaseModel]]
    #: Requests are parsed by the service, events are serialised by it.
    mode: JsonSchemaMode
    action: str
    headers: str
    description: str
    #: The queue group serving a request/reply family; None for events.
    queue: str | None = None


_FAMILIES = (
    _Family(
        name="command",
        subject=command_subject,
        models=dict(COMMAND_MODELS),
        mode="validation",
        action="receive",
        headers="RequestHeaders",
        description="Request/reply: exactly one reply, never silence. A resend with the same "
        "ce-id appends nothing and gets the first reply.",
        queue=COMMAND_QUEUE,
    ),
    _Family(
        name="query",
        subject=query_subject,
        models={type_: model for type_, (model, _) in QUERY_HANDLERS.items()},
        mode="validation",
        action="receive",
        headers="RequestHeaders",
        description="Request/reply over the read models, which are eventually consistent: "
        "exactly one reply, never silence.",
        queue=QUERY_QUEUE,
    ),
    _Family(
        name="event",
        subject=event_subject,
        models=EVENTS,
        mode="serialization",
        action="send",
        headers="EventHeaders",
        description=f"Sent by the relay into the JetStream stream {EVENTS_STREAM}: every stored "
        "event once, in store order.",
    ),
)


def error_codes() -> list[str]:
    """Every ``code`` a reply can carry; domain codes come from the error classes themselves.

    Only leaf classes count: ``NotFound`` and friends exist to be caught, never raised.
    """
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.CodedError)
    ]
    domain = {c.code for c in classes if not any(o is not c and issubclass(o, c) for o in classes)}
    return sorted(
        {*replies.TRANSPORT_CODES, *domain, ConcurrencyConflict.code, IdempotencyConflict.code}
    )


def _headers_schema(names: tuple[str, ...], required: tuple[str, ...], doc: str) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": doc,
        "properties": {
            name: {"type": "string", "description": HEADER_DOCS[name]} for name in names
        },
    }
    if required:
        schema["required"] = sorted(required)
    return schema


def _reply_schemas() -> dict[str, Any]:
    """One envelope for every request, so a caller never guesses what silence meant."""
    return {
        REPLY_MESSAGE: {"oneOf": [{"$ref": SCHEMAS + "ReplyOk"}, {"$ref": SCHEMAS + "ReplyError"}]},
        "ReplyOk": {
            "type": "object",
            "additionalProperties": False,
            "required": ["ok", "data"],
            "properties": {
                "ok": {"const": True},
                "data": {
                    "type": "object",
                    "description": "A command's aggregate after it; a query's view or page.",
                },
            },
        },
        "ReplyError": {
            "type": "object",
            "additionalProperties": False,
            "required": ["ok", "error"],
            "properties": {"ok": {"const": False}, "error": {"$ref": SCHEMAS + "Error"}},
        },
        "Error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"$ref": SCHEMAS + "ErrorCode"},
                "message": {"type": "string", "description": "For people; never branch on it."},
                "details": {
                    "description": "Depends on the code, e.g. a validation_error's "
                    "list of {loc, type, msg}; null when there is nothing to add."
                },
            },
        },
        "ErrorCode": {
            "type": "string",
            "description": "Stable: clients branch on it.",
            "enum": error_codes(),
        },
    }


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """A name defined twice would silently describe one of the two messages wrongly."""
    clash = into.keys() & extra.keys()
    if clash:
        raise ValueError(f"defined twice in the AsyncAPI document: {sorted(clash)}")
    into.update(extra)


def _by_key(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return dict(sorted(mapping.items()))


def asyncapi_document() -> dict[str, Any]:
    """The whole contract; deterministic, since the committed copy is compared with it."""
    refs, defs = models_json_schema(
        [(model, family.mode) for family in _FAMILIES for model in family.models.values()],
        ref_template=SCHEMAS + "{model}",
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    _merge(
        schemas,
        {
            "RequestHeaders": _headers_schema(
                CE_HEADERS, (), "None required: the service fills in what is missing."
            ),
            "EventHeaders": _headers_schema(EVENT_HEADERS, EVENT_REQUIRED, "Set by the relay."),
            **_reply_schemas(),
        },
    )
    correlation = {"$ref": "#/components/correlationIds/correlation"}
    messages: dict[str, Any] = {
        REPLY_MESSAGE: {
            "name": "reply",
            "title": "Reply",
            "summary": "The reply to a command or query, sent without headers.",
            "payload": {"$ref": SCHEMAS + REPLY_MESSAGE},
        }
    }
    channels: dict[str, Any] = {
        REPLY_CHANNEL: {
            "address": None,
            "description": "The requester's inbox: the reply subject of the NATS request.",
            "messages": {REPLY_MESSAGE: {"$ref": MESSAGES + REPLY_MESSAGE}},
        }
    }
    operations: dict[str, Any] = {}
    for family in _FAMILIES:
        for type_, model in sorted(family.models.items()):
            subject = family.subject(type_)
            payload = refs[(model, family.mode)]
            key = payload["$ref"].removeprefix(SCHEMAS)
            _merge(
                messages,
                {
                    key: {
                        "name": type_,
                        "title": key,
                        "summary": f"The {family.name} {type_}.",
                        "headers": {"$ref": SCHEMAS + family.headers},
                        "payload": payload,
                        "correlationId": correlation,
                    }
                },
            )
            _merge(
                channels,
                {
                    subject: {
                        "address": subject,
                        "messages": {key: {"$ref": MESSAGES + key}},
                    }
                },
            )
            operation: dict[str, Any] = {
                "action": family.action,
                "channel": {"$ref": f"#/channels/{subject}"},
                "summary": f"The {family.name} {type_}.",
                "description": family.description,
                "messages": [{"$ref": f"#/channels/{subject}/messages/{key}"}],
            }
            if family.queue is not None:
                operation["reply"] = {
                    "channel": {"$ref": f"#/channels/{REPLY_CHANNEL}"},
                    "messages": [{"$ref": f"#/channels/{REPLY_CHANNEL}/messages/{REPLY_MESSAGE}"}],
                }
                operation["bindings"] = {
                    "nats": {"queue": family.queue, "bindingVersion": NATS_BINDING_VERSION}
                }
            _merge(operations, {subject: operation})
    _dead_letters(schemas, messages, channels, operations)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "ordermesh",
            "version": version("ordermesh"),
            "description": "Commands, queries and events of ordermesh over NATS: CloudEvents "
            "1.0 in binary mode (attributes in ce-* headers, JSON body). Generated by "
            "`ordermesh asyncapi`; do not edit.",
        },
        "defaultContentType": ce.CONTENT_TYPE,
        "servers": {
            "embedded": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The nats-server that `ordermesh up` embeds, with JetStream.",
            }
        },
        "channels": _by_key(channels),
        "operations": _by_key(operations),
        "components": {
            "schemas": _by_key(schemas),
            "messages": _by_key(messages),
            "correlationIds": {
                "correlation": {
                    "description": "Shared by a request, its reply and every event it caused.",
                    "location": f"$message.header#/{ce.H_CORRELATION}",
                }
            },
        },
    }


DEAD_LETTER = "DeadLetter"
DLQ_CHANNEL = "dlq"


def _dead_letters(
    schemas: dict[str, Any],
    messages: dict[str, Any],
    channels: dict[str, Any],
    operations: dict[str, Any],
) -> None:
    """``dlq.<subject>``: what a consumer could not use, as it arrived, with the reason."""
    schemas["DeadLetterHeaders"] = {
        "type": "object",
        "description": "The original message's headers, and why it was set aside.",
        "properties": {
            dead_letters.H_REASON: {"type": "string", "description": "why it was set aside"},
            dead_letters.H_CONSUMER: {"type": "string", "description": "who set it aside"},
            dead_letters.H_SEQUENCE: {
                "type": "string",
                "description": f"its sequence in {EVENTS_STREAM}",
            },
            dead_letters.H_DELIVERIES: {
                "type": "string",
                "description": "how often the consumer tried to apply it (an integer)",
            },
            dead_letters.H_SUBJECT: {"type": "string", "description": "the original subject"},
            dead_letters.H_TIME: {
                "type": "string",
                "description": "when it was set aside (RFC 3339)",
            },
        },
        "required": [dead_letters.H_REASON, dead_letters.H_CONSUMER, dead_letters.H_SEQUENCE],
        "additionalProperties": {"type": "string"},
    }
    messages[DEAD_LETTER] = {
        "name": "dead_letter",
        "title": DEAD_LETTER,
        "summary": "A message a consumer could not use, body unchanged.",
        "headers": {"$ref": SCHEMAS + "DeadLetterHeaders"},
        "payload": {"description": "the original body, byte for byte (not always JSON)"},
    }
    channels[DLQ_CHANNEL] = {
        "address": f"{DLQ_PREFIX}{{subject}}",
        "description": f"JetStream stream {DLQ_STREAM}: the original subject after `dlq.`.",
        "parameters": {"subject": {"description": "the subject the message arrived on"}},
        "messages": {DEAD_LETTER: {"$ref": MESSAGES + DEAD_LETTER}},
    }
    operations[DLQ_CHANNEL] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{DLQ_CHANNEL}"},
        "summary": "A poison message set aside.",
        "description": "Sent by a consumer (the read models, the saga inbox) instead of "
        "stopping on a message it cannot apply; the feed goes on past it.",
        "messages": [{"$ref": f"#/channels/{DLQ_CHANNEL}/messages/{DEAD_LETTER}"}],
    }


def asyncapi_json() -> str:
    """The one rendering, shared by the CLI and the drift test."""
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"
