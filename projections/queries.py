"""Queries over the read models, by CloudEvents type (``order.get`` on ``queries.order.get``).

Each handler is a synchronous function of a connection, run in the read-model
database's worker thread by the query service.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import Field

from domain.errors import OrderNotFound, ProductNotFound, SagaNotFound
from domain.messages import Identifier, Query
from domain.order import OrderStatus
from projections.orders import get_order, list_orders
from projections.products import get_product, list_products
from projections.sagas import get_saga, list_sagas
from sagas.order_fulfillment import SagaStatus

Limit = Annotated[int, Field(strict=True, ge=1, le=1000)]
#: At most SQLite's largest integer: a larger one cannot be bound to the query, and the
#: client would get ``internal_error`` for its own mistake (found by ``tests/fuzz``).
Offset = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]


class GetProduct(Query):
    TYPE: ClassVar[str] = "product.get"
    product_id: Identifier


class ListProducts(Query):
    TYPE: ClassVar[str] = "product.list"
    limit: Limit = 100
    offset: Offset = 0


class GetOrder(Query):
    TYPE: ClassVar[str] = "order.get"
    order_id: Identifier


class ListOrders(Query):
    TYPE: ClassVar[str] = "order.list"
    customer_id: Identifier | None = None
    status: OrderStatus | None = None
    limit: Limit = 100
    offset: Offset = 0


class GetSaga(Query):
    TYPE: ClassVar[str] = "saga.get"
    saga_id: Identifier


class ListSagas(Query):
    TYPE: ClassVar[str] = "saga.list"
    status: SagaStatus | None = None
    limit: Limit = 100
    offset: Offset = 0


def _get_product(db: sqlite3.Connection, q: GetProduct) -> dict[str, Any]:
    view = get_product(db, q.product_id)
    if view is None:
        raise ProductNotFound(f"product {q.product_id!r} not found", product_id=q.product_id)
    return view


def _list_products(db: sqlite3.Connection, q: ListProducts) -> dict[str, Any]:
    return list_products(db, q.limit, q.offset)


def _get_order(db: sqlite3.Connection, q: GetOrder) -> dict[str, Any]:
    view = get_order(db, q.order_id)
    if view is None:
        raise OrderNotFound(f"order {q.order_id!r} not found", order_id=q.order_id)
    return view


def _list_orders(db: sqlite3.Connection, q: ListOrders) -> dict[str, Any]:
    return list_orders(
        db, customer_id=q.customer_id, status=q.status, limit=q.limit, offset=q.offset
    )


def _get_saga(db: sqlite3.Connection, q: GetSaga) -> dict[str, Any]:
    view = get_saga(db, q.saga_id)
    if view is None:
        raise SagaNotFound(f"saga {q.saga_id!r} not found", saga_id=q.saga_id)
    return view


def _list_sagas(db: sqlite3.Connection, q: ListSagas) -> dict[str, Any]:
    return list_sagas(db, status=q.status, limit=q.limit, offset=q.offset)


QueryHandler = Callable[[sqlite3.Connection, Any], dict[str, Any]]

QUERY_HANDLERS: dict[str, tuple[type[Query], QueryHandler]] = {
    GetProduct.TYPE: (GetProduct, _get_product),
    ListProducts.TYPE: (ListProducts, _list_products),
    GetOrder.TYPE: (GetOrder, _get_order),
    ListOrders.TYPE: (ListOrders, _list_orders),
    GetSaga.TYPE: (GetSaga, _get_saga),
    ListSagas.TYPE: (ListSagas, _list_sagas),
}
