"""Prometheus metrics. The names and labels are a contract: dashboards and alerts
outside the code depend on them (see ``docs/operations.md``).

Labels are types, codes and statuses only, never ids. Histograms carry the current
trace id as an exemplar, so a latency spike links to the trace that caused it (visible
when scraped as OpenMetrics). Counters and histograms are ``telemetry.instruments``' (no
lock per update), gauges prometheus-client's; all are served by prometheus-client.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from prometheus_client import Gauge

from telemetry.instruments import CallbackGauge, LoopTotal
from telemetry.instruments import LoopCounter as Counter
from telemetry.instruments import LoopHistogram as Histogram
from telemetry.tracing import current_ids, enabled

#: Message handling: from sub-millisecond to the 30 s a saga step may wait.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,  # the command latency SLO's threshold (p95 < 200 ms): its bad ratio is read here
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: A saga runs for milliseconds when all goes well and a minute when a step times out.
SAGA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: The label value for a type nobody registered, so a client cannot mint label values.
UNKNOWN = "unknown"

command_dispatched = Counter(
    "ordermesh_command_dispatched",
    "Commands received, by type (whatever their outcome)",
    ["command_type"],
)
command_errors = Counter(
    "ordermesh_command_errors",
    "Commands answered with ok: false, by type and error code",
    ["command_type", "code"],
)
command_duration = Histogram(
    "ordermesh_command_processing_duration_seconds",
    "Time from receiving a command to sending its reply",
    ["command_type"],
    buckets=LATENCY_BUCKETS,
)
event_stored = Counter(
    "ordermesh_event_stored", "Events appended to the event store, by type", ["event_type"]
)
event_processing = Histogram(
    "ordermesh_event_processing_duration_seconds",
    "Time a consumer spent applying an event (its batch's apply time)",
    ["event_type", "consumer"],
    buckets=LATENCY_BUCKETS,
)
query_executed = Counter(
    "ordermesh_query_executed", "Queries received, by type (whatever their outcome)", ["query_type"]
)
query_errors = Counter(
    "ordermesh_query_errors",
    "Queries answered with ok: false, by type and error code",
    ["query_type", "code"],
)
query_duration = Histogram(
    "ordermesh_query_execution_duration_seconds",
    "Time from receiving a query to sending its reply",
    ["query_type"],
    buckets=LATENCY_BUCKETS,
)
saga_started = Counter("ordermesh_saga_started", "Sagas started", ["saga_type"])
saga_completed = Counter(
    "ordermesh_saga_completed",
    "Sagas ended, by final status (completed, or failed after compensation)",
    ["saga_type", "status"],
)
saga_duration = Histogram(
    "ordermesh_saga_duration_seconds",
    "Time from a saga's start to its end",
    ["saga_type"],
    buckets=SAGA_BUCKETS,
)
saga_active = Gauge("ordermesh_saga_active", "Sagas this process is driving now", ["saga_type"])
eventstore_duration = Histogram(
    "ordermesh_eventstore_operation_duration_seconds",
    "Event store calls: append, read_stream, read_all, and each read a subscription makes",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
projection_lag = Gauge(
    "ordermesh_projection_lag_seconds",
    "Age of the newest event a projection has applied, when it applied it",
    ["projection"],
)
relay_lag = Gauge(
    "ordermesh_relay_lag_seconds",
    "Age of the newest event the relay has had acknowledged by JetStream, at the ack",
)
dlq_messages = Counter(
    "ordermesh_dlq_messages",
    "Messages set aside in the DLQ stream, by the subject they arrived on",
    ["subject"],
)
eventstore_head_position = CallbackGauge(
    "ordermesh_eventstore_head_position",
    "Store position of the newest event this process appended (compare with the relay's)",
)
relay_position = CallbackGauge(
    "ordermesh_relay_position",
    "Store position of the newest event JetStream acknowledged to the relay",
)
leader = Gauge(
    "ordermesh_leader",
    "1 while this process holds the role's lease and runs it (relay, saga, projections);"
    " 0 while it stands by",
    ["role"],
)
projection_position = Gauge(
    "ordermesh_projection_position",
    "Store position of the newest event a projection has applied",
    ["projection"],
)
projection_backlog = Gauge(
    "ordermesh_projection_backlog_messages",
    "Messages in EVENTS still to be delivered to a consumer after its last batch",
    ["consumer"],
)
stream_messages = Gauge(
    "ordermesh_jetstream_stream_messages", "Messages held in a JetStream stream", ["stream"]
)
stream_bytes = Gauge(
    "ordermesh_jetstream_stream_bytes", "Bytes held in a JetStream stream", ["stream"]
)
saga_step_duration = Histogram(
    "ordermesh_saga_step_duration_seconds",
    "One attempt of a saga step: from sending its command to the reply (or the timeout)",
    ["saga_type", "step"],
    buckets=LATENCY_BUCKETS,
)
saga_step_retries = Counter(
    "ordermesh_saga_step_retries",
    "Attempts of a saga step after its first",
    ["saga_type", "step"],
)
saga_compensations = Counter(
    "ordermesh_saga_compensations",
    "Compensating actions a saga carried out, by outcome (done, or the error that ended it)",
    ["saga_type", "action", "outcome"],
)
order_cancelled = Counter(
    "ordermesh_order_cancelled",
    "Orders cancelled, by reason (an error code; other for a reason of the client's own)",
    ["reason"],
)


class Highest:
    """A number that only grows, read when scraped: what an append reports costs one
    comparison instead of a locked ``Gauge.set`` on the command path."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def offer(self, value: int) -> None:
        if value > self.value:
            self.value = value


