"""The payment gateway's behaviour, behind :class:`domain.partners.PaymentGateway`.

The FastStream app (:mod:`partners.apps`) serves it over NATS; unit tests call it in
process. Idempotent on ``payment_id``: the first decision is kept and repeated.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

from domain.errors import Unresponsive
from domain.metadata import MessageContext
from domain.money import format_money
from domain.partners import ChargeReply, ChargeRequest, RefundReply, RefundRequest
from infra.sqlite_worker import SQLiteWorker
from partners import rules
from partners.ledger import Charge, charge_of, put_charge, transaction

#: Ledger states that are a final answer to a charge.
DECIDED = {"approved": "approved", "declined": "declined", "refunded": "voided"}


class PaymentGatewayService:
    def __init__(
        self,
        ledger: SQLiteWorker,
        *,
        failure_rate: float = 0.0,
        seed: int = 0,
        latency: float = 0.0,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be within [0, 1]")
        self.ledger = ledger
        self.failure_rate = failure_rate
        self.seed = seed
        #: Seconds added to every answer: a slower gateway, for demos and load tests.
        self.latency = latency

    async def charge(
        self, request: ChargeRequest, ctx: MessageContext | None = None
    ) -> ChargeReply:
        if request.method == rules.SLOW_CARD:
            raise Unresponsive(f"the gateway does not answer for {request.payment_id!r}")
        if self.latency:
            await asyncio.sleep(self.latency)  # the simulated gateway's own work
        return await self.ledger.run(transaction(lambda conn: self._charge(conn, request)))

    def _charge(self, conn: sqlite3.Connection, request: ChargeRequest) -> ChargeReply:
        pid = request.payment_id
        known = charge_of(conn, pid)
        if known is not None and known.status != "pending":
            return self._reply(known)
        charge = known or Charge(pid, request.order_id, "pending", None, 0)
        amount = format_money(request.amount)
        if request.method == rules.FLAKY_CARD and charge.failures < rules.FLAKY_FAILURES:
            put_charge(conn, replace(charge, amount=amount, failures=charge.failures + 1))
            return ChargeReply(
                payment_id=pid,
                status="unavailable",
                reason=f"gateway busy (attempt {charge.failures + 1})",
            )
        declined = request.method == rules.DECLINED_CARD or rules.unlucky(
            request.order_id, failure_rate=self.failure_rate, seed=self.seed
        )
        decided = replace(charge, status="declined" if declined else "approved", amount=amount)
        put_charge(conn, decided)
        return self._reply(decided)

    @staticmethod
    def _reply(charge: Charge) -> ChargeReply:
        status = charge.status
        if status == "approved":
            return ChargeReply(
                payment_id=charge.payment_id,
                status="approved",
                charge_id=rules.charge_id(charge.payment_id),
            )
        if status == "declined":
            return ChargeReply(
                payment_id=charge.payment_id, status="declined", reason=rules.DECLINED
            )
        return ChargeReply(payment_id=charge.payment_id, status="voided", reason=status)

    async def refund(
        self, request: RefundRequest, ctx: MessageContext | None = None
    ) -> RefundReply:
        if self.latency:
            await asyncio.sleep(self.latency)
        return await self.ledger.run(transaction(lambda conn: self._refund(conn, request)))

    @staticmethod
    def _refund(conn: sqlite3.Connection, request: RefundRequest) -> RefundReply:
        pid = request.payment_id
        known = charge_of(conn, pid)
        if known is not None and known.status in ("approved", "refunded"):
            if known.status == "approved":
                put_charge(conn, replace(known, status="refunded"))
            return RefundReply(payment_id=pid, status="refunded")
        # Nothing was charged: void it, so a charge still on its way is refused.
        base = known or Charge(pid, request.order_id, "voided", None, 0)
        put_charge(conn, replace(base, status="voided"))
        return RefundReply(payment_id=pid, status="voided")
