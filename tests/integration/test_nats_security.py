"""NATS users and permissions (``infra/nats/auth.conf``), TLS, and no secret in logs or
spans, over a real nats-server started with that configuration.

Refusals are read from the server itself: nats-server answers a publish or subscription
a user may not make with ``-ERR 'Permissions Violation for …'`` and nothing else, before
the ``PONG`` of the next round trip, and nats-py hands that error to ``error_cb`` as it
reads it. So after a round trip (:func:`round_trip`) every refusal of what was sent
before is known: an action with no refusal by then was accepted. No test waits for
something not to happen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from loguru import logger
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.connection import NatsUnreachable, connect, connect_options, redact_url
from broker.jetstream import ensure_streams
from broker.subjects import (
    ALL_EVENTS,
    ALL_SAGAS,
    PAYMENT_CHARGE,
    PAYMENT_GATEWAY,
    PAYMENT_REFUND,
    SHIPPING_BOOK,
    SHIPPING_CANCEL,
    SHIPPING_CARRIER,
    dlq_retry_subject,
)
from domain import payment, shipment
from infra.nats_server import EmbeddedNatsServer, nats_server_binary
from ordermesh.api.events import StoredEventReader
from ordermesh.api.process import MonitorProcess
from ordermesh.app import App
from ordermesh.config import Settings
from ordermesh.tap.message import Tapped
from ordermesh.tap.session import Replay, Tap, TapOptions
from partners.ledger import booking_of, charge_of
from partners.service import PartnerServices
from projections import all_projections
from sagas.inbox import SagaInbox
from tests.conftest import FAST, eventually, request
from tests.stack.tools import require_tool

AUTH_CONF = Path(__file__).parents[2] / "infra" / "nats" / "auth.conf"
ROLES = (
    "command",
    "partners",
    "relay",
    "saga",
    "projections",
    "api",
    "tap",
    "client",
    "operator",
)
#: Each user's own inboxes (auth.conf lets it subscribe only there, and the partners,
#: which send no request, not even there); the others read every reply (``_INBOX.>``)
#: and keep nats-py's default.
INBOX = {
    r: f"_INBOX.{r}" for r in ("command", "partners", "relay", "saga", "projections", "client")
}
#: The partners' subjects and the queue group each is served in (broker/subjects.py).
PARTNER_QUEUES = {
    PAYMENT_CHARGE: PAYMENT_GATEWAY,
    PAYMENT_REFUND: PAYMENT_GATEWAY,
    SHIPPING_BOOK: SHIPPING_CARRIER,
    SHIPPING_CANCEL: SHIPPING_CARRIER,
}
READ_MODELS = "+".join(p.name for p in all_projections())
#: The lease bucket of relay, saga and projections (broker/lease.py, being written).
BUCKET = "ordermesh_leases"


@dataclass
class Secured:
    server: EmbeddedNatsServer
    passwords: dict[str, str]
    ca: Path | None = None

    @property
    def tls(self) -> dict[str, Any]:
        return {"tls_ca": self.ca} if self.ca else {}

    async def user(self, role: str, refusals: Refusals | None = None) -> NATS:
        options = connect_options(
            user=role, password=self.passwords[role], inbox_prefix=INBOX.get(role), **self.tls
        )
        if refusals is not None:
            options["error_cb"] = refusals.record
        return await connect(self.server.url, **options)

    def settings(
        self, monkeypatch: pytest.MonkeyPatch, role: str, data: Path, **extra: Any
    ) -> Settings:
        """A service's settings as ``ordermesh run`` reads them: from the environment."""
        env = {
            "ORDERMESH_NATS_URL": self.server.url,
            "ORDERMESH_NATS_USER": role,
            "ORDERMESH_NATS_PASSWORD": self.passwords[role],
            "ORDERMESH_NATS_INBOX_PREFIX": INBOX.get(role, ""),
            "ORDERMESH_DATA_DIR": str(data),
            "ORDERMESH_METRICS_PORT": "0",
            "ORDERMESH_API_PORT": "0",
        }
        if self.ca is not None:
            env["ORDERMESH_NATS_TLS_CA"] = str(self.ca)
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            return Settings(**extra)


