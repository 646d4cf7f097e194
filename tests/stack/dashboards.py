"""The Grafana dashboards in ``infra/grafana/dashboards`` as data, for the tests.

What the static test (``test_dashboards.py``) and the live test (which runs every panel
query against a Prometheus scraping real ordermesh processes) share:

- ``panel_queries()``: every target of every panel, rows' nested panels included;
- ``metric_names(expr)``: the metric names a PromQL expression reads;
- ``external_only(expr)``: whether an expression reads only metrics of the NATS exporter
  or of the OpenTelemetry Collector, which the live test cannot run;
- ``expand(expr)``: an expression with Grafana's variables replaced, ready for Prometheus;
- the allowed names: the monitoring contract's (``tests/contract.py``: metric families,
  the partners' FastStream families and recording rules), ``EXPORTER_METRICS`` and
  ``COLLECTOR_METRICS``, each with where its name comes from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import promql_parser

from tests.contract import ORDERMESH_METRICS, PARTNER_METRICS, PROCESS_METRICS, RECORDING_RULES

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARDS_DIR = GRAFANA / "dashboards"
DATASOURCES_FILE = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS_FILE = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"

#: uid -> (file name, title): fixed, links and bookmarks depend on them.
DASHBOARDS: dict[str, tuple[str, str]] = {
    "ordermesh-overview": ("ordermesh-overview.json", "ordermesh · System overview"),
    "ordermesh-business": ("ordermesh-business.json", "ordermesh · Business"),
    "ordermesh-infrastructure": (
        "ordermesh-infrastructure.json",
        "ordermesh · Infrastructure",
    ),
    "ordermesh-sagas-slo": ("ordermesh-sagas-slo.json", "ordermesh · Sagas and SLOs"),
}

PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"

# --------------------------------------------------------------------------- allowed names

_JSZ = "nats-io/prometheus-nats-exporter collector/jsz.go"
_VARZ = (
    "nats-io/prometheus-nats-exporter collector/collector.go (newPrometheusGaugeVec: "
    "gnatsd_varz_<key of nats-server's /varz JSON>, label server_id), asserted in "
    "collector/collector_test.go TestVarz"
)

#: prometheus-nats-exporter (job "nats", ``-varz -connz -routez -subz -jsz=all``), with
#: where each name comes from. Namespaces: ``gnatsd`` (CoreSystem) and ``jetstream``
#: (JetStreamSystem) in collector/collector.go; ``-prefix`` would replace both.
EXPORTER_METRICS: dict[str, str] = {
    "gnatsd_varz_connections": _VARZ,
    "gnatsd_varz_total_connections": _VARZ,
    "gnatsd_varz_in_msgs": _VARZ,
    "gnatsd_varz_out_msgs": _VARZ,
    "gnatsd_varz_in_bytes": _VARZ,
    "gnatsd_varz_out_bytes": _VARZ,
    "gnatsd_varz_subscriptions": _VARZ,
    # jsz.go: BuildFQName(system, "stream", ...), labels server_id, server_name, cluster,
    # domain, meta_leader, is_meta_leader, account, account_id, stream_name, stream_leader,
    # is_stream_leader; consumer metrics add consumer_name, consumer_leader,
    # is_consumer_leader, consumer_desc, consumer_created (only with -jsz=consumers|all).
    "jetstream_server_total_streams": _JSZ + " (BuildFQName(system, server, total_streams))",
    "jetstream_server_total_consumers": _JSZ + " (server, total_consumers)",
    "jetstream_server_total_messages": _JSZ + " (server, total_messages)",
    "jetstream_server_total_message_bytes": _JSZ + " (server, total_message_bytes)",
    "jetstream_stream_total_messages": _JSZ + " (stream, total_messages)",
    "jetstream_stream_total_bytes": _JSZ + " (stream, total_bytes)",
    "jetstream_stream_first_seq": _JSZ + " (stream, first_seq)",
    "jetstream_stream_last_seq": _JSZ + " (stream, last_seq)",
    "jetstream_stream_consumer_count": _JSZ + " (stream, consumer_count)",
    "jetstream_consumer_num_pending": _JSZ + " (consumer, num_pending)",
    "jetstream_consumer_num_ack_pending": _JSZ + " (consumer, num_ack_pending)",
    "jetstream_consumer_num_redelivered": _JSZ + " (consumer, num_redelivered)",
    "jetstream_consumer_num_waiting": _JSZ + " (consumer, num_waiting)",
    "jetstream_consumer_delivered_consumer_seq": _JSZ + " (consumer, delivered_consumer_seq)",
    "jetstream_consumer_delivered_stream_seq": _JSZ + " (consumer, delivered_stream_seq)",
    "jetstream_consumer_ack_floor_stream_seq": _JSZ + " (consumer, ack_floor_stream_seq)",
}

_RECEIVER = "open-telemetry/opentelemetry-collector receiver/receiverhelper/documentation.md"
_EXPORTER = "open-telemetry/opentelemetry-collector exporter/exporterhelper/documentation.md"

#: The OpenTelemetry Collector's own telemetry (job "otel-collector", :8888), by the names
#: its generated documentation gives. Counters (Sum, monotonic) gained a ``_total`` suffix
#: over Prometheus in v0.119/v0.120 (opentelemetry-collector issue #12458, PR #12500:
#: "internal metrics exported over Prometheus will append a _total suffix ... if
#: without_type_suffix is not configured"), so the dashboards select them with
#: ``{__name__=~"<name>(_total)?"}``, which ``metric_names`` reads as ``<name>``.
COLLECTOR_METRICS: dict[str, str] = {
    "otelcol_receiver_accepted_spans": _RECEIVER + " (Sum, monotonic; labels receiver, transport)",
    "otelcol_receiver_refused_spans": _RECEIVER + " (Sum, monotonic; labels receiver, transport)",
    "otelcol_receiver_failed_spans": _RECEIVER + " (Sum, monotonic)",
    "otelcol_exporter_sent_spans": _EXPORTER + " (Sum, monotonic; label exporter)",
    "otelcol_exporter_send_failed_spans": _EXPORTER + " (Sum, monotonic; label exporter)",
    "otelcol_exporter_enqueue_failed_spans": _EXPORTER + " (Sum, monotonic; label exporter)",
    "otelcol_exporter_queue_size": _EXPORTER + " (Gauge, no suffix; label exporter)",
    "otelcol_exporter_queue_capacity": _EXPORTER + " (Gauge, no suffix; label exporter)",
}

EXTERNAL_METRICS: frozenset[str] = frozenset(EXPORTER_METRICS) | frozenset(COLLECTOR_METRICS)

_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def contract_series_names() -> frozenset[str]:
    """Every series name the contract's families expose (histograms' included)."""
    names: set[str] = set()
    for family, (kind, _labels) in (ORDERMESH_METRICS | PARTNER_METRICS | PROCESS_METRICS).items():
        if kind == "histogram":
            names.update(family + suffix for suffix in _HISTOGRAM_SUFFIXES)
        else:
            names.add(family)
    return frozenset(names)


def allowed_metric_names() -> frozenset[str]:
    return contract_series_names() | RECORDING_RULES | EXTERNAL_METRICS


# --------------------------------------------------------------------------- dashboards


def load_dashboards() -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON, for every ``*.json`` in infra/grafana/dashboards."""
    boards: dict[str, dict[str, Any]] = {}
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        boards[str(board.get("uid", path.name))] = board
    return boards


