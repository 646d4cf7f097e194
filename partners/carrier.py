"""The shipping carrier's behaviour, behind :class:`domain.partners.ShippingCarrier`.

The FastStream app (:mod:`partners.apps`) serves it over NATS; unit tests call it in
process. Idempotent on ``shipment_id``: one booking per shipment, one tracking number.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

from domain.metadata import MessageContext
from domain.partners import BookingReply, BookingRequest, CancelBookingReply, CancelBookingRequest
from infra.sqlite_worker import SQLiteWorker
from partners import rules
from partners.ledger import Booking, booking_of, put_booking, transaction


class ShippingCarrierService:
    def __init__(self, ledger: SQLiteWorker, *, latency: float = 0.0) -> None:
        self.ledger = ledger
        #: Seconds added to every answer: a slower carrier, for demos and load tests.
        self.latency = latency

    async def book(
        self, request: BookingRequest, ctx: MessageContext | None = None
    ) -> BookingReply:
        if self.latency:
            await asyncio.sleep(self.latency)  # the simulated carrier's own work
        return await self.ledger.run(transaction(lambda conn: self._book(conn, request)))

    @staticmethod
    def _book(conn: sqlite3.Connection, request: BookingRequest) -> BookingReply:
        known = booking_of(conn, request.shipment_id)
        if known is None:
            country = request.address.country if request.address else None
            if country in rules.RESTRICTED_COUNTRIES:
                known = Booking(
                    request.shipment_id, request.order_id, "refused", None, rules.RESTRICTED_AREA
                )
            else:
                tracking = rules.tracking_number(request.order_id)
                known = Booking(request.shipment_id, request.order_id, "booked", tracking, None)
            put_booking(conn, known)
        return BookingReply.model_validate(
            {
                "shipment_id": known.shipment_id,
                "status": known.status,
                "tracking_number": known.tracking_number,
                "reason": known.reason,
            }
        )

    async def cancel(
        self, request: CancelBookingRequest, ctx: MessageContext | None = None
    ) -> CancelBookingReply:
        if self.latency:
            await asyncio.sleep(self.latency)
        return await self.ledger.run(transaction(lambda conn: self._cancel(conn, request)))

    @staticmethod
    def _cancel(conn: sqlite3.Connection, request: CancelBookingRequest) -> CancelBookingReply:
        known = booking_of(conn, request.shipment_id)
        # Cancelled before it was booked too: a booking still on its way is then refused.
        base = known or Booking(request.shipment_id, request.order_id, "cancelled", None, None)
        put_booking(conn, replace(base, status="cancelled", reason=request.reason))
        return CancelBookingReply(shipment_id=request.shipment_id, status="cancelled")
