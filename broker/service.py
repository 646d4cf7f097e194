"""A request/reply service on NATS: decode, validate, dispatch, always reply.

Commands and queries share this loop. Whatever goes wrong (oversized body, bad JSON,
wrong schema, unknown subject, a business rule, a lost race, a dead store) the caller
gets an ``ok: false`` reply with a stable code, never silence or a timeout, and a log
line that carries the request's trace and correlation ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from broker import replies
from broker.cloudevents import decode_context
from broker.ping import PingResponder
from broker.replies import RequestError
from broker.subjects import reply_allowed, type_from_subject
from domain.errors import CodedError, Unresponsive
from domain.event_store import EventStoreUnavailable
from domain.metadata import MessageContext
from telemetry import tracing
from telemetry.context import handling
from telemetry.metrics import UNKNOWN, RequestMetrics, count, observe

if TYPE_CHECKING:
    from loguru import Logger

DEFAULT_MAX_PAYLOAD = 256 * 1024
DEFAULT_CONCURRENCY = 256


@dataclass(frozen=True, slots=True)
class Route:
    """How to serve one message type: its body model, the call that answers it, and
    which part of the call's result is the reply's data (``None``: all of it)."""

    model: type[BaseModel]
    call: Callable[[Any, MessageContext], Awaitable[Any]]
    data: Callable[[Any], Any] | None = None


def _log(ctx: MessageContext, msg_type: str) -> Logger:
    """A logger naming the message type; the ids come from the log context."""
    return logger.bind(message_type=msg_type)


class RequestService:
    """Serve ``pattern`` in a queue group, so replicas share the load."""

    def __init__(
        self,
        nc: NATS,
        *,
        name: str,
        pattern: str,
        queue: str,
        routes: Mapping[str, Route],
        unknown_code: str,
        metrics: RequestMetrics,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.name = name
        self._nc = nc
        self._pattern = pattern
        self._queue = queue
        self._routes = dict(routes)
        self._unknown_code = unknown_code
        self._metrics = metrics
        self._max_payload = max_payload
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        #: Answers ``$SRV.PING.ordermesh-<name>``: readiness is a request that came back.
        self.ping = PingResponder(nc, f"ordermesh-{name}")

    async def start(self) -> None:
        # Each type's request count and fault counts exist at 0 from the start: a series
        # first scraped at 3 shows no increase, and a first burst of faults would be
        # invisible to rate() and the alerts on it.
        for label in self._routes:
            self._metrics.received.labels(label)
            for code in replies.FAULT_CODES:
                self._metrics.errors.labels(label, code)
        self._sub = await self._nc.subscribe(self._pattern, queue=self._queue, cb=self._on_msg)
        await self.ping.start()
        # A round trip, so the server knows the subscription before we say we are ready.
        await self._nc.flush()
        logger.info("{} service serving {} (queue {})", self.name, self._pattern, self._queue)

    async def ready(self) -> bool:
        """Whether requests reach this service through the server now."""
        return self._sub is not None and await self.ping.answers()

    async def stop(self) -> None:
        """Stop taking requests, then let those in flight finish and reply."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        await self.ping.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_msg(self, msg: Msg) -> None:
        # Waiting here is the back-pressure: NATS buffers for us while we are full.
        await self._slots.acquire()
        task = asyncio.create_task(self.handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def handle(self, msg: Msg) -> None:
        """Answer one request; the subscription runs this in a task per message."""
        started = time.perf_counter()
        msg_type = type_from_subject(msg.subject)
        ctx = decode_context(msg.subject, msg.headers, subject_type=msg_type)
        # Only registered types become label values and span names: a client must not
        # be able to mint new time series (or put an id in a span name).
        label = msg_type if msg_type in self._routes else UNKNOWN
        attributes = (
            tracing.messaging_attributes(
                self._pattern if label == UNKNOWN else msg.subject,
                "process",
                ctx.id,
                ctx.correlation_id,
            )
            if tracing.enabled()
            else None
        )
        with tracing.span(
            f"{label} process",
            kind=SpanKind.CONSUMER,
            traceparent=ctx.traceparent,
            tracestate=ctx.tracestate,
            attributes=attributes,
        ) as span:
            if span.is_recording():
                # What this request causes (stored events, commands) descends from this span.
                ctx = ctx.with_traceparent(tracing.traceparent_of(span))
            with handling(ctx):
                try:
                    reply, error = await self._answer(msg, msg_type, ctx)
                except Unresponsive as exc:
                    _log(ctx, msg_type).info("{} left unanswered: {}", msg_type, exc)
                    count(self._metrics.received, label)
                    return
            if error is not None:
                tracing.fail(span, *error)
                count(self._metrics.errors, label, error[0])
            if msg.reply and not reply_allowed(msg.reply):
                _log(ctx, msg_type).warning(
                    "{} asked for its reply on {!r}, a system subject; not sent",
                    msg_type,
                    msg.reply,
                )
            elif msg.reply:
                # No headers: the requester knows its own ids, and parsing headers is the
                # most expensive part of a small reply for every NATS client.
                await self._nc.publish(msg.reply, reply)
            else:
                _log(ctx, msg_type).debug("no reply subject for {}; result dropped", msg_type)
            count(self._metrics.received, label)
            # Still inside the span: an exemplar, when one is taken, names its trace.
            observe(self._metrics.duration, time.perf_counter() - started, label)

    async def _answer(
        self, msg: Msg, msg_type: str, ctx: MessageContext
    ) -> tuple[bytes, tuple[str, str] | None]:
        """The reply, and the error code and message when it is a refusal.

        The route is called from here, not from a helper coroutine: every coroutine
        between the task and the store is re-entered on each resume, and the command
        path's chain was ten deep (about 4 µs a command more than four, measured).
        """
        try:
            route, body = self._decode(msg, msg_type)
            result = await route.call(body, ctx)
        except CodedError as exc:
            trace.get_current_span().record_exception(exc)
            _log(ctx, msg_type).warning("{} refused: {} ({})", msg_type, exc.code, exc.message)
            return replies.error(exc.code, exc.message, exc.details), (exc.code, exc.message)
        except EventStoreUnavailable as exc:
            trace.get_current_span().record_exception(exc)
            _log(ctx, msg_type).error("event store unavailable: {}", exc)
            message = "event store unavailable"
            return replies.error(replies.STORE_UNAVAILABLE, message), (
                replies.STORE_UNAVAILABLE,
                message,
            )
        except Unresponsive:
            raise
        except Exception as exc:
            trace.get_current_span().record_exception(exc)
            _log(ctx, msg_type).exception("{} failed", msg_type)
            message = "internal error; see the service log"
            return replies.error(replies.INTERNAL_ERROR, message), (replies.INTERNAL_ERROR, message)
        return replies.ok(result if route.data is None else route.data(result)), None

    def _decode(self, msg: Msg, msg_type: str) -> tuple[Route, BaseModel]:
        """The route and the validated body of a request, or the refusal to send."""
        if len(msg.data) > self._max_payload:
            raise RequestError(
                replies.PAYLOAD_TOO_LARGE,
                f"body is {len(msg.data)} bytes; the limit is {self._max_payload}",
                {"size": len(msg.data), "limit": self._max_payload},
            )
        route = self._routes.get(msg_type)
        if route is None:
            raise RequestError(
                self._unknown_code,
                f"no {self.name} handles {msg.subject!r}",
                {"subject": msg.subject, "known": sorted(self._routes)},
            )
        raw = b"{}" if not msg.data or msg.data.isspace() else msg.data
        try:
            body = route.model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            if any(e["type"] == "json_invalid" for e in errors):
                raise RequestError(
                    replies.MALFORMED_JSON, "body is not valid JSON", errors[0]["msg"]
                ) from None
            raise RequestError(
                replies.VALIDATION_ERROR,
                f"{msg_type}: {len(errors)} invalid field(s)",
                [{"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]} for e in errors],
            ) from None
        return route, body
