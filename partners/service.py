"""Both partners as one component of an ordermesh process (``ordermesh run partners``).

Started like any other service: each partner opens its ledger, connects its own FastStream
broker to NATS (with the process's credentials and TLS) and subscribes; ``start`` returns
once the server has its subscriptions, so a request sent next is served.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker

from broker.subjects import PAYMENT_GATEWAY, SHIPPING_CARRIER
from infra.sqlite_worker import SQLiteWorker
from partners.apps import payment_gateway, shipping_carrier
from partners.carrier import ShippingCarrierService
from partners.gateway import PaymentGatewayService
from partners.ledger import open_ledger
from partners.telemetry import partner_middlewares


@dataclass
class PartnerServices:
    servers: str
    data_dir: Path
    failure_rate: float = 0.0
    seed: int = 0
    latency: float = 0.0
    #: nats-py connection options (credentials, TLS, reconnects), as for every service.
    options: dict[str, Any] = field(default_factory=dict)
    gateway: PaymentGatewayService | None = None
    carrier: ShippingCarrierService | None = None
    brokers: list[NatsBroker] = field(default_factory=list)
    ledgers: list[SQLiteWorker] = field(default_factory=list)

    async def start(self) -> None:
        gateway_ledger = open_ledger(self.data_dir / f"{PAYMENT_GATEWAY}.db", PAYMENT_GATEWAY)
        carrier_ledger = open_ledger(self.data_dir / f"{SHIPPING_CARRIER}.db", SHIPPING_CARRIER)
        self.ledgers = [gateway_ledger, carrier_ledger]
        for ledger in self.ledgers:
            await ledger.run(lambda _conn: None)  # create the file and its tables now
        self.gateway = PaymentGatewayService(
            gateway_ledger, failure_rate=self.failure_rate, seed=self.seed, latency=self.latency
        )
        self.carrier = ShippingCarrierService(carrier_ledger, latency=self.latency)
        self.brokers = [
            payment_gateway(
                self.gateway,
                self.servers,
                middlewares=partner_middlewares(PAYMENT_GATEWAY),
                **self.options,
            ),
            shipping_carrier(
                self.carrier,
                self.servers,
                middlewares=partner_middlewares(SHIPPING_CARRIER),
                **self.options,
            ),
        ]
        for broker in self.brokers:
            connection = await broker.connect()
            await broker.start()
            # The server has the subscriptions once it answered a ping sent after them.
            await connection.flush()

    async def stop(self) -> None:
        for broker in reversed(self.brokers):
            with contextlib.suppress(Exception):
                await broker.stop()
        self.brokers.clear()
        for ledger in self.ledgers:
            await ledger.close()
        self.ledgers.clear()