def iter_panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard (or row), depth first: rows, then what they hold."""
    for panel in container.get("panels") or []:
        yield panel
        yield from iter_panels(panel)


class PanelQuery(NamedTuple):
    uid: str
    title: str
    ref_id: str
    expr: str


def panel_queries() -> Iterator[PanelQuery]:
    """(dashboard uid, panel title, refId, expr) of every target of every panel."""
    for uid, board in load_dashboards().items():
        for panel in iter_panels(board):
            for target in panel.get("targets") or []:
                yield PanelQuery(
                    uid, str(panel.get("title", "")), str(target["refId"]), str(target["expr"])
                )


# --------------------------------------------------------------------------- PromQL


class PromQLError(ValueError):
    """An expression that does not parse, or whose metric names cannot be told."""


#: ``{__name__=~"name(_total)?"}``: a name with or without the suffix Prometheus exporters
#: may add to counters (the collector's, above).
_NAME_OPTIONAL_TOTAL = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\(_total\)\?$")
#: Where an AST node (``promql_parser``) keeps the expressions below it.
_CHILDREN = ("lhs", "rhs", "expr", "param", "vector_selector")


def _selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for attribute in _CHILDREN:
        child = getattr(node, attribute, None)
        if child is not None:
            yield from _selectors(child)
    for arg in getattr(node, "args", None) or []:
        yield from _selectors(arg)


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every vector selector of ``expr`` (Grafana's variables filled in), as parsed by
    promql-parser, the Prometheus parser's port."""
    try:
        return list(_selectors(promql_parser.parse(expand(expr))))
    except ValueError as exc:  # promql-parser's parse errors
        raise PromQLError(f"{exc} in {expr!r}") from None