class Refusals:
    """The server's permission violations reported to one connection."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: BaseException) -> None:
        self.errors.append(str(exc))

    def of(self, action: str, subject: str, queue: str | None = None) -> bool:
        """Whether the server refused that action; for a subscription, in that queue
        group (``queue``) or as a plain one (``None``), never either for the other."""
        # nats-py lower-cases the server's error line, subject included, and quotes it:
        # 'nats: permissions violation for subscription to "x" using queue "q"'.
        wanted = f'permissions violation for {action} to "{subject.lower()}"'
        if queue is not None:
            wanted += f' using queue "{queue.lower()}"'
        return any(error.rstrip("'").endswith(wanted) for error in self.errors)


async def start_secured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, tls: bool = False
) -> Secured:
    """nats-server with auth.conf included as documented, each password in its
    environment (generated here: the repository holds none)."""
    # nats-server parses a variable's value as a configuration value: a password must
    # read as a string (auth.conf says so); "p" and hex digits always does.
    passwords = {role: "p" + secrets.token_hex(16) for role in ROLES}
    for role, password in passwords.items():
        monkeypatch.setenv(f"ORDERMESH_NATS_{role.upper()}_PASSWORD", password)
    conf_dir = tmp_path / "nats"
    conf_dir.mkdir(parents=True)
    shutil.copy(AUTH_CONF, conf_dir / "auth.conf")  # an include is relative to its config
    extra = 'include "auth.conf"\n'
    ca_pem = None
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        server_pem, server_key, ca_pem = tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem"
        cert.cert_chain_pems[0].write_to_path(str(server_pem))
        cert.private_key_pem.write_to_path(str(server_key))
        ca.cert_pem.write_to_path(str(ca_pem))
        extra += f'tls {{ cert_file: "{server_pem}"\n key_file: "{server_key}" }}\n'
    server = EmbeddedNatsServer(conf_dir, extra_config=extra)
    await server.start()
    return Secured(server, passwords, ca_pem)


@pytest.fixture
async def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Secured]:
    s = await start_secured(tmp_path, monkeypatch)
    try:
        yield s
    finally:
        await s.server.stop()


async def round_trip(nc: NATS) -> None:
    """Until the server has read everything sent so far, and we its answers.

    nats-py 2.16's ``flush`` writes its ``PING`` straight to the socket, ahead of the
    commands still queued for its flusher task (a ``PUB``, a ``SUB``): the server can
    answer that ``PING`` before it even reads them. Its first round trip gets them
    written; the second ``PING`` then follows them."""
    await nc.flush()
    await nc.flush()


async def attempt(nc: NATS, refusals: Refusals, action: str, target: str) -> bool:
    """Publish to or subscribe to ``target``; whether the server accepted it. A
    subscription's target may name a queue group as auth.conf does:
    ``"<subject> <queue group>"``."""
    subject, _, group = target.partition(" ")
    queue = group or None
    if action == "publish":
        assert queue is None, target
        await nc.publish(subject, b"probe")
    else:
        sub = await nc.subscribe(subject, queue=group)
    await round_trip(nc)
    accepted = not refusals.of(action, subject, queue)
    if action == "subscription":
        await sub.unsubscribe()
    return accepted


#: Per user: what it may publish and subscribe to, and what it is refused. Subjects are
#: concrete or patterns as a service would send them.
ALLOWED: dict[str, dict[str, list[str]]] = {
    "command": {
        "publish": [
            "ordermesh.heartbeat.ordermesh-command",
            "ordermesh.store.appended",
            "$SRV.PING.ordermesh-command.1",
            *PARTNER_QUEUES,  # its requests to the partners
        ],
        "subscription": [
            "commands.>",
            "$SRV.PING",
            "$SRV.PING.ordermesh-command.*",
            "_INBOX.command.>",
        ],
    },
    "partners": {
        "publish": ["ordermesh.heartbeat.ordermesh-partners"],
        # Each subject in its partner's queue group (auth.conf's "<subject> <queue>").
        "subscription": [f"{subject} {queue}" for subject, queue in PARTNER_QUEUES.items()],
    },
    "relay": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "$JS.API.STREAM.INFO.EVENTS",
            "$KV.ordermesh_leases.relay",
        ],
        "subscription": ["_INBOX.relay.>", "ordermesh.store.appended"],
    },
    "saga": {
        "publish": [
            "commands.inventory.reserve",
            "dlq.events.order.placed",
            "$JS.API.CONSUMER.MSG.NEXT.EVENTS.c1",
            "$KV.ordermesh_leases.saga",
            "ordermesh.store.appended",
        ],
        "subscription": [dlq_retry_subject(SagaInbox.name), "_INBOX.saga.>"],
    },
    "projections": {
        "publish": [
            "dlq.events.order.placed",
            "$SRV.PING.ordermesh-query.1",
            "$JS.API.STREAM.MSG.DELETE.DLQ",
            "$KV.ordermesh_leases.projections",
        ],
        "subscription": ["queries.>", dlq_retry_subject(READ_MODELS), "_INBOX.projections.>"],
    },
    "api": {
        "publish": [
            "commands.order.place",
            "queries.order.get",
            "$JS.API.STREAM.INFO.EVENTS",
            "$JS.API.CONSUMER.CREATE.EVENTS",
            "ordermesh.heartbeat.ordermesh-api",
        ],
        "subscription": [
            "commands.>",
            "events.>",
            "sagas.>",
            "dlq.>",
            "partners.>",  # the command service's calls to the partners, watched
            "_INBOX.>",
            "ordermesh.heartbeat.>",
        ],
    },
    "tap": {
        "publish": [
            "$JS.API.STREAM.INFO.EVENTS",
            "$JS.API.CONSUMER.CREATE.DLQ",
            "$JS.API.CONSUMER.INFO.EVENTS.c1",
            "$JS.FC.EVENTS.c1.x",
        ],
        "subscription": [
            "commands.>",
            "queries.>",
            "events.>",
            "sagas.>",
            "dlq.>",
            "partners.>",
            "_INBOX.>",
            "ordermesh.>",
        ],
    },
    "client": {
        "publish": ["commands.order.place", "queries.order.get"],
        "subscription": ["_INBOX.client.>"],
    },
    "operator": {
        "publish": [
            "commands.order.cancel",
            "queries.saga.list",
            dlq_retry_subject(SagaInbox.name),
            "$JS.API.STREAM.PURGE.DLQ",
        ],
        "subscription": [">"],
    },
}
REFUSED: dict[str, dict[str, list[str]]] = {
    "command": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "dlq.events.order.placed",
            "commands.order.place",
            "$JS.API.STREAM.INFO.EVENTS",
            "partners.payment.capture",  # the four partner subjects only
        ],
        "subscription": [
            "events.>",
            "queries.>",
            "_INBOX.>",
            "_INBOX.client.>",
            "partners.>",
            f"{PAYMENT_CHARGE} {PAYMENT_GATEWAY}",  # it may not pose as the gateway
        ],
    },
    "partners": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "commands.payment.process",
            "queries.order.get",
            "dlq.events.order.placed",
            PAYMENT_CHARGE,  # it answers requests, never sends one
            "_INBOX.command.abc.1",  # a reply only to a request it received
            "$JS.API.STREAM.INFO.EVENTS",
            "$KV.ordermesh_leases.relay",
        ],
        "subscription": [
            PAYMENT_CHARGE,  # not outside its queue group
            f"{PAYMENT_CHARGE} {SHIPPING_CARRIER}",  # nor in another's
            f"{SHIPPING_BOOK} {PAYMENT_GATEWAY}",
            "partners.>",
            f"partners.> {PAYMENT_GATEWAY}",
            "commands.>",
            "events.>",
            "_INBOX.>",
            "_INBOX.partners.>",  # it sends no request: no replies to read
        ],
    },
    "relay": {
        "publish": [
            "commands.order.place",
            "dlq.events.order.placed",
            "$KV.ordermesh_leases.saga",
            "$JS.API.STREAM.DELETE.EVENTS",
            "$JS.API.STREAM.PURGE.EVENTS",
            SHIPPING_BOOK,
        ],
        "subscription": ["events.>", "commands.>", "_INBOX.>"],
    },
    "saga": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "queries.order.get",
            "$KV.ordermesh_leases.relay",
            "$JS.API.STREAM.DELETE.EVENTS",
            PAYMENT_CHARGE,  # payments go through the command service
        ],
        "subscription": [dlq_retry_subject(READ_MODELS), "events.>", "_INBOX.>"],
    },
    "projections": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "commands.order.place",
            "$JS.API.STREAM.PURGE.EVENTS",
        ],
        "subscription": ["commands.>", dlq_retry_subject(SagaInbox.name), "_INBOX.>"],
    },
    "api": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "dlq.events.order.placed",
            "$JS.API.STREAM.DELETE.EVENTS",
            "$JS.API.STREAM.MSG.DELETE.DLQ",
            SHIPPING_BOOK,
        ],
        "subscription": ["$JS.API.>", "$KV.>"],
    },
    "tap": {
        "publish": [
            "commands.order.place",
            "queries.order.get",
            "events.order.placed",
            "_INBOX.client.abc.1",
            "ordermesh.heartbeat.ordermesh-tap",
            "$JS.API.STREAM.PURGE.EVENTS",
            "$JS.API.STREAM.MSG.DELETE.DLQ",
            "$KV.ordermesh_leases.relay",
            PAYMENT_REFUND,
        ],
        "subscription": ["$JS.API.>", "$KV.>"],
    },
    "client": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "dlq.events.order.placed",
            "$JS.API.STREAM.INFO.EVENTS",
            dlq_retry_subject(SagaInbox.name),
            "ordermesh.heartbeat.ordermesh",
            "$KV.ordermesh_leases.relay",
            PAYMENT_CHARGE,  # no charge nor refund but through the services
            PAYMENT_REFUND,
        ],
        "subscription": [
            "_INBOX.>",
            "_INBOX.saga.>",
            "_INBOX.*.x",
            "events.>",
            "commands.>",
            f"{PAYMENT_CHARGE} {PAYMENT_GATEWAY}",  # nor pose as the gateway
        ],
    },
    "operator": {
        "publish": [
            "events.order.placed",
            "sagas.order_fulfillment.started",
            "dlq.events.order.placed",
            PAYMENT_REFUND,  # a refund is commands.payment.refund: recorded, then sent
        ],
        "subscription": [],
    },
}


@pytest.mark.parametrize("role", ROLES)
async def test_each_user_may_do_what_its_service_needs_and_nothing_else(
    secured: Secured, role: str
) -> None:
    refusals = Refusals()
    nc = await secured.user(role, refusals)
    try:
        for action in ("publish", "subscription"):
            for subject in ALLOWED[role][action]:
                assert await attempt(nc, refusals, action, subject), (role, action, subject)
            for subject in REFUSED[role][action]:
                assert not await attempt(nc, refusals, action, subject), (role, action, subject)
        expected = sum(len(subjects) for subjects in REFUSED[role].values())
        assert len(refusals.errors) == expected, refusals.errors
    finally:
        await nc.close()


async def test_a_wrong_password_is_refused_at_once(secured: Secured) -> None:
    with pytest.raises(NatsUnreachable, match=r"(?i)authorization violation") as refused:
        async with asyncio.timeout(5):
            await App(
                Settings(
                    nats_url=secured.server.url,
                    nats_user="relay",
                    nats_password="not-the-password",
                    metrics_port=0,
                ),
                ("relay",),
            ).start()
    assert "not-the-password" not in str(refused.value)


async def test_a_client_talks_to_the_services_on_its_own_inbox_only(secured: Secured) -> None:
    """The command user answers a client's request (``allow_responses``) on the client's
    inbox, which no other client-side subscription can reach: replies to others
    (``_INBOX.>``) are refused to it, and it cannot publish an event."""
    client_refusals = Refusals()
    client = await secured.user("client", client_refusals)
    command = await secured.user("command")
    try:

        async def serve(msg: Any) -> None:
            await msg.respond(b'{"ok": true}')

        await command.subscribe("commands.>", queue="ordermesh-command", cb=serve)
        await round_trip(command)
        reply = await client.request("commands.product.create", b"{}", timeout=5)
        assert reply.subject.startswith("_INBOX.client.") and reply.data == b'{"ok": true}'
        assert not await attempt(client, client_refusals, "subscription", "_INBOX.>")
        assert not await attempt(client, client_refusals, "publish", "events.order.placed")
    finally:
        await client.close()
        await command.close()


async def test_only_the_relay_publishes_events_through_jetstream(secured: Secured) -> None:
    relay = await secured.user("relay")
    command_refusals = Refusals()
    command = await secured.user("command", command_refusals)
    try:
        js = relay.jetstream()
        await ensure_streams(js)
        ack = await js.publish("events.product.created", b"{}")
        assert (ack.stream, ack.seq) == ("EVENTS", 1)
        # A JetStream publish is a publish with a reply subject: refused at the subject.
        await command.publish("events.product.created", b"{}", reply=command.new_inbox())
        await round_trip(command)
        assert command_refusals.of("publish", "events.product.created")
        assert (await js.stream_info("EVENTS")).state.messages == 1
    finally:
        await relay.close()
        await command.close()


async def test_the_tap_watches_and_replays_but_cannot_send(secured: Secured) -> None:
    relay = await secured.user("relay")
    client = await secured.user("client")
    command = await secured.user("command")
    tap_refusals = Refusals()
    tap_nc = await secured.user("tap", tap_refusals)
    try:
        js = relay.jetstream()
        await ensure_streams(js)
        for i in range(3):
            await js.publish(f"events.product.created{i}", b"{}")

        # --replay --last 2 --no-follow: an ordered consumer on EVENTS, all it needs.
        replayed: list[Tapped] = []
        options = TapOptions(
            subjects=(ALL_EVENTS, ALL_SAGAS), replies=False, replay=Replay(last=2, follow=False)
        )
        async with asyncio.timeout(10):
            await Tap(tap_nc, options, replayed.append).run()
        assert [t.subject for t in replayed] == [
            "events.product.created1",
            "events.product.created2",
        ]

        # Live, a request and its reply on the client's inbox.
        live: list[Tapped] = []
        tap = Tap(tap_nc, TapOptions(count=2), live.append)
        tapping = asyncio.create_task(tap.run())
        await tap.ready.wait()

        async def serve(msg: Any) -> None:
            await msg.respond(b'{"ok": true}')

        await command.subscribe("commands.>", cb=serve)
        await round_trip(command)
        await client.request("commands.product.restock", b"{}", timeout=5)
        async with asyncio.timeout(10):
            await tapping
        assert [t.kind for t in live] == ["command", "reply"]
        assert live[1].subject.startswith("_INBOX.client.")

        # It saw the reply subject; it cannot answer there, nor send anything.
        assert not await attempt(tap_nc, tap_refusals, "publish", live[1].subject)
        assert not await attempt(tap_nc, tap_refusals, "publish", "commands.order.place")
    finally:
        for nc in (relay, client, command, tap_nc):
            await nc.close()


async def test_each_singleton_writes_its_own_lease_and_no_other(secured: Secured) -> None:
    """The lease calls of ``broker/lease.py`` (one key per role in a KV bucket), made with
    nats-py's KV API directly: that module is still being written and not wired in."""
    connections = {role: await secured.user(role) for role in ("relay", "saga", "projections")}
    refusals = Refusals()
    relay_again = await secured.user("relay", refusals)
    try:
        for role, nc in connections.items():
            js = nc.jetstream()
            try:
                kv = await js.key_value(BUCKET)
            except BucketNotFoundError:
                kv = await js.create_key_value(bucket=BUCKET, ttl=3.0, history=1)
            revision = await kv.create(role, b"holder")
            revision = await kv.update(role, b"renewed", last=revision)
            assert (await kv.get(role)).value == b"renewed"
        kv = await relay_again.jetstream().key_value(BUCKET)
        assert (await kv.get("saga")).value == b"renewed"  # it may see who holds what
        await relay_again.publish(f"$KV.{BUCKET}.saga", b"mine", reply=relay_again.new_inbox())
        await round_trip(relay_again)
        assert refusals.of("publish", f"$KV.{BUCKET}.saga")  # not take another's
        for role, nc in connections.items():  # a clean stop hands the lease over
            assert await (await nc.jetstream().key_value(BUCKET)).delete(role)
    finally:
        for nc in (*connections.values(), relay_again):
            await nc.close()


