"""Event-store adapters behind the port in :mod:`domain.event_store`."""

from infra.eventstore.factory import open_event_store

__all__ = ["open_event_store"]
