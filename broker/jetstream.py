"""The JetStream streams ordermesh owns, declared in one place."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError

from broker.subjects import ALL_DLQ, DLQ_STREAM, EVENTS_STREAM, EVENTS_STREAM_SUBJECTS

#: Window in which JetStream drops a republished event by its ``Nats-Msg-Id``.
DUPLICATE_WINDOW_SECONDS = 120.0


def events_stream_config() -> StreamConfig:
    """``EVENTS``: every stored event (saga lifecycle too), in store order, kept until an
    operator says otherwise."""
    return StreamConfig(
        name=EVENTS_STREAM,
        subjects=list(EVENTS_STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
    )


def dlq_stream_config() -> StreamConfig:
    """``DLQ``: messages a consumer could not use, kept for an operator to inspect."""
    return StreamConfig(
        name=DLQ_STREAM,
        subjects=[ALL_DLQ],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create ``EVENTS`` and ``DLQ`` or bring their config up to date; safe to call from
    every replica."""
    for config in (events_stream_config(), dlq_stream_config()):
        try:
            await js.add_stream(config)
        except APIError:
            await js.update_stream(config)
