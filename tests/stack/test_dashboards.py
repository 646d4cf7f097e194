"""Static checks of the Grafana provisioning and dashboards (no Grafana, no Prometheus).

Every dashboard parses, has its fixed uid and title, well-formed panels and targets, and
queries only names the monitoring contract, the recording rules, the NATS exporter or the
OpenTelemetry Collector provide; the provisioning files point at the compose services and
at the fixed data-source uids. The live test runs the same queries against Prometheus.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.stack import dashboards as d

#: Panels whose ordermesh_* selectors deliberately ignore the service filter: they subtract
#: positions reported by different services (head: command/saga; relay: relay; projection:
#: read), so filtering one service out would make the difference meaningless.
CROSS_SERVICE_PANELS = frozenset(
    {
        ("ordermesh-infrastructure", "Relay backlog (events)"),
        ("ordermesh-infrastructure", "Projection backlog (store positions)"),
    }
)

PANEL_TYPES = frozenset({"row", "timeseries", "stat", "bargauge", "table", "gauge", "text"})


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    return d.load_dashboards()


def panels_of(board: dict[str, Any]) -> list[dict[str, Any]]:
    return list(d.iter_panels(board))


# --------------------------------------------------------------------------- dashboards


def test_every_dashboard_file_parses_and_has_its_fixed_uid() -> None:
    files = sorted(p.name for p in d.DASHBOARDS_DIR.glob("*.json"))
    assert files == sorted(name for name, _ in d.DASHBOARDS.values())
    uids = []
    for uid, (name, title) in d.DASHBOARDS.items():
        board = json.loads((d.DASHBOARDS_DIR / name).read_text(encoding="utf-8"))
        assert board["uid"] == uid, name
        assert board["title"] == title, name
        uids.append(board["uid"])
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("uid", sorted(d.DASHBOARDS))
def test_dashboard_settings(boards: dict[str, dict[str, Any]], uid: str) -> None:
    board = boards[uid]
    assert board["tags"] == ["ordermesh"]
    assert 36 <= board["schemaVersion"] <= 41
    assert board["refresh"] == "10s"
    assert board["time"] == {"from": "now-1h", "to": "now"}
    assert board.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert "__inputs" not in board, "no ${DS_...} inputs: the data sources have fixed uids"
    assert "${DS_" not in json.dumps(board)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    service = variables["service"]
    assert service["type"] == "query"
    query = service["query"]["query"] if isinstance(service["query"], dict) else service["query"]
    assert query == 'label_values(up{job="ordermesh"}, service)'
    for var in variables.values():
        assert var["datasource"] == {"type": "prometheus", "uid": d.PROMETHEUS_UID}
        if var.get("includeAll"):
            assert var["allValue"] == ".*"
            assert var["multi"] is True


@pytest.mark.parametrize("uid", sorted(d.DASHBOARDS))
def test_panels_are_well_formed(boards: dict[str, dict[str, Any]], uid: str) -> None:
    panels = panels_of(boards[uid])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {uid}"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel['id']} of {uid} has no title"
        assert panel["type"] in PANEL_TYPES, title
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= pos.keys(), title
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, title
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"{title} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{title}: say what to look at"
        ds = panel["datasource"]
        assert ds in (
            {"type": "prometheus", "uid": d.PROMETHEUS_UID},
            {"type": "datasource", "uid": "-- Mixed --"},
            {"type": "datasource", "uid": "grafana"},
        ), title
        targets = panel["targets"]
        assert targets, f"{title} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in targets:
            assert target["expr"].strip(), title
            assert target.get("datasource", ds)["uid"] == d.PROMETHEUS_UID, title


@pytest.mark.parametrize("uid", sorted(d.DASHBOARDS))
def test_titles_are_unique(boards: dict[str, dict[str, Any]], uid: str) -> None:
    titles = [p["title"] for p in panels_of(boards[uid]) if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "the live test names panels by title"


def test_every_query_uses_known_names_only() -> None:
    allowed = d.allowed_metric_names()
    unknown = {
        (q.uid, q.title, q.ref_id, name)
        for q in d.panel_queries()
        for name in d.metric_names(q.expr)
        if name not in allowed
    }
    assert not unknown


def test_recording_rules_used_exist() -> None:
    """Every recording rule a panel reads is recorded by infra/prometheus/rules/."""
    recording = yaml.safe_load((d.ROOT / "infra/prometheus/rules/recording.yml").read_text())
    rules = {r["record"] for group in recording["groups"] for r in group["rules"]}
    used = {name for q in d.panel_queries() for name in d.metric_names(q.expr) if ":" in name}
    assert used, "the SLO panels read the slo: recording rules"
    assert used <= rules, used - rules


def test_external_metrics_are_never_mixed_with_ordermesh_ones() -> None:
    for q in d.panel_queries():
        names = d.metric_names(q.expr)
        external = names & d.EXTERNAL_METRICS
        assert not external or names == external, (q.uid, q.title, q.ref_id)


def test_panels_fed_by_the_exporter_or_collector_say_so_in_their_title() -> None:
    """So the live test can list them, and an operator knows where an empty panel's data
    should have come from."""
    by_panel: dict[tuple[str, str], list[bool]] = {}
    for q in d.panel_queries():
        by_panel.setdefault((q.uid, q.title), []).append(d.external_only(q.expr))
    for (uid, title), flags in by_panel.items():
        assert all(flags) or not any(flags), f"{uid}/{title} mixes sources across targets"
        external = all(flags)
        labelled = title.startswith(("NATS exporter · ", "Collector · "))
        assert external == labelled, (uid, title)
    assert any(all(f) for f in by_panel.values())


def test_every_query_is_aggregated_rate_windows_and_filters() -> None:
    for q in d.panel_queries():
        ranges = re.findall(r"\[([^\]]*)\]", q.expr)
        for window in ranges:
            assert window in ("$__rate_interval", "$__range"), (q.title, window)
        if q.uid == "ordermesh-sagas-slo" and "slo:" in q.expr:
            continue
        if (q.uid, q.title) in CROSS_SERVICE_PANELS:
            continue
        missing = d.selectors_without(q.expr, "service")
        assert not missing, f'{q.title}: {missing} lack service=~"$service"'
        for name in d.metric_names(q.expr):
            if name.startswith(("process_", "python_")):
                assert 'job="ordermesh"' in q.expr, q.title


def test_latency_targets_ask_for_exemplars() -> None:
    boards = d.load_dashboards()
    overview = boards["ordermesh-overview"]
    latency = [
        p
        for p in panels_of(overview)
        if p["type"] != "row" and "response time" in p["title"].lower()
    ]
    assert latency
    for panel in latency:
        for target in panel["targets"]:
            assert "histogram_quantile" in target["expr"]
            assert target.get("exemplar") is True, panel["title"]


def test_burn_rate_panels_show_the_alert_thresholds() -> None:
    board = d.load_dashboards()["ordermesh-sagas-slo"]
    burn = [p for p in panels_of(board) if "burn rate" in p["title"].lower()]
    assert len(burn) == 2
    for panel in burn:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert {s["value"] for s in steps} >= {6, 14.4}, panel["title"]
        assert "burn_rate" in " ".join(t["expr"] for t in panel["targets"])


def test_funnel_uses_the_contracts_event_types_in_order() -> None:
    board = d.load_dashboards()["ordermesh-business"]
    funnel = next(p for p in panels_of(board) if p["title"].startswith("Order funnel"))
    assert funnel["type"] == "bargauge"
    types = [re.search(r'event_type="([^"]+)"', t["expr"]) for t in funnel["targets"]]
    assert [m.group(1) if m else None for m in types] == [
        "order.placed",
        "inventory.reserved",
        "payment.processed",
        "shipment.arranged",
        "order.confirmed",
    ]
    assert all("[$__range]" in t["expr"] for t in funnel["targets"])


# --------------------------------------------------------------------------- PromQL reader


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (le, command_type) (rate(ordermesh_command_"
            'processing_duration_seconds_bucket{service=~"$service"}[$__rate_interval])))',
            {"ordermesh_command_processing_duration_seconds_bucket"},
        ),
        (
            "sum(rate(a_total[5m])) by (job) / ignoring (code) group_left sum(b) or vector(0)",
            {"a_total", "b"},
        ),
        (
            "1 - (slo:ordermesh_command_faults:ratio_rate30m or vector(0))",
            {"slo:ordermesh_command_faults:ratio_rate30m"},
        ),
        (
            'sum(rate({__name__=~"otelcol_exporter_sent_spans(_total)?"}[1m]))',
            {"otelcol_exporter_sent_spans"},
        ),
        ('{__name__="up", job="x"} offset 5m', {"up"}),
        ('label_replace(up, "a", "$1", "job", "(.*)") > bool 0', {"up"}),
        ("time() - process_start_time_seconds", {"process_start_time_seconds"}),
    ],
)
def test_metric_names_reader(expr: str, names: set[str]) -> None:
    assert d.metric_names(expr) == names


def test_metric_names_reader_refuses_what_it_cannot_check() -> None:
    with pytest.raises(d.PromQLError):
        d.metric_names("not_a_function(up)")
    with pytest.raises(d.PromQLError):
        d.metric_names('{__name__=~"ordermesh_.*"}')


def test_external_only() -> None:
    assert d.external_only('sum by (stream_name) (jetstream_stream_total_messages{job="nats"})')
    assert d.external_only('rate({__name__=~"otelcol_receiver_accepted_spans(_total)?"}[1m])')
    assert not d.external_only("ordermesh_relay_lag_seconds")
    assert not d.external_only("gnatsd_varz_connections + ordermesh_relay_lag_seconds")
    assert not d.external_only("vector(0)")


def test_expand_replaces_grafana_variables() -> None:
    expr = 'sum(increase(x{service=~"$service"}[$__range])) / rate(y[${__rate_interval}])'
    assert d.expand(expr) == 'sum(increase(x{service=~".*"}[1h])) / rate(y[1m])'
    for q in d.panel_queries():
        assert "$" not in d.expand(q.expr), q.title


# --------------------------------------------------------------------------- provisioning


def test_datasources_have_fixed_uids_and_link_exemplars_to_jaeger() -> None:
    doc = yaml.safe_load(d.DATASOURCES_FILE.read_text())
    assert doc["apiVersion"] == 1
    sources = {s["uid"]: s for s in doc["datasources"]}
    assert set(sources) == {d.PROMETHEUS_UID, d.JAEGER_UID}
    prometheus, jaeger = sources[d.PROMETHEUS_UID], sources[d.JAEGER_UID]
    assert prometheus["type"] == "prometheus"
    assert prometheus["isDefault"] is True
    assert prometheus["jsonData"]["httpMethod"] == "POST"
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": d.JAEGER_UID}
    ]
    assert jaeger["type"] == "jaeger"
    assert not jaeger.get("isDefault")


def test_datasource_hosts_are_the_compose_services() -> None:
    doc = yaml.safe_load(d.DATASOURCES_FILE.read_text())
    urls = {s["uid"]: urlsplit(s["url"]) for s in doc["datasources"]}
    assert (urls["prometheus"].hostname, urls["prometheus"].port) == ("prometheus", 9090)
    assert (urls["jaeger"].hostname, urls["jaeger"].port) == ("jaeger", 16686)
    compose = d.ROOT / "compose.yaml"
    if compose.exists():  # written concurrently; checked once it is there
        services = (yaml.safe_load(compose.read_text()) or {}).get("services") or {}
        assert {"prometheus", "jaeger"} <= set(services)


def test_dashboard_provider_loads_the_mounted_directory() -> None:
    doc = yaml.safe_load(d.PROVIDERS_FILE.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "ordermesh"
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "infra/grafana/dashboards" in d.PROVIDERS_FILE.read_text()
