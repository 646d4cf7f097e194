"""Every event type the system stores, by its CloudEvents ``type``."""

from __future__ import annotations

from domain import inventory, order, payment, product, shipment
from domain.messages import Event
from sagas.order_fulfillment import SAGA_EVENTS

_ALL: tuple[type[Event], ...] = (
    product.ProductCreated,
    product.PriceChanged,
    product.Restocked,
    product.StockReserved,
    product.StockReleased,
    order.OrderPlaced,
    order.OrderConfirmed,
    order.OrderCancelled,
    inventory.InventoryReserved,
    inventory.InventoryReservationFailed,
    inventory.InventoryReleased,
    payment.PaymentProcessed,
    payment.PaymentWasDeclined,
    payment.PaymentRefunded,
    payment.PaymentVoided,
    shipment.ShipmentArranged,
    shipment.ShipmentFailed,
    shipment.ShipmentCancelled,
    *SAGA_EVENTS,
)
EVENTS: dict[str, type[Event]] = {cls.TYPE: cls for cls in _ALL}


def decode_event(event_type: str, data: bytes) -> Event:
    """Rebuild a stored event; an unknown type is a bug in whoever wrote the stream."""
    return EVENTS[event_type].model_validate_json(data)
