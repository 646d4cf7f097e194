"""Configuration from ``ORDERMESH_*`` environment variables, and nothing else."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.partner_clients import DEFAULT_PARTNER_TIMEOUT
from domain.event_store import DEFAULT_IDEMPOTENCY_WINDOW
from sagas.policy import SagaPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORDERMESH_", env_nested_delimiter="__", extra="ignore"
    )

    nats_url: str | None = Field(
        default=None,
        description="NATS server to use; unset means `up` starts an embedded one",
    )
    # How to reach a server that wants credentials or TLS (docs/operations.md#nats-users-
    # and-permissions): each service runs as its own NATS user (infra/nats/auth.conf).
    nats_user: str | None = Field(default=None, description="NATS user")
    nats_password: SecretStr | None = Field(
        default=None, description="its password (never logged: SecretStr)"
    )
    nats_token: SecretStr | None = Field(default=None, description="NATS token, instead")
    nats_creds: Path | None = Field(
        default=None, description="NATS credentials file (JWT and NKey seed), instead"
    )
    nats_tls_ca: Path | None = Field(default=None, description="CA certificate of the server")
    nats_tls_cert: Path | None = Field(default=None, description="client certificate (mTLS)")
    nats_tls_key: Path | None = Field(default=None, description="its key")
    nats_inbox_prefix: str | None = Field(
        default=None,
        description="where replies arrive, e.g. _INBOX.relay: the user's own inboxes",
    )
    eventstore_url: str | None = Field(
        default=None,
        description="sqlite:///path (default: <data_dir>/events.db), esdb://… or kurrentdb://…",
    )
    data_dir: Path = Field(default=Path(".ordermesh"), description="embedded NATS, SQLite files")
    nats_port: int = Field(default=4222, description="port of the embedded nats-server")
    nats_monitor_port: int = Field(default=8222, description="its HTTP monitoring port")
    max_payload_bytes: int = Field(default=256 * 1024, gt=0, le=1024 * 1024)
    metrics_port: int = Field(
        default=9464, ge=0, le=65535, description="Prometheus /metrics port; 0 turns it off"
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="address /metrics binds (0.0.0.0 for a remote scraper)"
    )
    api_port: int = Field(
        default=4000, ge=0, le=65535, description="the monitor's page and GraphQL; 0: any free port"
    )
    api_host: str = Field(default="127.0.0.1", description="address the monitor binds")
    monitor_buffer: int = Field(
        default=1000, ge=1, le=1_000_000, description="messages the monitor keeps"
    )
    saga: SagaPolicy = Field(
        default_factory=SagaPolicy,
        description="step timeouts and retries, e.g. ORDERMESH_SAGA__PROCESS_PAYMENT__TIMEOUT=60",
    )
    sim_failure_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of card payments the simulator declines"
    )
    sim_seed: int = Field(default=0, description="seed of the simulator's failure choice")
    sim_latency: float = Field(
        default=0.0, ge=0.0, le=60.0, description="seconds the simulated partners take to answer"
    )
    partner_timeout: float = Field(
        default=DEFAULT_PARTNER_TIMEOUT,
        gt=0.0,
        le=120.0,
        description="seconds the command service waits for the payment gateway or the"
        " carrier; past it the command is left unanswered and the saga's timeout decides",
    )
    lease_ttl: float = Field(
        default=3.0,
        gt=0.5,
        le=60.0,
        description="seconds a relay, saga or projections lease lasts unrenewed: a standby"
        " takes over within about this long after the holder dies",
    )
    leads: str | None = Field(
        default=None,
        description="comma-separated roles (relay, projections, saga) this process is meant"
        " to lead; for the others it leaves a free lease to another process for up to"
        " ORDERMESH_LEAD_DEFER seconds after it starts. Unset: it takes any free lease at"
        " once (ordermesh up --replicas sets it, to spread the singletons over processes)",
    )
    lead_defer: float = Field(
        default=30.0,
        ge=0.0,
        le=600.0,
        description="seconds a process leaves a free lease it is not meant to lead",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="copies JetStream keeps of EVENTS, DLQ and the lease bucket; 3 on a"
        " 3-node NATS cluster so that losing one node loses neither data nor leases",
    )
    idempotency_window: float = Field(
        default=DEFAULT_IDEMPOTENCY_WINDOW,
        ge=120.0,
        description="seconds a command id (ce-id) stays recorded; at least JetStream's 120 s",
    )

    def lease_defer(self, role: str) -> float:
        """Seconds this process leaves ``role``'s free lease to the process meant to lead
        it: none when no layout is given (``leads`` unset) or the role is its own."""
        if self.leads is None:
            return 0.0
        mine = {r.strip() for r in self.leads.split(",") if r.strip()}
        return 0.0 if role in mine else self.lead_defer

    @property
    def event_store_url(self) -> str:
        return self.eventstore_url or f"sqlite:///{(self.data_dir / 'events.db').resolve()}"

    @property
    def saga_db_path(self) -> Path:
        return self.data_dir / "sagas.db"

    @property
    def read_model_path(self) -> Path:
        return self.data_dir / "readmodels.db"

    @property
    def default_nats_url(self) -> str:
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"
