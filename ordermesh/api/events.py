"""``events``: a browser over the stored events, as ``EVENTS`` holds them.

The API has no event store of its own (it may run alone, ``ordermesh run api``); the
relay's copy in JetStream has every stored event with its stream, revision and position
in the headers. A lookup is a ``--no-follow`` replay of the tap over the newest
:data:`WINDOW` messages, filtered as the tap filters, newest first.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from broker import cloudevents as ce
from broker.subjects import ALL_EVENTS, ALL_SAGAS
from ordermesh.tap.filters import Filter
from ordermesh.tap.message import Tapped
from ordermesh.tap.session import Replay, Tap, TapOptions

#: How many of the newest stored messages a lookup reads at most.
WINDOW = 10_000
#: How long a lookup may take before it answers with what it found.
TIMEOUT = 5.0


@dataclass(frozen=True)
class StoredEventView:
    id: str
    stream: str
    revision: int
    position: int
    type: str
    data: Any
    recorded_at: datetime
    sequence: int


def _view(tapped: Tapped) -> StoredEventView | None:
    h = tapped.headers
    try:
        return StoredEventView(
            id=h[ce.H_ID],
            stream=h[ce.H_STREAM],
            revision=int(h[ce.H_REVISION]),
            position=int(h[ce.H_POSITION]),
            type=h[ce.H_TYPE],
            data=json.loads(tapped.data) if tapped.is_json else tapped.raw_text(),
            recorded_at=datetime.fromisoformat(h[ce.H_TIME]),
            sequence=tapped.sequence or 0,
        )
    except (KeyError, ValueError):
        return None  # not written by the relay


class StoredEventReader:
    def __init__(self, nc: NATS, *, window: int = WINDOW) -> None:
        self._nc = nc
        self.window = window

    async def latest(
        self, limit: int, event_type: str | None = None, aggregate_id: str | None = None
    ) -> list[StoredEventView]:
        """The newest ``limit`` stored events of ``event_type`` (a tap pattern such as
        ``order.*``) and ``aggregate_id``, within the newest :attr:`window` messages."""
        found: deque[StoredEventView] = deque(maxlen=limit)

        def keep(tapped: Tapped) -> None:
            view = _view(tapped)
            if view is not None and aggregate_id in (None, tapped.aggregate_id):
                found.append(view)

        options = TapOptions(
            subjects=(ALL_EVENTS, ALL_SAGAS),
            replies=False,
            filter=Filter(types=(event_type,) if event_type else ()),
            replay=Replay(last=self.window, follow=False),
            timeout=TIMEOUT,
        )
        tap = Tap(self._nc, options, keep)
        try:
            await asyncio.wait_for(tap.run(), TIMEOUT * 2)
        except NotFoundError:
            return []  # no relay has created EVENTS yet: nothing is stored
        return list(reversed(found))
