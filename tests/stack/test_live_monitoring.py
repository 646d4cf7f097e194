"""The monitoring stack proven on live data: a real Prometheus, with the project's own
configuration and rule files, scrapes real ordermesh processes while ``ordermesh demo``
runs orders with failures through them. Then, through Prometheus's HTTP API: every rule
evaluates without error, every dashboard panel's query returns series, and alerts go from
inactive to pending when their condition is produced for real.

The services run as three processes, as in ``compose.yaml``: ``command relay saga``,
``projections query`` (the read side) and ``partners`` (the payment gateway and the
shipping carrier, which the command service asks), so that stopping the read side is a
service going down while the rest keeps running. The partners' panels read FastStream's
own series from that process, held to the contract's ``PARTNER_METRICS`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from broker.subjects import PAYMENT_CHARGE
from infra.nats_server import EmbeddedNatsServer, free_port
from partners.rules import SLOW_CARD
from tests.conftest import eventually, request
from tests.contract import PARTNER_METRICS
from tests.integration.test_processes import ORDERMESH, env_for, http_status, ordermesh
from tests.stack.dashboards import expand, external_only, panel_queries
from tests.stack.tools import INFRA, require_tool

PROMETHEUS_DIR = INFRA / "prometheus"

#: Alerts the workload below produces for real, and how: flaky cards fail their payment
#: twice with a fault (HighErrorRate on payment.process), a fifth of the sagas fail
#: (SagaFailureRate), a message that is not ours is set aside (DLQNotEmpty), and the read
#: side is stopped (ServiceDown).
PRODUCED = ("HighErrorRate", "SagaFailureRate", "DLQNotEmpty")
#: Only the ``le`` of a histogram's buckets adds to a family's labels.
_BUCKET_LABEL = "le"


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        if data["resultType"] == "scalar":
            result = [{"metric": {}, "value": data["result"]}]
        return result

    def alert_states(self) -> dict[str, set[str]]:
        """Every alerting rule's name → the states of its rules (``inactive`` and so on)."""
        states: dict[str, set[str]] = {}
        for group in self.get("/api/v1/rules")["groups"]:
            for rule in group["rules"]:
                if rule["type"] == "alerting":
                    states.setdefault(rule["name"], set()).add(rule["state"])
        return states

    def active(self, alert: str) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alert]


def live_config(path: Path, targets: dict[str, int], self_port: int) -> None:
    """The project's prometheus.yml, pointed at this test's processes and scraping every
    second; its rule files by absolute path. The NATS exporter and the collector cannot
    run here, so their jobs are left out."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ordermesh_job = jobs["ordermesh"]
    ordermesh_job["static_configs"] = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"service": service}}
        for service, port in targets.items()
    ]
    prometheus_job = jobs["prometheus"]
    prometheus_job["static_configs"] = [{"targets": [f"127.0.0.1:{self_port}"]}]
    config["scrape_configs"] = [ordermesh_job, prometheus_job]
    path.write_text(yaml.safe_dump(config))


@contextlib.asynccontextmanager
async def prometheus_server(config: Path, data: Path, port: int) -> AsyncIterator[Prometheus]:
    binary = require_tool("prometheus")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            if proc.returncode is not None:
                assert proc.stderr is not None
                raise AssertionError((await proc.stderr.read()).decode()[-2000:])
            try:
                return await asyncio.to_thread(http_status, f"{url}/-/ready") == 200
            except OSError:
                return False

        await eventually(ready, timeout=30, interval=0.1)
        yield Prometheus(url)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
def services_env(nats_server: EmbeddedNatsServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield env_for(tmp_path / "data", ORDERMESH_NATS_URL=nats_server.url)


async def wait_ready(port: int) -> None:
    async def ready() -> bool:
        try:
            return await asyncio.to_thread(http_status, f"http://127.0.0.1:{port}/readyz") == 200
        except OSError:
            return False

    await eventually(ready, timeout=30, interval=0.1)


def scraped_families(url: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """A /metrics page's families: name (a counter's with ``_total``) -> (type, the label
    names of its samples)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    families: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {frozenset(s.labels) - {_BUCKET_LABEL} for s in family.samples}
        families[name] = (family.type, labels)
    return families


@contextlib.asynccontextmanager
async def all_ready(ports: Iterable[int]) -> AsyncIterator[None]:
    """Until every process answers ``/readyz``: Prometheus starts after that, so that no
    target is scraped down (and ``ServiceDown`` pending) while its process starts."""
    for port in ports:
        await wait_ready(port)
    yield


