"""The JetStream streams ordermesh owns, declared in one place."""

from __future__ import annotations

import dataclasses

from loguru import logger
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from broker.subjects import ALL_DLQ, DLQ_STREAM, EVENTS_STREAM, EVENTS_STREAM_SUBJECTS

#: Window in which JetStream drops a republished event by its ``Nats-Msg-Id``.
DUPLICATE_WINDOW_SECONDS = 120.0


def events_stream_config(replicas: int = 1) -> StreamConfig:
    """``EVENTS``: every stored event (saga lifecycle too), in store order, kept until an
    operator says otherwise; ``replicas`` copies (3 on a 3-node cluster)."""
    return StreamConfig(
        name=EVENTS_STREAM,
        subjects=list(EVENTS_STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        allow_direct=True,
        num_replicas=replicas,
    )


def dlq_stream_config(replicas: int = 1) -> StreamConfig:
    """``DLQ``: messages a consumer could not use, kept for an operator to inspect."""
    return StreamConfig(
        name=DLQ_STREAM,
        subjects=[ALL_DLQ],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create ``EVENTS`` and ``DLQ`` with ``replicas`` copies, or bring the rest of their
    config up to date; safe to call from every replica.

    An existing stream keeps the replica count it has: scaling a stream moves its data
    between servers, which some servers refuse or do abruptly, and services started with
    different settings must not flip it back and forth at every start. An operator
    changes it on purpose (``nats stream edit --replicas``); a mismatch is logged.
    """
    for name, config in (
        (EVENTS_STREAM, events_stream_config(replicas)),
        (DLQ_STREAM, dlq_stream_config(replicas)),
    ):
        try:
            await js.add_stream(config)
            continue
        except APIError as refused:
            try:
                existing = (await js.stream_info(name)).config
            except NotFoundError:
                # Not there, yet not created (e.g. 3 replicas on a single server): the
                # reason is the refusal, not the lookup.
                raise refused from None
        if existing.num_replicas is not None and existing.num_replicas != replicas:
            logger.warning(
                "stream {} has {} replica(s), settings ask for {}: left as it is",
                name,
                existing.num_replicas,
                replicas,
            )
            config = dataclasses.replace(config, num_replicas=existing.num_replicas)
        await js.update_stream(config)