#: The highest store position appended by this process (``eventstore_head_position``,
#: absent until the process has appended something).
appended_position = Highest()
eventstore_head_position.read = lambda: appended_position.value or None

event_loop_lag = Gauge(
    "ordermesh_event_loop_lag_seconds",
    "How late the event loop ran a callback it had scheduled (sampled every 0.5 s)",
)

monitor_messages = Counter(
    "ordermesh_monitor_messages",
    "Messages the live monitor took into its buffer, by topic (commands, events, queries, "
    "sagas, dlq, partners)",
    ["topic"],
)
monitor_dropped = Counter(
    "ordermesh_monitor_dropped",
    "Messages the live monitor did not deliver, by reason (subscriber_full: a subscriber's "
    "queue was full, so it missed that message rather than slow the feed)",
    ["reason"],
)


class RequestMetrics(NamedTuple):
    """The RED trio of one request/reply family."""

    received: Counter
    errors: Counter
    duration: Histogram


COMMAND_METRICS = RequestMetrics(command_dispatched, command_errors, command_duration)
QUERY_METRICS = RequestMetrics(query_executed, query_errors, query_duration)


def exemplar(trace_id: str | None = None) -> dict[str, str] | None:
    """The given or current trace id, for a histogram observation."""
    if trace_id is None and enabled():
        ids = current_ids()
        trace_id = ids[0] if ids else None
    return {"trace_id": trace_id} if trace_id else None


#: Seconds between two exemplars on one series: a scrape keeps one per bucket anyway, and
#: attaching one costs more than the observation itself.
EXEMPLAR_INTERVAL = 0.1


def count(counter: Counter, *labels: str) -> None:
    counter.labels(*labels).value += 1


def observe(
    histogram: Histogram, seconds: float, *labels: str, trace_id: str | None = None
) -> None:
    """``histogram.labels(*labels).observe(seconds)``, with an exemplar at most every
    :data:`EXEMPLAR_INTERVAL` per series."""
    series = histogram.labels(*labels)
    if trace_id is None and not enabled():
        series.observe(seconds)  # no trace to name: no exemplar to throttle
        return
    now = time.monotonic()
    if now - series.last_exemplar >= EXEMPLAR_INTERVAL:
        attached = exemplar(trace_id)
        if attached is not None:
            series.last_exemplar = now
        series.observe(seconds, attached)
    else:
        series.observe(seconds)


class timed:
    """Time one event-store call (errors included: a slow failure is still slow)."""

    __slots__ = ("_operation", "_started")

    def __init__(self, operation: str) -> None:
        self._operation = operation
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        observe(eventstore_duration, time.perf_counter() - self._started, self._operation)


graphql_requests = Counter(
    "ordermesh_graphql_requests",
    "GraphQL operations, by type (query, mutation, subscription; unknown if unparsable)",
    ["operation_type"],
)
graphql_errors = Counter(
    "ordermesh_graphql_errors",
    "GraphQL operations answered with errors (refusals, invalid documents, limits)",
    ["operation_type"],
)
graphql_duration = Histogram(
    "ordermesh_graphql_duration_seconds",
    "Time to answer a GraphQL query or mutation (a subscription: to set it up)",
    ["operation_type"],
    buckets=LATENCY_BUCKETS,
)
websocket_connections = Gauge("ordermesh_websocket_connections", "WebSocket connections open now")
websocket_connections_total = LoopTotal(
    "ordermesh_websocket_connections_total",
    "WebSocket connections, by how they were answered (accepted, rejected)",
    ["status"],
)
websocket_connection_duration = Histogram(
    "ordermesh_websocket_connection_duration_seconds",
    "How long an accepted WebSocket connection stayed open",
    [],
    buckets=(1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0),
)
websocket_messages = Counter(
    "ordermesh_websocket_messages",
    "WebSocket messages, by direction (in, out) and graphql-transport-ws message type",
    ["direction", "type"],
)
