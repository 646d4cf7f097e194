"""Wires the services to NATS and the stores, for ``up`` (all) or ``run`` (some).

Each service is independent: ``command``, ``relay`` and ``saga`` need the event store,
``projections`` and ``query`` the read-model database, all of them NATS; ``api`` (the
monitor) needs only NATS. Running them in one process or many changes nothing but the
process count. Every process sends heartbeats, which is how the monitor sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from loguru import logger
from nats.aio.client import Client as NATS

from broker.append_notices import AppendListener, AppendNotices
from broker.connection import connect_checked, connect_options, redact_url
from broker.heartbeat import Heartbeat
from broker.lease import Singleton
from broker.partner_clients import NatsPaymentGateway, NatsShippingCarrier
from broker.projector import Projector
from broker.relay import Relay
from broker.saga_service import SagaService, open_saga_db
from broker.service import RequestService
from broker.services import command_service, query_service
from broker.stream_gauges import StreamGauges
from domain.event_store import EventStore
from handlers import CommandExecutor
from infra.eventstore import open_event_store
from infra.eventstore.sqlite import SQLiteEventStore
from infra.nats_server import EmbeddedNatsServer
from infra.sqlite_worker import SQLiteWorker
from ordermesh.api.app import build_app
from ordermesh.api.dashboard import Dashboard
from ordermesh.api.events import StoredEventReader
from ordermesh.api.process import MonitorProcess
from ordermesh.api.schema import Context
from ordermesh.api.server import ApiServer
from ordermesh.child import ChildGroup, ChildService
from ordermesh.config import Settings
from ordermesh.monitor.broadcaster import Broadcaster
from ordermesh.monitor.buffer import MessageBuffer
from ordermesh.monitor.topology import Topology
from ordermesh.read_models import open_read_models
from projections import all_projections
from telemetry.exposition import EventLoopLag, MetricsEndpoint

SERVICES = ("command", "relay", "projections", "query", "saga", "partners", "api")


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


C = TypeVar("C")


@dataclass
class App:
    settings: Settings
    services: Sequence[str] = SERVICES
    embedded_nats: bool = False
    nats_server: EmbeddedNatsServer | None = None
    nc: NATS | None = None
    store: EventStore | None = None
    read_models: SQLiteWorker | None = None
    executor: CommandExecutor | None = None
    sagas: SagaService | None = None
    saga_db: SQLiteWorker | None = None
    metrics: MetricsEndpoint | None = None
    #: The monitor's API and what it reads, when the ``api`` service runs here.
    api: ApiServer | None = None
    monitor: Context | None = None
    monitor_process: MonitorProcess | None = None
    #: Services this process started as children besides the monitor (``ordermesh up``:
    #: the partners and, with ``--replicas``, the other replicas), in start order.
    children: list[ChildService] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    #: The relay, saga and projections, each behind its lease, when they run here.
    leases: list[Singleton] = field(default_factory=list)
    #: Every service started and every request service answered a request through the
    #: server (``/readyz``; ``ordermesh up`` prints its banner only then).
    started: bool = False

    @property
    def service_name(self) -> str:
        """``ordermesh`` for every core service in one process (the monitor and the
        partners, which ``ordermesh up`` runs beside it, or not), else
        ``ordermesh-<services>``."""
        if set(self.services) >= set(SERVICES) - {"api", "partners"}:
            return "ordermesh"
        return "ordermesh-" + "+".join(self.services)

    @property
    def nats_url(self) -> str:
        if self.nats_server is not None:
            return self.nats_server.url
        return self.settings.default_nats_url

    async def start(self) -> None:
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown service(s) {sorted(unknown)}; choose from {SERVICES}")
        s = self.settings
        if self.embedded_nats and s.nats_url is None:
            self.nats_server = EmbeddedNatsServer(
                s.data_dir / "nats", port=s.nats_port, monitor_port=s.nats_monitor_port
            )
            await self.nats_server.start()
        self.nc = await connect_checked(
            self.nats_url,
            wait=True,  # a server not up yet is waited for; a wrong password fails at once
            **self._connection_options(),
            name=f"ordermesh-{'+'.join(self.services)}",
            # Services publish only to subjects the server gave them (reply inboxes, the
            # subject of a message set aside) or built from the registry; checking each
            # against nats-py's regular expressions cost more than a reply's JSON.
            skip_subject_validation=True,
        )
        if {"command", "relay", "saga"} & set(self.services):
            self.store = await open_event_store(
                s.event_store_url, idempotency_window=s.idempotency_window
            )
        if {"projections", "query"} & set(self.services):
            self.read_models = open_read_models(s.read_model_path)
            await self.read_models.run(lambda _db: None)
        observability: list[Component] = [
            EventLoopLag(),
            # Every process says it is alive, and what it runs: the monitor's service map.
            Heartbeat(self.nc, self.service_name, self.services, ready=self.ready),
        ]
        if s.metrics_port:
            self.metrics = MetricsEndpoint(s.metrics_port, s.metrics_host, ready=self.ready)
            observability.append(self.metrics)
        for component in observability:
            await component.start()
            self.components.append(component)
        for name in self.services:
            for component in self._build(name):
                await component.start()
                self.components.append(component)
        await self._until_answering()
        self.started = True
        logger.info("running {} on {}", ", ".join(self.services), redact_url(self.nats_url))

    def _connection_options(self) -> dict[str, Any]:
        """How every connection of this process reaches NATS: credentials, TLS, and
        reconnecting for ever (the partners' FastStream brokers connect the same way)."""
        s = self.settings
        return connect_options(
            creds=s.nats_creds,
            user=s.nats_user,
            password=s.nats_password,
            token=s.nats_token,
            tls_ca=s.nats_tls_ca,
            tls_cert=s.nats_tls_cert,
            tls_key=s.nats_tls_key,
            inbox_prefix=s.nats_inbox_prefix,
        ) | {
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            # A connection whose reader died without closing it (nats-py 2.16 does so on a
            # malformed header block from any publisher: docs/reliability.md) is found by
            # unanswered pings: within ~40 s rather than nats-py's default ~6 min.
            "ping_interval": 10,
            "max_outstanding_pings": 3,
        }

    async def _until_answering(self, attempts: int = 50) -> None:
        """Wait until every request service answers a ping through the server (each
        try waits up to 2 s), so that "ready" means a client's request will be served."""
        for component in self.components:
            if isinstance(component, RequestService):
                for _ in range(attempts):
                    if await component.ready():
                        break
                else:
                    raise RuntimeError(f"the {component.name} service does not answer pings")

    async def add(self, component: Component) -> None:
        """Start one more component, stopped with the others (first, being the last).
        A child process, or each child of a :class:`ChildGroup`, is recorded as the
        monitor or among :attr:`children`, for the banner."""
        await component.start()
        self.components.append(component)
        group = component.children if isinstance(component, ChildGroup) else (component,)
        for child in group:
            if isinstance(child, MonitorProcess):
                self.monitor_process = child
            elif isinstance(child, ChildService):
                self.children.append(child)

    @property
    def monitor_url(self) -> str | None:
        """Where the monitor's page is: this process's API, or the monitor process's."""
        if self.api is not None:
            return self.api.url
        return self.monitor_process.url if self.monitor_process is not None else None

    def ready(self) -> bool:
        """Started, and connected to NATS now (read from the endpoint's thread)."""
        nc = self.nc
        return self.started and nc is not None and nc.is_connected

    def _build(self, name: str) -> list[Component]:
        assert self.nc is not None
        limit = self.settings.max_payload_bytes
        if name == "command":
            assert self.store is not None
            self.executor = CommandExecutor(self.store)
            timeout = self.settings.partner_timeout
            notices = self._append_notices()
            service: RequestService = command_service(
                self.nc,
                self.executor,
                gateway=NatsPaymentGateway(self.nc, timeout),
                carrier=NatsShippingCarrier(self.nc, timeout),
                max_payload=limit,
            )
            return [*notices, service]
        if name == "partners":
            # Imported here: FastStream costs every other process ~0.2 s of start-up.
            from partners.service import PartnerServices

            s = self.settings
            return [
                PartnerServices(
                    self.nats_url,
                    s.data_dir,
                    failure_rate=s.sim_failure_rate,
                    seed=s.sim_seed,
                    latency=s.sim_latency,
                    options=self._connection_options(),
                )
            ]
        if name == "saga":
            assert self.store is not None
            self.saga_db = open_saga_db(self.settings.saga_db_path)
            self.sagas = SagaService(
                self.nc,
                CommandExecutor(self.store, source="ordermesh.saga"),
                self.saga_db,
                self.settings.saga,
                replicas=self.settings.stream_replicas,
            )
            return [*self._append_notices(), self._singleton("saga", self.sagas)]
        if name == "relay":
            assert self.store is not None
            relay: list[Component] = [
                self._singleton(
                    "relay", Relay(self.nc, self.store, replicas=self.settings.stream_replicas)
                )
            ]
            if isinstance(self.store, SQLiteEventStore):
                # Appends made by other processes wake it at once (broker.append_notices).
                relay.insert(0, AppendListener(self.nc, self.store))
            return relay
        if name == "api":
            buffer = MessageBuffer(capacity=self.settings.monitor_buffer)
            topology = Topology(buffer, self.nc)
            self.monitor = Context(
                nc=self.nc,
                buffer=buffer,
                topology=topology,
                dashboard=Dashboard(),
                events=StoredEventReader(self.nc),
            )
            self.api = ApiServer(
                build_app(self.monitor), self.settings.api_host, self.settings.api_port
            )
            return [Broadcaster(self.nc, buffer), topology, self.api]
        if name == "projections":
            assert self.read_models is not None
            return [
                self._singleton(
                    "projections",
                    Projector(
                        self.nc,
                        self.read_models,
                        all_projections(),
                        replicas=self.settings.stream_replicas,
                    ),
                ),
                StreamGauges(self.nc),
            ]
        assert self.read_models is not None
        return [query_service(self.nc, self.read_models, max_payload=limit)]

    def _append_notices(self) -> list[Component]:
        """For an appender on the embedded store: tell relays in other processes of its
        appends (once per process, though command and saga both append)."""
        if not isinstance(self.store, SQLiteEventStore) or any(
            isinstance(c, AppendNotices) for c in self.components
        ):
            return []
        return [AppendNotices(self.nc, self.store)] if self.nc is not None else []

    def component(self, kind: type[C]) -> C:
        """The running component of that class, behind its lease or not (benchmarks and
        tests reach into the relay or a projector)."""
        for component in self.components:
            inner = component.component if isinstance(component, Singleton) else component
            if isinstance(inner, kind):
                return inner
        raise LookupError(f"no {kind.__name__} runs in this app")

    def _singleton(self, role: str, component: Component) -> Singleton:
        """``component`` runs only while this process holds ``role``'s lease; another
        process running the same service stands by and takes over when this one dies."""
        assert self.nc is not None
        singleton = Singleton(
            self.nc,
            role,
            component,
            ttl=self.settings.lease_ttl,
            replicas=self.settings.stream_replicas,
            defer=self.settings.lease_defer(role),
        )
        self.leases.append(singleton)
        return singleton

    async def wait_leading(self) -> None:
        """Until this process leads every singleton it runs and is meant to lead (all of
        them, unless ``ORDERMESH_LEADS`` says otherwise): tests, ``up``'s banner."""
        for singleton in self.leases:
            if not singleton.defer:
                await singleton.wait_leading()

    async def stop(self) -> None:
        """Stop in reverse order: no new requests first, the server last."""
        self.started = False
        for component in reversed(self.components):
            with contextlib.suppress(Exception):
                await component.stop()
        self.components.clear()
        if self.nc is not None:
            # Components have already finished their in-flight work; flush what they
            # published and close. (Draining would wait on pull subscriptions' queues.)
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            # With the server gone, closing can fail half-way: the stores must close anyway.
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.read_models is not None:
            await self.read_models.close()
            self.read_models = None
        if self.saga_db is not None:
            await self.saga_db.close()
            self.saga_db = None
        if self.nats_server is not None:
            await self.nats_server.stop()
            self.nats_server = None
        self.leases.clear()
        self.metrics = None
        self.api = None
        self.monitor_process = None
        self.children.clear()