async def run_demo_cli(env: dict[str, str], orders: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        ORDERMESH,
        "demo",
        "--orders",
        str(orders),
        "--rate",
        "50",
        "--seed",
        "3",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    summary: dict[str, Any] = json.loads(out)
    return summary


async def test_rules_panels_and_alerts_on_live_data(
    services_env: dict[str, str], nc: NATS, tmp_path: Path
) -> None:
    started = time.monotonic()
    ports = {
        "ordermesh-partners": free_port(),
        "ordermesh-command": free_port(),
        "ordermesh-read": free_port(),
    }
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    live_config(config, ports, prom_port)

    def env(service: str) -> dict[str, str]:
        return services_env | {"ORDERMESH_METRICS_PORT": str(ports[service])}

    async with (
        ordermesh("run", "partners", env=env("ordermesh-partners")),
        ordermesh("run", "command", "relay", "saga", env=env("ordermesh-command")),
        ordermesh("run", "projections", "query", env=env("ordermesh-read")) as read_side,
        all_ready(ports.values()),
        prometheus_server(config, tmp_path / "tsdb", prom_port) as prom,
    ):
        # Before any traffic: every target up, and none of the alerts produced below.
        async def scraped() -> bool:
            up = await asyncio.to_thread(prom.query, 'up{job="ordermesh"} == 1')
            return len(up) == len(ports)

        await eventually(scraped, timeout=20)
        before = await asyncio.to_thread(prom.alert_states)
        for alert in (*PRODUCED, "ServiceDown"):
            assert before[alert] == {"inactive"}, (alert, before[alert])

        # The workload: orders with failures (their payments and shipments answered by the
        # partners), queries (one refused), a foreign message, and a charge the gateway
        # leaves unanswered (a slow-card, sent straight to it: the demo has none), which
        # FastStream counts as an exception. Its reply is not waited for.
        summary = await run_demo_cli(services_env, orders=60)
        assert summary["orders"] == 60, summary
        assert summary["outcomes"].get("confirmed"), summary
        assert any(k.startswith("cancelled:") for k in summary["outcomes"]), summary
        assert (await request(nc, "queries.order.list", {}))["ok"]
        assert not (await request(nc, "queries.order.get", {"order_id": "o-none"}))["ok"]
        await nc.jetstream().publish("events.foreign.thing", b"\x00not ours")
        slow = {"payment_id": "pay-o-slow", "order_id": "o-slow", "amount": "5.00"}
        await nc.publish(
            PAYMENT_CHARGE,
            json.dumps(slow | {"method": SLOW_CARD}).encode(),
            reply=nc.new_inbox(),
        )

        # Prometheus has scraped the end of the demo, the dead letter's depth and the
        # unanswered charge (twice: a rate needs two samples, and that series is new).
        async def settled() -> bool:
            ended = await asyncio.to_thread(prom.query, "sum(ordermesh_saga_completed_total) >= 60")
            dlq = await asyncio.to_thread(
                prom.query, 'max(ordermesh_jetstream_stream_messages{stream="DLQ"}) > 0'
            )
            unanswered = await asyncio.to_thread(
                prom.query,
                "count_over_time(faststream_received_processed_messages_exceptions_total"
                '{exception_type="Unresponsive"}[15s]) >= 2',
            )
            return bool(ended and dlq and unanswered)

        await eventually(settled, timeout=30, interval=0.2)

        # The partners' /metrics holds every family of the contract, with its labels.
        families = await asyncio.to_thread(
            scraped_families, f"http://127.0.0.1:{ports['ordermesh-partners']}/metrics"
        )
        for name, (kind, labels) in PARTNER_METRICS.items():
            assert name in families, f"{name} is not on the partners' /metrics"
            scraped_kind, label_sets = families[name]
            assert scraped_kind == kind, (name, scraped_kind)
            assert label_sets == {labels}, (name, label_sets)

        # Every rule evaluates without error.
        async def evaluated() -> list[dict[str, Any]]:
            groups = (await asyncio.to_thread(prom.get, "/api/v1/rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            fresh = all(not r["lastEvaluation"].startswith("0001") for r in rules)
            return rules if fresh else []

        rules = await eventually(evaluated, timeout=10)
        broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not broken, broken

        # Every panel query of every dashboard returns series, except those fed only by
        # the NATS exporter or the collector, which cannot run here.
        # Grafana's variables as it would fill them in: every service and instance, and
        # windows that hold a few of the test's one-second scrapes.
        # A series that first appeared in the last seconds (a histogram's, after the
        # queries above) needs a second scrape before a rate over it has a sample: the
        # panels are asked until all answer, and those still empty then are the failure.
        external = {f"{q.uid}: {q.title}" for q in panel_queries() if external_only(q.expr)}
        live = [q for q in panel_queries() if not external_only(q.expr)]
        empty = list(live)

        async def every_panel_answers() -> bool:
            still = []
            for q in empty:
                query = expand(q.expr, rate_interval="15s", range_="5m", interval="5s")
                if not await asyncio.to_thread(prom.query, query):
                    still.append(q)
            empty[:] = still
            return not empty

        try:
            await eventually(every_panel_answers, timeout=15, interval=0.5)
        except AssertionError:
            raise AssertionError(f"panels without data: {empty}") from None
        assert external, "the exporter's panels are expected to be listed here"
        print(
            "panels fed only by the NATS exporter or the collector:", *sorted(external), sep="\n  "
        )

        # The alerts this workload produces become pending (their `for` keeps them from
        # firing within a test): inactive → pending, on real data.
        missing = list(PRODUCED)

        async def produced() -> bool:
            missing[:] = [a for a in PRODUCED if not await asyncio.to_thread(prom.active, a)]
            return not missing

        try:
            await eventually(produced, timeout=30, interval=0.2)
        except AssertionError:
            raise AssertionError(f"never pending: {missing}") from None
        (high_errors,) = [
            a["labels"]
            for a in await asyncio.to_thread(prom.active, "HighErrorRate")
            if a["labels"].get("command_type") == "payment.process"
        ]
        assert high_errors["severity"]

        # Stop the read side: its target goes down, and ServiceDown names it.
        read_side.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(read_side.wait(), 20) == 0

        async def down() -> list[dict[str, Any]]:
            return await asyncio.to_thread(prom.active, "ServiceDown")

        (service_down,) = await eventually(down, timeout=20, interval=0.2)
        assert service_down["labels"]["service"] == "ordermesh-read"
        assert service_down["state"] in {"pending", "firing"}
    print(f"live monitoring test: {time.monotonic() - started:.1f} s")
