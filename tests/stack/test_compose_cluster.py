"""compose.cluster.yaml: NATS and KurrentDB clusters of three, two replicas of every
ordermesh service. No container engine runs here: docker-compose validates the file,
promtool its Prometheus configuration, and these tests hold the contract between them
(every node named in every client URL, every ordermesh service replicated and scraped,
the cluster configuration files mounted where nats-server reads them)."""

from __future__ import annotations

import subprocess
from functools import cache
from typing import Any

import pytest
import yaml

from broker.connection import server_list
from ordermesh.app import SERVICES as ORDERMESH_RUNNABLE
from tests.stack.tools import INFRA, ROOT, require_tool

COMPOSE = ROOT / "compose.cluster.yaml"
PROMETHEUS = INFRA / "prometheus" / "prometheus.cluster.yml"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
KURRENTDB_NODES = ("kurrentdb-1", "kurrentdb-2", "kurrentdb-3")
ORDERMESH = {
    "ordermesh-command": ("command",),
    "ordermesh-partners": ("partners",),
    "ordermesh-relay": ("relay",),
    "ordermesh-saga": ("saga",),
    "ordermesh-read": ("projections", "query"),
    "ordermesh-api": ("api",),
}


@cache
def services() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    found = loaded["services"]
    assert isinstance(found, dict)
    return found


def test_docker_compose_accepts_the_file() -> None:
    tool = require_tool("docker-compose")
    done = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_promtool_accepts_the_prometheus_configuration() -> None:
    tool = require_tool("promtool")
    done = subprocess.run(
        [tool, "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(ORDERMESH))
def test_every_ordermesh_service_has_replicas_and_reaches_every_node(name: str) -> None:
    service = services()[name]
    assert service["command"] == ["run", *ORDERMESH[name]]
    assert service["deploy"]["replicas"] >= 2
    env = service["environment"]
    nats = {url.split("//")[1].split(":")[0] for url in server_list(env["ORDERMESH_NATS_URL"])}
    assert nats == set(NATS_NODES)
    store = env["ORDERMESH_EVENTSTORE_URL"]
    assert store.startswith("kurrentdb+discover://")
    assert {t.split(":")[0] for t in store.split("//")[1].split("?")[0].split(",")} == set(
        KURRENTDB_NODES
    )
    assert env["ORDERMESH_STREAM_REPLICAS"] == "3"
    assert set(service["depends_on"]) >= set(NATS_NODES) | set(KURRENTDB_NODES)


def test_every_runnable_service_is_deployed() -> None:
    started = [s for services in ORDERMESH.values() for s in services]
    assert sorted(started) == sorted(ORDERMESH_RUNNABLE)


def test_each_nats_node_runs_its_committed_configuration() -> None:
    for node in NATS_NODES:
        service = services()[node]
        assert service["command"] == ["-c", f"/etc/nats/{node}.conf"]
        assert "./infra/nats/cluster:/etc/nats:ro" in service["volumes"]
        assert (INFRA / "nats" / "cluster" / f"{node}.conf").is_file()


def test_each_kurrentdb_node_gossips_with_the_other_two() -> None:
    addresses = {
        node: services()[node]["networks"]["default"]["ipv4_address"] for node in KURRENTDB_NODES
    }
    for node in KURRENTDB_NODES:
        env = services()[node]["environment"]
        assert env["KURRENTDB_CLUSTER_SIZE"] == "3"
        seeds = {seed.split(":")[0] for seed in env["KURRENTDB_GOSSIP_SEED"].split(",")}
        assert seeds == {a for n, a in addresses.items() if n != node}
        assert env["KURRENTDB_REPLICATION_IP"] == addresses[node]


def test_prometheus_finds_every_replica_of_every_ordermesh_service() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "ordermesh"]
    [dns] = job["dns_sd_configs"]
    assert set(dns["names"]) == set(ORDERMESH) and dns["port"] == 9464
    assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in job[
        "relabel_configs"
    ]
    mounted = services()["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.cluster.yml" in mounted["command"]
    exporters = {
        t.split(":")[0]
        for j in config["scrape_configs"]
        if j["job_name"] == "nats"
        for group in j["static_configs"]
        for t in group["targets"]
    }
    assert exporters == {f"nats-exporter-{i}" for i in (1, 2, 3)}
    for exporter in exporters:
        node = "nats-" + exporter.rsplit("-", 1)[1]
        assert services()[exporter]["command"][-1] == f"http://{node}:8222"
