"""One real app under fuzzing, and the checks every generated request goes through.

A request must be answered within :data:`REPLY_TIMEOUT` (no hang) with the contract's
envelope: ``ok`` true with ``data``, or false with a known ``error.code``, a message and
``details``. The code must be the one the message model itself implies (the same model
the service validates with: a differential check of the service's decoding). A refusal
writes nothing (a refused stock reservation may write holds it has given back, see
:data:`COMPENSATION`), a query never writes, and what an accepted command wrote was all
caused by that very command, each stream's revisions without a gap. Codes that say the
service failed (``internal_error``, ``store_unavailable``, ``concurrency_conflict`` with
no other writer) fail the test: hostile input must be refused, never break anything.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from pydantic import BaseModel, ValidationError

from broker import replies
from broker.asyncapi import error_codes
from broker.service import RequestService
from broker.subjects import command_subject, query_subject
from domain.errors import PaymentUnavailable
from domain.event_store import EventStore, RecordedEvent
from domain.inventory import InventoryReservationFailed
from domain.metadata import parse_metadata
from domain.product import StockReleased, StockReserved
from handlers import COMMAND_MODELS
from ordermesh.app import App
from partners.rules import SLOW_CARD
from projections.queries import QUERY_HANDLERS
from tests.conftest import events_in_stream, eventually

#: Generous for one request on a busy 2-core machine; a healthy reply takes milliseconds.
REPLY_TIMEOUT = 5.0
KNOWN_CODES = frozenset(error_codes())
#: Room left for generated headers (up to ~300 KiB): the server counts them in its
#: max_payload, and refuses (and disconnects) a client that goes past it.
HEADER_ROOM = 320 * 1024
#: Codes that say the service failed, not the request. ``payment_unavailable`` is the
#: payment simulator's transient refusal (``flaky-card``): an answer by design.
FAILURES = frozenset(replies.FAULT_CODES) - {PaymentUnavailable.code}

#: Every request subject, from the registries the services are built from (and the
#: AsyncAPI document is rendered from: ``test_strategies`` holds the two equal).
COMMANDS: dict[str, type[BaseModel]] = {
    command_subject(t): model for t, model in sorted(COMMAND_MODELS.items())
}
QUERIES: dict[str, type[BaseModel]] = {
    query_subject(t): model for t, (model, _) in sorted(QUERY_HANDLERS.items())
}
SUBJECTS: dict[str, type[BaseModel]] = {**COMMANDS, **QUERIES}

#: Cases executed, by family; ``conftest`` prints them and checks the fuzz profile's total.
CASES: Counter[str] = Counter()


class CountingExporter(SpanExporter):
    """Keeps only a count: thousands of requests' spans need not stay in memory."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


@dataclass
class Rig:
    """The app under test, a client of its own, and the store's head seen so far."""

    app: App
    client: NATS
    store: EventStore
    limit: int
    #: Largest body the NATS server carries beside generated headers: "far over the limit".
    room: int
    head: int = 0
    problems: list[str] = field(default_factory=list)
    _sink: int | None = None

    @classmethod
    async def open(cls, app: App, client: NATS) -> Rig:
        assert app.store is not None and app.nc is not None
        rig = cls(
            app,
            client,
            app.store,
            app.settings.max_payload_bytes,
            room=client.max_payload - HEADER_ROOM,
        )
        assert rig.room > 2 * rig.limit, "no room for bodies far over the limit"
        rig.head = await rig.last_position()
        # Errors anywhere (a relay that cannot publish a stored event, a projection that
        # cannot apply one, nats-py reporting a protocol problem) are failures too.
        rig._sink = logger.add(rig._record, level="WARNING", format="{message}")
        return rig

    def _record(self, message: Any) -> None:
        record = message.record
        if record["level"].no >= 40 or str(record["message"]).startswith("nats:"):
            self.problems.append(f"{record['level'].name}: {record['message']}")

    def close(self) -> None:
        if self._sink is not None:
            logger.remove(self._sink)
            self._sink = None

    async def last_position(self) -> int:
        position = self.head
        while batch := await self.store.read_all(position, 1000):
            position = batch[-1].position
        return position

    async def store_size(self) -> int:
        count, position = 0, 0
        while batch := await self.store.read_all(position, 1000):
            count, position = count + len(batch), batch[-1].position
        return count

    async def appended(self) -> list[RecordedEvent]:
        """Events stored since the last call; the head moves past them."""
        events = await self.store.read_all(self.head, 10_000)
        if events:
            self.head = events[-1].position
        return events