class LogLines:
    """Every log record, as written, with its extras and exception: what leaves a process."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: Any) -> None:
        record = message.record
        exception = record["exception"]
        self.lines.append(f"{message} {record['extra']} {exception.value if exception else ''}")

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    sink = LogLines()
    handler = logger.add(sink, level="DEBUG", format="{message}")
    try:
        yield sink
    finally:
        logger.remove(handler)


async def place_and_follow(client: NATS, order_id: str) -> dict[str, Any]:
    product = {"product_id": f"p-{order_id}", "name": "Widget", "price": "12.50", "stock": 5}
    assert (await request(client, "commands.product.create", product))["ok"]
    order = {
        "order_id": order_id,
        "customer_id": "c-1",
        "items": [{"product_id": f"p-{order_id}", "quantity": 2}],
    }
    placed = await request(client, "commands.order.place", order)
    assert placed["ok"], placed

    async def confirmed() -> dict[str, Any] | None:
        reply = await request(client, "queries.order.get", {"order_id": order_id})
        return reply if reply["ok"] and reply["data"]["status"] == "confirmed" else None

    result: dict[str, Any] = await eventually(confirmed, timeout=20)
    return result


@pytest.mark.timeout(120)
async def test_every_service_runs_as_its_own_user_over_tls(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: LogLines,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The permission set is enough: each service as its own user (credentials, inbox
    prefix and CA from ``ORDERMESH_NATS_*``), a client places an order that the saga
    fulfils (its payment charged by the gateway, its shipment booked by the carrier, each
    on its own connections as the partners user), the monitor sees it all, and the
    operator reaches each consumer's DLQ retry.
    """
    caplog.set_level(logging.WARNING)  # FastStream logs through the standard library
    secured = await start_secured(tmp_path, monkeypatch, tls=True)
    data = tmp_path / "data"
    roles = {
        "command": ("command",),
        "partners": ("partners",),
        "relay": ("relay",),
        "saga": ("saga",),
        "projections": ("projections", "query"),
        "api": ("api",),
    }
    apps = [
        App(secured.settings(monkeypatch, role, data, saga=FAST), services)
        for role, services in roles.items()
    ]
    client = operator = None
    try:
        for app in apps:
            await app.start()
        client = await secured.user("client")
        operator = await secured.user("operator")
        order = await place_and_follow(client, "o-1")
        assert order["data"]["saga_status"] == "completed"
        # Charged and booked by the partners, as themselves.
        partners = apps[1].component(PartnerServices)
        assert partners.gateway is not None and partners.carrier is not None
        charge = await partners.gateway.ledger.run(
            lambda db: charge_of(db, payment.payment_id("o-1"))
        )
        booking = await partners.carrier.ledger.run(
            lambda db: booking_of(db, shipment.shipment_id("o-1"))
        )
        assert charge is not None and charge.status == "approved", charge
        assert booking is not None and booking.status == "booked", booking

        monitor = apps[-1].monitor
        assert monitor is not None
        seen = monitor.buffer.messages(limit=1000)
        [placed] = [m for m in seen if m.subject == "commands.order.place"]
        assert placed.ok is True and placed.latency_ms is not None  # its reply, matched
        assert {"events.order.placed", "sagas.order_fulfillment.completed"} <= {
            m.subject for m in seen
        }
        api_nc = apps[-1].nc
        assert api_nc is not None
        stored = await StoredEventReader(api_nc).latest(100)  # a replay of EVENTS
        assert "order.confirmed" in {e.type for e in stored}

        for consumer in (SagaInbox.name, READ_MODELS):
            reply = await request(operator, dlq_retry_subject(consumer), {"sequence": 1})
            assert reply["error"]["code"] == "not_found", reply  # served, and DLQ is empty
    finally:
        for nc in (client, operator):
            if nc is not None:
                await nc.close()
        for app in reversed(apps):
            await app.stop()
        await secured.server.stop()
    assert "permissions violation" not in log_lines.text().lower()
    assert "nats: " not in log_lines.text()  # no asynchronous NATS error at all
    assert "permissions violation" not in caplog.text.lower()  # the partners' brokers
    assert "nats: " not in caplog.text


