"""Every event type the domain knows, by its CloudEvents ``type``."""

from __future__ import annotations

from domain import order, product
from domain.messages import Event

EVENTS: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        product.ProductCreated,
        product.PriceChanged,
        product.Restocked,
        product.StockReserved,
        product.StockReleased,
        order.OrderPlaced,
        order.OrderConfirmed,
        order.OrderCancelled,
    )
}


def decode_event(event_type: str, data: bytes) -> Event:
    """Rebuild a stored event; an unknown type is a bug in whoever wrote the stream."""
    return EVENTS[event_type].model_validate_json(data)
