"""Where notifications go: a JSON-lines file, one line per notification, each once.

A real notifier would hand them to a mail or SMS service; a file keeps the example
runnable anywhere and lets anyone watch it (``tail -f``). Events arrive at least once
(docs/extending.md): a notifier killed after writing a line but before its
acknowledgement reached JetStream gets that event again. The outbox therefore keys every
line by the event's id and writes none twice, which is what makes each notification go
out exactly once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Notification(BaseModel):
    """One line of the outbox."""

    model_config = ConfigDict(frozen=True)

    event_id: str = Field(description="the ordermesh event that caused it (its ce-id)")
    event_type: str
    order_id: str
    text: str
    correlation_id: str
    trace_id: str | None = None
    written_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Outbox:
    """Appends notifications to ``path``, skipping any whose event it already wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        """Lines this process wrote."""
        self.duplicates = 0
        """Events delivered again after their line was written (and skipped)."""
        self._seen: set[str] = set()
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Remember what earlier runs wrote; the file is created on first write."""
        self._seen = {n.event_id for n in await asyncio.to_thread(read, self.path)}

    async def write(self, notification: Notification) -> bool:
        """Append one line unless its event's line is there; True if it wrote."""
        async with self._lock:
            if notification.event_id in self._seen:
                self.duplicates += 1
                return False
            await asyncio.to_thread(self._append, notification.model_dump_json() + "\n")
            self._seen.add(notification.event_id)
            self.written += 1
            return True

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()


def read(path: Path) -> list[Notification]:
    """Every notification in the file, oldest first (none if there is no file)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as file:
        return [Notification.model_validate_json(line) for line in file if line.strip()]
