"""The ``DLQ`` stream as an operator sees it: list, show, purge, and retry through the
consumer that set a message aside (``ordermesh dlq``).

Reading and purging go straight to JetStream. A retry cannot: only the consumer that
failed knows its read model and its ledger (``broker.dead_letters``), so each consumer
serves ``ordermesh.dlq.retry.<consumer>`` (``broker.projector``) and this module asks the
one a message names. The request carries only the message's ``DLQ`` sequence: the
consumer reads the message itself, so what it applies is what ``DLQ`` holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from broker import cloudevents as ce
from broker import replies
from broker.connection import request_served
from broker.dead_letters import H_CONSUMER, H_DELIVERIES, H_REASON, H_SEQUENCE, H_SUBJECT
from broker.subjects import ALL_DLQ, DLQ_PREFIX, DLQ_STREAM, dlq_retry_subject

#: A retry waits for the consumer's database, which a rebuild may hold for seconds.
RETRY_TIMEOUT = 10.0
#: ``list`` and ``retry --all`` read at most this many messages by default.
DEFAULT_LIMIT = 1000


class RetryRequest(BaseModel):
    """The body of ``ordermesh.dlq.retry.<consumer>``."""

    model_config = ConfigDict(extra="forbid")

    sequence: int = Field(ge=1, description="the message's sequence in DLQ")


class Outcome(StrEnum):
    RETRIED = "retried"
    """Applied by its consumer, and removed from ``DLQ``."""
    ALREADY_APPLIED = "already_applied"
    """An earlier retry applied it; nothing changed (a copy still in ``DLQ`` is removed)."""
    FAILED = "failed"
    """The consumer could not apply it (the reason says why); it stays in ``DLQ``."""
    NOT_FOUND = "not_found"
    """No such message in ``DLQ`` (retried already, or purged)."""
    NO_CONSUMER = "no_consumer"
    """Nobody answered for the consumer the message names: is that service running?"""


#: Error codes of a consumer's refusal (``{"ok": false, "error": {"code": …}}``).
NOT_FOUND = "not_found"
WRONG_CONSUMER = "wrong_consumer"
NOT_AN_EVENT = "not_an_event"
NOT_SET_ASIDE = "not_set_aside"
CANNOT_APPLY = "cannot_apply"
DATABASE_UNAVAILABLE = "database_unavailable"


class RetryRefused(Exception):
    """A consumer's reason not to apply a message; it replies with ``code`` and this text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def outcome_reply(outcome: Outcome, sequence: int, event_id: str) -> bytes:
    return replies.ok({"outcome": outcome.value, "sequence": sequence, "event_id": event_id})