async def test_without_the_ca_a_service_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secured = await start_secured(tmp_path, monkeypatch, tls=True)
    try:
        settings = secured.settings(monkeypatch, "command", tmp_path / "data")
        settings = settings.model_copy(update={"nats_tls_ca": None})
        app = App(settings, ("command",))
        with pytest.raises(NatsUnreachable, match=r"(?i)certificate verify failed") as refused:
            async with asyncio.timeout(5):  # not nats-py's retrying for ever
                await app.start()
        await app.stop()
        assert secured.server.url in str(refused.value)
    finally:
        await secured.server.stop()


async def test_the_monitor_process_inherits_the_credentials(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ordermesh up`` runs the monitor as a child process: it connects with the
    parent's ``ORDERMESH_NATS_*`` environment (here the api user's)."""
    operator = await secured.user("operator")
    heartbeats = await operator.subscribe("ordermesh.heartbeat.ordermesh-api")
    monkeypatch.setenv("ORDERMESH_NATS_USER", "api")
    monkeypatch.setenv("ORDERMESH_NATS_PASSWORD", secured.passwords["api"])
    monkeypatch.setenv("ORDERMESH_DATA_DIR", str(tmp_path / "data"))
    monitor = MonitorProcess(secured.server.url, port=0)
    try:
        await monitor.start()  # its page answers: it connected and started
        beat = json.loads((await heartbeats.next_msg(timeout=10)).data)
        assert beat["services"] == ["api"]
    finally:
        await monitor.stop()
        await operator.close()


async def test_no_secret_in_logs_or_spans(
    secured: Secured,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spans: InMemorySpanExporter,
    log_lines: LogLines,
) -> None:
    """Services given their password in the URL (``nats://user:secret@host``) or in
    ``ORDERMESH_NATS_PASSWORD``, at DEBUG, tracing on, serving requests that succeed and
    fail: neither password reaches a log line or a span."""
    data = tmp_path / "data"
    password = secured.passwords["command"]
    in_url = secured.server.url.replace("nats://", f"nats://command:{password}@")
    settings = Settings(
        nats_url=in_url, nats_inbox_prefix=INBOX["command"], data_dir=data, metrics_port=0
    )
    command = App(settings, ("command",))
    read = App(secured.settings(monkeypatch, "projections", data), ("projections", "query"))
    wrong = "wrong" + secrets.token_hex(8)
    wrong_url = secured.server.url.replace("nats://", f"nats://relay:{wrong}@")
    client = None
    try:
        await command.start()
        await read.start()
        client = await secured.user("client")
        product = {"product_id": "p-1", "name": "Widget", "price": "1.00", "stock": 1}
        assert (await request(client, "commands.product.create", product))["ok"]
        assert (await request(client, "commands.order.place", {"order_id": "o-1"}))["ok"] is False
        assert (await request(client, "queries.order.get", {"order_id": "nope"}))["ok"] is False
        with pytest.raises(NatsUnreachable) as refused:
            await App(Settings(nats_url=wrong_url, metrics_port=0), ("relay",)).start()
        logger.warning("{}", refused.value)  # as a supervisor would log it
    finally:
        if client is not None:
            await client.close()
        await read.stop()
        await command.stop()
    logged = log_lines.text()
    assert f"running command on {redact_url(in_url)}" in logged
    assert "nats://command:***@" in logged and "nats://relay:***@" in logged
    traced = json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in s.events],
                "resource": dict(s.resource.attributes),
                "status": s.status.description,
            }
            for s in spans.get_finished_spans()
        ],
        default=str,
    )
    assert "order.place" in traced  # the spans were recorded
    for secret in (password, secured.passwords["projections"], wrong):
        assert secret not in logged
        assert secret not in traced


COMPOSE_AUTH = AUTH_CONF.parent / "compose.auth.yaml"
#: The compose stack's ordermesh containers and the user each runs as.
CONTAINER_USERS = {
    "ordermesh-command": "command",
    "ordermesh-partners": "partners",
    "ordermesh-relay": "relay",
    "ordermesh-saga": "saga",
    "ordermesh-read": "projections",
    "ordermesh-api": "api",
}


def test_the_repository_holds_no_password() -> None:
    text = AUTH_CONF.read_text()
    users = re.findall(r"^\s*user: (\w+)$", text, re.MULTILINE)
    passwords = re.findall(r"^\s*password: (.+)$", text, re.MULTILINE)
    assert sorted(users) == sorted(ROLES)
    assert passwords == [f"$ORDERMESH_NATS_{user.upper()}_PASSWORD" for user in users]
    raw = yaml.safe_load(COMPOSE_AUTH.read_text())["services"]
    given = [v for svc in raw.values() for k, v in svc["environment"].items() if "PASSWORD" in k]
    assert len(given) == len(ROLES) + len(CONTAINER_USERS)
    assert all(re.fullmatch(r"\$\{ORDERMESH_NATS_[A-Z]+_PASSWORD:\?[^}]+\}", v) for v in given)


def test_the_compose_override_runs_each_container_as_its_user() -> None:
    tool = require_tool("docker-compose")
    root = AUTH_CONF.parents[2]
    argv = [tool, "-f", "compose.yaml", "-f", str(COMPOSE_AUTH.relative_to(root)), "config"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORDERMESH_NATS_")}
    refused = subprocess.run(argv, cwd=root, env=clean, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set ORDERMESH_NATS_" in refused.stderr

    passwords = {role: f"p{role}0" for role in ROLES}
    env = clean | {f"ORDERMESH_NATS_{r.upper()}_PASSWORD": p for r, p in passwords.items()}
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    for container, user in CONTAINER_USERS.items():
        container_env = services[container]["environment"]
        assert container_env["ORDERMESH_NATS_USER"] == user
        assert container_env["ORDERMESH_NATS_PASSWORD"] == passwords[user]
        assert container_env.get("ORDERMESH_NATS_INBOX_PREFIX") == INBOX.get(user)
    nats = services["nats"]
    assert nats["command"] == ["-c", "/etc/nats/nats-auth.conf"]
    assert {f"ORDERMESH_NATS_{r.upper()}_PASSWORD" for r in ROLES} <= set(nats["environment"])
    # The server accepts that configuration, its includes resolved as in the container.
    checked = subprocess.run(
        [str(nats_server_binary()), "-c", str(AUTH_CONF.parent / "nats-auth.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
