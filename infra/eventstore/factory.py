"""Pick the adapter from ``ORDERMESH_EVENTSTORE_URL``'s scheme."""

from __future__ import annotations

from domain.event_store import DEFAULT_IDEMPOTENCY_WINDOW, EventStore


async def open_event_store(
    url: str, *, idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
) -> EventStore:
    """``sqlite:///path`` opens the embedded store; ``esdb://``/``kurrentdb://`` the server.
    ``idempotency_window``: seconds a command id stays recorded."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        from infra.eventstore.sqlite import SQLiteEventStore

        return await SQLiteEventStore.open(url, idempotency_window=idempotency_window)
    if scheme in {"esdb", "kurrentdb", "kdb"}:
        from infra.eventstore.kurrentdb import KurrentDBEventStore

        return await KurrentDBEventStore.connect(url, idempotency_window=idempotency_window)
    raise ValueError(
        f"unsupported event store URL {url!r} (use sqlite:///…, esdb://… or kurrentdb://…)"
    )