@dataclass(frozen=True, slots=True)
class RetryResult:
    sequence: int
    outcome: Outcome
    consumer: str | None = None
    subject: str | None = None
    event_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in ``DLQ``, with what its headers say about why it is there."""

    sequence: int
    """Its sequence in ``DLQ``: the id ``ordermesh dlq show|retry`` take."""
    dlq_subject: str
    time: datetime | None
    headers: dict[str, str]
    data: bytes

    @property
    def subject(self) -> str:
        """The subject it arrived on."""
        return self.headers.get(H_SUBJECT) or self.dlq_subject.removeprefix(DLQ_PREFIX)

    @property
    def consumer(self) -> str | None:
        return self.headers.get(H_CONSUMER)

    @property
    def reason(self) -> str:
        return self.headers.get(H_REASON, "")

    @property
    def deliveries(self) -> int | None:
        """How often its consumer tried it (absent on messages set aside before retries)."""
        return _int(self.headers.get(H_DELIVERIES))

    @property
    def event_sequence(self) -> int | None:
        return _int(self.headers.get(H_SEQUENCE))

    def summary(self) -> dict[str, Any]:
        """What ``ordermesh dlq list --json`` prints for it."""
        return {
            "sequence": self.sequence,
            "time": self.time.isoformat() if self.time else None,
            "consumer": self.consumer,
            "subject": self.subject,
            "deliveries": self.deliveries,
            "reason": self.reason,
            "event_id": self.headers.get(ce.H_ID),
            "type": self.headers.get(ce.H_TYPE),
            "events_sequence": self.event_sequence,
        }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _dead_letter(raw: RawStreamMsg) -> DeadLetter:
    return DeadLetter(
        sequence=int(raw.seq or 0),
        dlq_subject=raw.subject or "",
        time=raw.time,
        headers={str(k): str(v) for k, v in (raw.headers or {}).items()},
        data=raw.data or b"",
    )


async def read(js: JetStreamContext, sequence: int) -> DeadLetter | None:
    """The message at ``sequence``, or ``None``; raises ``NotFoundError`` without a
    ``DLQ`` stream."""
    await js.stream_info(DLQ_STREAM)
    try:
        return _dead_letter(await js.get_msg(DLQ_STREAM, sequence))
    except NotFoundError:
        return None


async def read_all(js: JetStreamContext, limit: int = DEFAULT_LIMIT) -> list[DeadLetter]:
    """Up to ``limit`` messages, oldest first; raises ``NotFoundError`` without ``DLQ``.

    Each read asks for the next message at or after a sequence, so the gaps a retry
    leaves cost nothing; the stream's last sequence, read first, bounds the walk.
    """
    state = (await js.stream_info(DLQ_STREAM)).state
    found: list[DeadLetter] = []
    sequence = max(1, state.first_seq)
    while sequence <= state.last_seq and len(found) < limit:
        try:
            raw = await js.get_msg(DLQ_STREAM, sequence, subject=ALL_DLQ, next=True)
        except NotFoundError:
            break
        found.append(_dead_letter(raw))
        sequence = int(raw.seq or sequence) + 1
    return found


async def purge(js: JetStreamContext) -> int:
    """Empty ``DLQ``; returns how many messages it held just before."""
    held = int((await js.stream_info(DLQ_STREAM)).state.messages)
    await js.purge_stream(DLQ_STREAM)
    return held


async def retry(nc: NATS, sequence: int, *, timeout: float = RETRY_TIMEOUT) -> RetryResult:
    """Ask the consumer that set message ``sequence`` aside to apply it."""
    letter = await read(nc.jetstream(), sequence)
    if letter is None:
        return RetryResult(sequence, Outcome.NOT_FOUND, reason=f"no message {sequence} in DLQ")
    return await retry_letter(nc, letter, timeout=timeout)


async def retry_all(
    nc: NATS, *, timeout: float = RETRY_TIMEOUT, limit: int = DEFAULT_LIMIT
) -> list[RetryResult]:
    """Retry every message, oldest first, one at a time (so a copy of an event already
    retried is answered "already applied", not raced)."""
    return [
        await retry_letter(nc, letter, timeout=timeout)
        for letter in await read_all(nc.jetstream(), limit)
    ]


async def retry_letter(
    nc: NATS, letter: DeadLetter, *, timeout: float = RETRY_TIMEOUT
) -> RetryResult:
    consumer = letter.consumer
    if not consumer:
        return RetryResult(
            letter.sequence, Outcome.FAILED, subject=letter.subject, reason="no consumer named"
        )
    result = await request_retry(nc, consumer, letter.sequence, timeout=timeout)
    return RetryResult(
        result.sequence,
        result.outcome,
        consumer,
        letter.subject,
        result.event_id or letter.headers.get(ce.H_ID),
        result.reason,
    )


async def request_retry(
    nc: NATS, consumer: str, sequence: int, *, timeout: float = RETRY_TIMEOUT
) -> RetryResult:
    """Send one retry request to ``consumer`` and read its answer."""
    try:
        subject = dlq_retry_subject(consumer)
    except ValueError as exc:
        return RetryResult(sequence, Outcome.FAILED, consumer, reason=str(exc))
    body = RetryRequest(sequence=sequence).model_dump_json().encode()
    try:
        reply = await request_served(nc, subject, body, timeout=timeout, attempts=2)
    except NoRespondersError:
        return RetryResult(
            sequence, Outcome.NO_CONSUMER, consumer, reason=f"nobody serves {subject}"
        )
    except NatsTimeout:
        return RetryResult(
            sequence, Outcome.NO_CONSUMER, consumer, reason=f"no reply within {timeout:g} s"
        )
    try:
        decoded = json.loads(reply.data)
        if decoded["ok"]:
            data = decoded["data"]
            return RetryResult(sequence, Outcome(data["outcome"]), consumer, None, data["event_id"])
        error = decoded["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError) as exc:
        return RetryResult(sequence, Outcome.FAILED, consumer, reason=f"unreadable reply ({exc})")
    outcome = Outcome.NOT_FOUND if code == NOT_FOUND else Outcome.FAILED
    return RetryResult(sequence, outcome, consumer, reason=f"{code}: {message}")
