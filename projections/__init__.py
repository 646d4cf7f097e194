"""Read models: pure, synchronous SQL over one SQLite connection.

A projection applies events and answers queries; it never touches NATS. The broker's
projector feeds it from JetStream and runs it in the read-model database's worker
thread, which keeps every apply and its checkpoint in one transaction.
"""

from __future__ import annotations

from projections.base import Projection
from projections.orders import OrderProjection
from projections.products import ProductProjection
from projections.sagas import SagaProjection


def all_projections() -> list[Projection]:
    return [ProductProjection(), OrderProjection(), SagaProjection()]


__all__ = [
    "OrderProjection",
    "ProductProjection",
    "Projection",
    "SagaProjection",
    "all_projections",
]
