"""The monitoring contract, written once: metric families with their type and labels,
recording rules, alert names and scrape jobs. Dashboards, alert rules and the docs outside
the code depend on these names, so the tests hold the code and the files to this list
rather than to each other (a rename on both sides would otherwise go unseen).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Kind = Literal["counter", "gauge", "histogram", "untyped"]


class Family(NamedTuple):
    kind: Kind
    labels: frozenset[str]


def _f(kind: Kind, *labels: str) -> Family:
    return Family(kind, frozenset(labels))


#: ordermesh's metric families, by the name they are scraped under (counters with
#: ``_total``; a histogram's series are ``_bucket``, ``_count`` and ``_sum``).
ORDERMESH_METRICS: dict[str, Family] = {
    "ordermesh_command_dispatched_total": _f("counter", "command_type"),
    "ordermesh_command_errors_total": _f("counter", "command_type", "code"),
    "ordermesh_command_processing_duration_seconds": _f("histogram", "command_type"),
    "ordermesh_event_stored_total": _f("counter", "event_type"),
    "ordermesh_event_processing_duration_seconds": _f("histogram", "event_type", "consumer"),
    "ordermesh_query_executed_total": _f("counter", "query_type"),
    "ordermesh_query_errors_total": _f("counter", "query_type", "code"),
    "ordermesh_query_execution_duration_seconds": _f("histogram", "query_type"),
    "ordermesh_saga_started_total": _f("counter", "saga_type"),
    "ordermesh_saga_completed_total": _f("counter", "saga_type", "status"),
    "ordermesh_saga_duration_seconds": _f("histogram", "saga_type"),
    "ordermesh_saga_active": _f("gauge", "saga_type"),
    "ordermesh_eventstore_operation_duration_seconds": _f("histogram", "operation"),
    "ordermesh_projection_lag_seconds": _f("gauge", "projection"),
    "ordermesh_relay_lag_seconds": _f("gauge"),
    "ordermesh_dlq_messages_total": _f("counter", "subject"),
    "ordermesh_event_loop_lag_seconds": _f("gauge"),
    "ordermesh_eventstore_head_position": _f("gauge"),
    "ordermesh_relay_position": _f("gauge"),
    "ordermesh_leader": _f("gauge", "role"),
    "ordermesh_projection_position": _f("gauge", "projection"),
    "ordermesh_projection_backlog_messages": _f("gauge", "consumer"),
    "ordermesh_jetstream_stream_messages": _f("gauge", "stream"),
    "ordermesh_jetstream_stream_bytes": _f("gauge", "stream"),
    "ordermesh_saga_step_duration_seconds": _f("histogram", "saga_type", "step"),
    "ordermesh_saga_step_retries_total": _f("counter", "saga_type", "step"),
    "ordermesh_saga_compensations_total": _f("counter", "saga_type", "action", "outcome"),
    "ordermesh_order_cancelled_total": _f("counter", "reason"),
    "ordermesh_monitor_messages_total": _f("counter", "topic"),
    "ordermesh_monitor_dropped_total": _f("counter", "reason"),
    "ordermesh_graphql_requests_total": _f("counter", "operation_type"),
    "ordermesh_graphql_errors_total": _f("counter", "operation_type"),
    "ordermesh_graphql_duration_seconds": _f("histogram", "operation_type"),
    "ordermesh_websocket_connections": _f("gauge"),
    # Untyped: a counter family of this name would clash with the gauge's in OpenMetrics.
    "ordermesh_websocket_connections_total": _f("untyped", "status"),
    "ordermesh_websocket_connection_duration_seconds": _f("histogram"),
    "ordermesh_websocket_messages_total": _f("counter", "direction", "type"),
}

_PARTNER = ("app_name", "broker", "handler")

#: The partners' families (``ordermesh run partners``, on that process's /metrics):
#: FastStream's own ``NatsPrometheusMiddleware``, one set per partner. ``app_name`` is the
#: partner (``payment-gateway``, ``shipping-carrier``), ``broker`` is ``nats`` and
#: ``handler`` the subject (one of the four ``partners.*``). Not in ``ORDERMESH_METRICS``:
#: FastStream names and fills them, with no exemplars. Its ``faststream_published_*``
#: families stay empty (a reply is not counted as a publish), so they are not listed.
PARTNER_METRICS: dict[str, Family] = {
    "faststream_received_messages_total": _f("counter", *_PARTNER),
    "faststream_received_messages_size_bytes": _f("histogram", *_PARTNER),
    "faststream_received_messages_in_process": _f("gauge", *_PARTNER),
    "faststream_received_processed_messages_total": _f("counter", *_PARTNER, "status"),
    "faststream_received_processed_messages_duration_seconds": _f("histogram", *_PARTNER),
    "faststream_received_processed_messages_exceptions_total": _f(
        "counter", *_PARTNER, "exception_type"
    ),
}

#: prometheus-client's default collectors, and Prometheus's own series for every target.
PROCESS_METRICS: dict[str, Family] = {
    "process_cpu_seconds_total": _f("counter"),
    "process_resident_memory_bytes": _f("gauge"),
    "process_open_fds": _f("gauge"),
    "process_max_fds": _f("gauge"),
    "process_start_time_seconds": _f("gauge"),
    "python_gc_collections_total": _f("counter", "generation"),
    "python_gc_objects_collected_total": _f("counter", "generation"),
    "python_info": _f("gauge"),
    "up": _f("gauge"),
}

_SLO_WINDOWS = ("5m", "30m", "1h", "6h")

#: infra/prometheus/rules/recording.yml: dashboards query these by name.
RECORDING_RULES = frozenset(
    {
        "command_type:ordermesh_command_dispatched:rate5m",
        "command_type:ordermesh_command_errors:ratio_rate5m",
        "command_type:ordermesh_command_faults:ratio_rate5m",
        "command_type:ordermesh_command_processing_duration_seconds:p50_5m",
        "command_type:ordermesh_command_processing_duration_seconds:p95_5m",
        "command_type:ordermesh_command_processing_duration_seconds:p99_5m",
        "query_type:ordermesh_query_executed:rate5m",
        "query_type:ordermesh_query_errors:ratio_rate5m",
        "query_type:ordermesh_query_faults:ratio_rate5m",
        "query_type:ordermesh_query_execution_duration_seconds:p50_5m",
        "query_type:ordermesh_query_execution_duration_seconds:p95_5m",
        "query_type:ordermesh_query_execution_duration_seconds:p99_5m",
        "event_type:ordermesh_event_stored:rate5m",
        "saga_type:ordermesh_saga_failed:ratio_rate10m",
        *(f"slo:ordermesh_command_faults:ratio_rate{w}" for w in _SLO_WINDOWS),
        *(f"slo:ordermesh_command_slow:ratio_rate{w}" for w in _SLO_WINDOWS),
        *(f"slo:ordermesh_command_availability:burn_rate{w}" for w in _SLO_WINDOWS),
        *(f"slo:ordermesh_command_latency:burn_rate{w}" for w in _SLO_WINDOWS),
    }
)

#: infra/prometheus/rules/alerts.yml (docs/operations.md has a runbook section each).
ALERTS = frozenset(
    {
        "HighErrorRate",
        "SlowResponseTime",
        "SagaFailureRate",
        "ProjectionLagHigh",
        "RelayStalled",
        "DLQNotEmpty",
        "ServiceDown",
        "EventLoopLagHigh",
        "SagaStuck",
        "SLOErrorBudgetBurnFast",
        "SLOErrorBudgetBurnSlow",
        "PartnerSlowResponse",
    }
)

#: infra/prometheus/prometheus.yml: scrape jobs and their targets (compose services).
SCRAPE_JOBS = {
    "ordermesh": {
        "ordermesh-command:9464",
        "ordermesh-partners:9464",
        "ordermesh-relay:9464",
        "ordermesh-saga:9464",
        "ordermesh-read:9464",
        "ordermesh-api:9464",
    },
    "nats": {"nats-exporter:7777"},
    "otel-collector": {"otel-collector:8888"},
    "prometheus": {"localhost:9090"},
}
