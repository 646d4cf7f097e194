"""Shared fixtures: a real nats-server per test, on free loopback ports, in a temp dir."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError as JsNotFoundError
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.connection import connect, request_served
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import SERVICES, App
from ordermesh.child import PartnersProcess
from ordermesh.config import Settings
from ordermesh.logs import configure_logging
from sagas.policy import CompensationPolicy, SagaPolicy, StepPolicy
from telemetry import tracing

# As the CLI does: records get their ids from the message being handled.
configure_logging("tests")


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNatsServer) -> AsyncIterator[NATS]:
    client = await connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


def settings_for(server: EmbeddedNatsServer, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test app: its own data dir, no /metrics port unless asked, and the
    monitor (when it runs) on any free port."""
    defaults: dict[str, Any] = {"metrics_port": 0, "api_port": 0}
    return Settings(nats_url=server.url, data_dir=data_dir, **(defaults | overrides))


#: Everything but the saga and the monitor: tests of the core count exactly the events
#: their commands cause.
CORE_SERVICES = tuple(s for s in SERVICES if s not in ("saga", "api"))


@pytest.fixture
async def app(nats_server: EmbeddedNatsServer, tmp_path: Path) -> AsyncIterator[App]:
    application = App(settings_for(nats_server, tmp_path / "data"), CORE_SERVICES)
    await application.start()
    try:
        yield application
    finally:
        await application.stop()


async def request(
    client: NATS,
    subject: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send like ``nats req`` would: a JSON body (or raw bytes), optional headers; sent
    again on a first "no responders" (``broker.connection.request_served``)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await request_served(client, subject, payload, timeout=timeout, headers=headers)
    decoded: dict[str, Any] = json.loads(reply.data)
    return decoded


async def events_in_stream(client: NATS) -> int:
    """Messages in ``EVENTS``; 0 while no relay has created it yet."""
    try:
        return int((await client.jetstream().stream_info("EVENTS")).state.messages)
    except JsNotFoundError:
        return 0


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll ``check`` until it returns something truthy; the read side is eventually consistent."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(interval)


#: Short enough that the timeout path takes a second, long enough for a busy CI machine.
FAST = SagaPolicy(
    reserve_inventory=StepPolicy(timeout=20, attempt_timeout=5, backoff=0.02),
    process_payment=StepPolicy(timeout=1.5, attempt_timeout=0.5, backoff=0.02),
    arrange_shipping=StepPolicy(timeout=20, attempt_timeout=5, backoff=0.02),
    confirm_order=StepPolicy(timeout=20, attempt_timeout=5, backoff=0.02),
    compensation=CompensationPolicy(attempt_timeout=5, backoff=0.02),
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("ordermesh-test", processors=[SimpleSpanProcessor(exporter)])
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


#: Every service but the partners, which the saga tests run in a process of their own.
WITHOUT_PARTNERS = tuple(s for s in SERVICES if s != "partners")


@pytest.fixture
async def saga_app(nats_server: EmbeddedNatsServer, tmp_path: Path) -> AsyncIterator[App]:
    """Every service, with the saga's short test timeouts (:data:`FAST`); the payment
    gateway and the carrier in a process of their own (``ordermesh run partners``), as
    ``ordermesh up`` runs them."""
    settings = settings_for(nats_server, tmp_path / "data", saga=FAST)
    application = App(settings, WITHOUT_PARTNERS)
    partners = PartnersProcess(nats_server.url, settings)
    try:
        await asyncio.gather(application.start(), partners.start())
        yield application
    finally:
        await asyncio.gather(application.stop(), partners.stop())


@pytest.fixture
def traced_app(spans: InMemorySpanExporter, saga_app: App) -> App:
    """``saga_app`` with every span recorded in ``spans``."""
    return saga_app