def _name(selector: promql_parser.VectorSelector) -> str | None:
    if selector.name:
        return str(selector.name)
    for matcher in selector.matchers.matchers:
        if matcher.name != "__name__":
            continue
        if str(matcher.op) == "MatchOp.Equal":
            return str(matcher.value)
        found = _NAME_OPTIONAL_TOTAL.match(str(matcher.value))
        if str(matcher.op) == "MatchOp.Re" and found:
            return found.group(1)
        raise PromQLError(f"unsupported __name__ matcher {matcher}")
    return None


def metric_names(expr: str) -> set[str]:
    """The metric (and recording-rule) names ``expr`` reads. ``{__name__="x"}`` reads as
    ``x`` and ``{__name__=~"x(_total)?"}`` as ``x``; any other ``__name__`` matcher
    raises ``PromQLError``, as does an expression that does not parse."""
    return {name for s in selectors(expr) if (name := _name(s)) is not None}


#: Name prefixes of the series ordermesh's processes serve (theirs, and the partners'
#: FastStream series), which a panel filters by the ``service`` variable.
SERVICE_PREFIXES = ("ordermesh_", "faststream_")


def selectors_without(expr: str, label: str) -> list[str]:
    """The selectors of ``expr`` for ordermesh's processes' own series (``ordermesh_*``,
    ``faststream_*``) that have no matcher on ``label``."""
    return [
        name
        for s in selectors(expr)
        if (name := _name(s)) is not None
        and name.startswith(SERVICE_PREFIXES)
        and not any(m.name == label for m in s.matchers.matchers)
    ]


def external_only(expr: str) -> bool:
    """Whether ``expr`` reads metrics, and only those of the NATS exporter or the
    collector (never mixed with ordermesh's)."""
    names = metric_names(expr)
    return bool(names) and names <= EXTERNAL_METRICS


#: Values for Grafana's variables when a query is sent to Prometheus directly.
DEFAULT_VARIABLES: dict[str, str] = {"service": ".*", "instance": ".*"}


def expand(
    expr: str,
    *,
    rate_interval: str = "1m",
    range_: str = "1h",
    interval: str = "15s",
    variables: dict[str, str] | None = None,
) -> str:
    """``expr`` with Grafana's variables replaced: ``$__rate_interval``, ``$__range``,
    ``$__interval`` and the dashboard variables (``$service``, ``$instance``: ``.*``)."""
    values = {
        "__rate_interval": rate_interval,
        "__range": range_,
        "__interval": interval,
        **DEFAULT_VARIABLES,
        **(variables or {}),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise PromQLError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", substitute, expr
    )
