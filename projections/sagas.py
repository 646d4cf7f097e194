"""The saga read model: where each order's fulfilment is, and how it got there.

One row per saga. Its steps and compensations are JSON lists on the row, not tables
of their own: they are only ever read whole, with their saga, and a saga has a
handful of each.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, ClassVar

from domain.event_store import RecordedEvent
from domain.messages import Event
from sagas import order_fulfillment as f


class SagaProjection:
    name: ClassVar[str] = "sagas"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("sagas",)
    event_types: ClassVar[frozenset[str]] = frozenset(cls.TYPE for cls in f.SAGA_EVENTS)
    schema: ClassVar[str] = """
    CREATE TABLE IF NOT EXISTS sagas (
        saga_id       TEXT PRIMARY KEY,
        saga_type     TEXT    NOT NULL,
        order_id      TEXT    NOT NULL,
        status        TEXT    NOT NULL,
        current_step  TEXT,
        error         TEXT,
        steps         TEXT    NOT NULL,
        compensations TEXT    NOT NULL,
        version       INTEGER NOT NULL,
        started_at    TEXT    NOT NULL,
        updated_at    TEXT    NOT NULL,
        finished_at   TEXT
    );
    CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status, started_at);
    """

    def apply(self, db: sqlite3.Connection, event: Event, recorded: RecordedEvent) -> None:
        at = recorded.recorded_at.isoformat()
        if isinstance(event, f.SagaStarted):
            db.execute(
                "INSERT INTO sagas (saga_id, saga_type, order_id, status, steps, compensations,"
                " version, started_at, updated_at)"
                " VALUES (?, ?, ?, 'running', '[]', '[]', 1, ?, ?)",
                (event.saga_id, f.SAGA_TYPE, event.order_id, at, at),
            )
            return
        if not isinstance(event, f.SagaEvent):
            return
        saga = get_saga(db, event.saga_id)
        if saga is None:
            return  # its start is not in this feed (EVENTS was trimmed): nothing to attach to
        _advance(saga, event, at)
        db.execute(
            "UPDATE sagas SET status = ?, current_step = ?, error = ?, steps = ?,"
            " compensations = ?, finished_at = ?, version = version + 1, updated_at = ?"
            " WHERE saga_id = ?",
            (
                saga["status"],
                saga["current_step"],
                None if saga["error"] is None else json.dumps(saga["error"]),
                json.dumps(saga["steps"]),
                json.dumps(saga["compensations"]),
                saga["finished_at"],
                at,
                event.saga_id,
            ),
        )


def _advance(saga: dict[str, Any], event: f.SagaEvent, at: str) -> None:
    """Fold one transition into the decoded row.

    A step's ``attempts`` counts the attempts started, the one in flight included, so
    it reads the same while a step retries as the final count its completion reports.
    A step keeps its last error after a later success: that is why it took retries.
    """
    match event:
        case f.StepStarted():
            saga["current_step"] = event.step
            saga["steps"].append(
                {
                    "step": event.step,
                    "status": "running",
                    "started_at": at,
                    "finished_at": None,
                    "deadline": event.deadline.isoformat(),
                    "attempts": 1,
                    "error": None,
                }
            )
        case f.StepCompleted():
            if step := _step(saga, event.step):
                step.update(status="completed", finished_at=at, attempts=event.attempts)
        case f.StepFailed():
            if step := _step(saga, event.step):
                step["error"] = {"code": event.code, "message": event.message}
                if event.will_retry:
                    step["attempts"] = event.attempt + 1
                else:
                    step.update(status="failed", finished_at=at, attempts=event.attempt)
        case f.Compensating():
            saga["status"], saga["current_step"] = "compensating", None
            saga["error"] = {
                "step": event.failed_step,
                "code": event.code,
                "message": event.message,
            }
            saga["compensations"] = [
                {"action": action, "status": "pending", "finished_at": None}
                for action in event.actions
            ]
        case f.Compensated():
            for action in saga["compensations"]:
                if action["action"] == event.action and action["status"] == "pending":
                    # "done", or the code of an action that could never succeed.
                    action.update(status=event.outcome, finished_at=at)
                    break
        case f.SagaCompleted():
            saga["status"], saga["current_step"], saga["finished_at"] = "completed", None, at
        case f.SagaFailed():
            saga["status"], saga["current_step"], saga["finished_at"] = "failed", None, at
            if saga["error"] is None:
                saga["error"] = {
                    "step": event.failed_step,
                    "code": event.code,
                    "message": event.message,
                }


def _step(saga: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in reversed(saga["steps"]) if s["step"] == name), None)


_SAGA_COLUMNS = (
    "saga_id, saga_type, order_id, status, current_step, error, steps, compensations,"
    " version, started_at, updated_at, finished_at"
)
_JSON_COLUMNS = ("error", "steps", "compensations")


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    view = dict(zip(_SAGA_COLUMNS.split(", "), row, strict=True))
    for column in _JSON_COLUMNS:
        if view[column] is not None:
            view[column] = json.loads(view[column])
    return view


def get_saga(db: sqlite3.Connection, saga_id: str) -> dict[str, Any] | None:
    row = db.execute(f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
    return _row(row) if row else None


def list_sagas(
    db: sqlite3.Connection, *, status: str | None, limit: int, offset: int
) -> dict[str, Any]:
    clause, args = ("WHERE status = ?", [status]) if status is not None else ("", [])
    rows = db.execute(
        f"SELECT {_SAGA_COLUMNS} FROM sagas {clause}"
        " ORDER BY started_at DESC, saga_id LIMIT ? OFFSET ?",
        (*args, limit, offset),
    ).fetchall()
    (total,) = db.execute(f"SELECT COUNT(*) FROM sagas {clause}", args).fetchone()
    return {"items": [_row(r) for r in rows], "total": total, "limit": limit, "offset": offset}