def parse_reply(data: bytes) -> dict[str, Any]:
    """The reply, checked against the envelope every client relies on."""
    reply = json.loads(data)
    assert isinstance(reply, dict), reply
    assert isinstance(reply.get("ok"), bool), reply
    if reply["ok"]:
        assert set(reply) == {"ok", "data"}, reply
        return reply
    assert set(reply) == {"ok", "error"}, reply
    error = reply["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, reply
    assert error["code"] in KNOWN_CODES, f"unknown code {error['code']!r}"
    assert error["code"] not in FAILURES, f"hostile input broke the service: {error}"
    assert isinstance(error["message"], str) and error["message"], reply
    return reply


def refusal_for(
    model: type[BaseModel] | None, payload: bytes, limit: int, unknown: str
) -> str | None:
    """The code the contract gives ``payload`` before any business rule, or None when the
    body is valid: too large, unknown subject, not JSON, or not the model's shape."""
    if len(payload) > limit:
        return replies.PAYLOAD_TOO_LARGE
    if model is None:
        return unknown
    raw = b"{}" if not payload or payload.isspace() else payload
    try:
        model.model_validate_json(raw)
    except ValidationError as exc:
        invalid = any(e["type"] == "json_invalid" for e in exc.errors())
        return replies.MALFORMED_JSON if invalid else replies.VALIDATION_ERROR
    return None


def unanswered_by_design(model: type[BaseModel] | None, payload: bytes) -> bool:
    """A valid payment whose method is the simulator's ``slow-card``: never answered,
    on purpose, so the caller's timeout path can be tested (``partners.rules``)."""
    return model is not None and SLOW_CARD.encode() in payload


#: Sends a request and returns the reply's bytes: ``client_request`` or a raw writer.
Sender = Callable[[str, bytes], Awaitable[bytes]]


def client_request(rig: Rig, headers: dict[str, str] | None) -> Sender:
    """Through nats-py, as every client of the contract does."""

    async def send(subject: str, payload: bytes) -> bytes:
        for _ in range(5):  # nats-py's occasional first "no responders" (broker.connection)
            try:
                msg = await rig.client.request(
                    subject, payload, timeout=REPLY_TIMEOUT, headers=headers
                )
                return msg.data
            except NoRespondersError:
                await rig.client.flush()
        raise AssertionError(f"no responders on {subject}: the service is gone")

    return send


async def send(rig: Rig, subject: str, payload: bytes, sender: Sender) -> dict[str, Any]:
    """One request, answered in time or a failure that says it hung."""
    # Hypothesis seeds the global ``random`` with 0 for every example (reproducible
    # tests); the app in this process draws its message ids from it (``domain.ids``), so
    # each example would mint the same id for a request without ``ce-id`` and the
    # executor would answer it as a resend. Fresh entropy per request, as in production;
    # Hypothesis restores its own state after the example.
    random.seed()
    try:
        return parse_reply(await sender(subject, payload))
    except (NatsTimeout, TimeoutError):
        raise AssertionError(f"no reply on {subject} within {REPLY_TIMEOUT} s: a hang") from None


#: What a refused ``inventory.reserve`` may leave behind: it holds stock product by
#: product and gives it all back before it refuses (``handlers.inventory``), recording the
#: failure. Written, but holding nothing; anything else written by a refusal is a
#: partial write.
COMPENSATION = frozenset({StockReserved.TYPE, StockReleased.TYPE, InventoryReservationFailed.TYPE})


def _causes(appended: list[RecordedEvent]) -> set[str]:
    return {str(parse_metadata(e.metadata).get("causation_id")) for e in appended}


def _holds_nothing(appended: list[RecordedEvent]) -> bool:
    held: Counter[tuple[str, str]] = Counter()
    for event in appended:
        if event.type not in COMPENSATION:
            return False
        data = json.loads(event.data)
        if event.type == StockReserved.TYPE:
            held[event.stream, data["order_id"]] += data["quantity"]
        elif event.type == StockReleased.TYPE:
            held[event.stream, data["order_id"]] -= data["quantity"]
    return not any(held.values())


def check_outcome(
    reply: dict[str, Any],
    expected: str | None,
    appended: list[RecordedEvent],
    *,
    command: bool,
    command_id: str | None,
) -> None:
    """The reply agrees with the contract, and the store with the reply."""
    if expected is not None:
        assert not reply["ok"], f"accepted what the contract refuses ({expected}): {reply}"
        assert reply["error"]["code"] == expected, reply
    elif not reply["ok"]:
        # A valid body: only a business rule may refuse it.
        assert reply["error"]["code"] not in replies.TRANSPORT_CODES, reply
    if not command or (not reply["ok"] and reply["error"]["code"] in replies.TRANSPORT_CODES):
        assert appended == [], f"{'refused' if command else 'a query'} but wrote {appended}"
        return
    if not appended:  # a refusal, a resend, or a command with nothing to change
        return
    if not reply["ok"]:
        assert _holds_nothing(appended), f"a refusal left writes behind: {appended}"
    for stream in {e.stream for e in appended}:
        revisions = [e.revision for e in appended if e.stream == stream]
        assert revisions == list(range(revisions[0], revisions[0] + len(revisions))), revisions
    # One command's events name it as their cause: its id, or for the holds it places on
    # other streams, its id with a suffix (``handlers.inventory``).
    causes = _causes(appended)
    first = min(causes)
    roots = [command_id] if command_id else [first[:i] for i, c in enumerate(first) if c == ":"]
    roots = roots or [first]
    assert any(all(c == r or c.startswith(r + ":") for c in causes) for r in roots), causes


async def exchange(
    rig: Rig,
    family: str,
    subject: str,
    payload: bytes,
    headers: dict[str, str] | None = None,
    *,
    command_id: str | None = None,
    sender: Sender | None = None,
) -> dict[str, Any]:
    """Send one generated request and check everything about its answer."""
    CASES[family] += 1
    model = SUBJECTS.get(subject)
    command = subject.startswith("commands.")
    unknown = replies.UNKNOWN_COMMAND if command else replies.UNKNOWN_QUERY
    expected = refusal_for(model, payload, rig.limit, unknown)
    reply = await send(rig, subject, payload, sender or client_request(rig, headers))
    check_outcome(reply, expected, await rig.appended(), command=command, command_id=command_id)
    return reply


async def still_serving(rig: Rig, product_id: str) -> None:
    """After the run: a valid command is accepted and stored, every request service
    answers pings through the server, and nothing was logged as broken."""
    body = {"product_id": product_id, "name": "After fuzzing", "price": "1.00", "stock": 1}
    payload = json.dumps(body).encode()
    reply = await send(rig, command_subject("product.create"), payload, client_request(rig, None))
    assert reply["ok"], reply
    stored = await rig.appended()
    assert [e.type for e in stored] == ["product.created"], stored
    services = [c for c in rig.app.components if isinstance(c, RequestService)]
    assert {s.name for s in services} == {"command", "query"}, services
    for service in services:
        assert await service.ready(), f"the {service.name} service no longer answers"
    assert rig.app.nc is not None and rig.app.nc.is_connected
    assert rig.app.nc.stats["reconnects"] == 0, "the app's connection was dropped"
    # The relay published every stored event: hostile ids and trace context stored in
    # events' metadata do not wedge it.
    total = await rig.store_size()
    await eventually(lambda: _published(rig.client, total), timeout=30)
    assert rig.problems == [], "\n".join(rig.problems[:20])


async def _published(client: NATS, total: int) -> bool:
    return await events_in_stream(client) == total
