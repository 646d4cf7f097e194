"""``ordermesh demo`` against a real nats-server: the binary for its contract (JSON, exit
codes, help), ``run_demo`` in-process for the paths too slow or awkward to drive from
outside. The services run in this process, so the demo really is just another client."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from infra.nats_server import EmbeddedNatsServer, free_port
from ordermesh.app import App
from ordermesh.demo import (
    DemoOptions,
    DemoUnavailable,
    Mix,
    Scenario,
    make_plan,
    order_id,
    run_demo,
)
from tests.conftest import eventually, request
from tests.integration.test_processes import env_for, ordermesh


async def demo(server: EmbeddedNatsServer, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = env_for(tmp_path / "cli", ORDERMESH_NATS_URL=server.url)
    async with ordermesh("demo", *args, env=env) as proc:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def demo_json(server: EmbeddedNatsServer, tmp_path: Path, *args: str) -> dict[str, Any]:
    code, out, err = await demo(server, tmp_path, *args, "--json")
    assert code == 0, (code, out, err)
    summary: dict[str, Any] = json.loads(out)
    return summary


async def read_model_outcomes(nc: NATS, run: str, orders: int) -> Counter[str]:
    """Each order's end as the query service shows it, in the demo's own vocabulary."""

    async def outcome(oid: str) -> str | None:
        reply = await request(nc, "queries.order.get", {"order_id": oid})
        if not reply["ok"] or reply["data"]["status"] == "pending":
            return None
        data = reply["data"]
        return (
            "confirmed" if data["status"] == "confirmed" else f"cancelled:{data['cancel_reason']}"
        )

    async def settled(oid: str) -> str:
        result: str = await eventually(lambda: outcome(oid), timeout=10)
        return result

    ends = await asyncio.gather(*(settled(order_id(run, i)) for i in range(1, orders + 1)))
    return Counter(ends)


async def test_json_summary_matches_the_read_model_and_repeats_with_the_seed(
    saga_app: App, nc: NATS, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    args = ("--orders", "30", "--rate", "200", "--concurrency", "8", "--seed", "3")
    first = await demo_json(nats_server, tmp_path, *args)

    assert first["orders"] == 30
    outcomes = first["outcomes"]
    assert sum(outcomes.values()) == 30
    assert outcomes.get("confirmed", 0) > 0
    assert any(k.startswith("cancelled:") for k in outcomes), outcomes
    assert "pending" not in outcomes
    latency = first["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert first["seconds"] > 0 and 0 < first["rate"] <= 200 * 1.01
    assert await read_model_outcomes(nc, first["run"], 30) == Counter(outcomes)

    again = await demo_json(nats_server, tmp_path, *args)
    assert again["run"] != first["run"]
    assert again["outcomes"] == outcomes


async def test_happy_mix_confirms_every_order(
    saga_app: App, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    summary = await demo_json(
        nats_server, tmp_path, "--orders", "20", "--rate", "200", "--mix", "happy", "--seed", "5"
    )
    assert summary["outcomes"] == {"confirmed": 20}


async def test_without_services_it_exits_2_and_says_to_start_them(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    code, out, err = await demo(nats_server, tmp_path, "--orders", "3")
    assert code == 2, (out, err)
    assert out == ""
    assert "ordermesh up" in " ".join(err.split())


async def test_unreachable_nats_is_reported_as_unavailable() -> None:
    # Two quick attempts instead of the CLI's four, two seconds apart (nats-py reads 0 as
    # "no limit", hence 1).
    options = DemoOptions(
        nats_url=f"nats://127.0.0.1:{free_port()}",
        connect_options={"max_reconnect_attempts": 1, "reconnect_time_wait": 0.05},
    )
    async with asyncio.timeout(10):
        with pytest.raises(DemoUnavailable, match="ordermesh up"):
            await run_demo(options)


async def test_orders_without_an_outcome_are_pending_and_exit_1(
    app: App, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    # The core services accept orders, but no saga runs to end them.
    code, out, err = await demo(
        nats_server, tmp_path, "--orders", "4", "--rate", "200", "--wait", "0.3", "--json"
    )
    assert code == 1, (out, err)
    assert json.loads(out)["outcomes"] == {"pending": 4}
    assert "saga service" in " ".join(err.split())


async def test_help_shows_an_example(tmp_path: Path) -> None:
    async with ordermesh("demo", "--help", env=env_for(tmp_path)) as proc:
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    text = out.decode()
    assert "Example" in text and "ordermesh demo --orders 500 --rate 50" in text


async def test_slow_cards_end_by_timeout_in_process(
    saga_app: App, nats_server: EmbeddedNatsServer
) -> None:
    options = DemoOptions(
        nats_url=nats_server.url, orders=12, rate=500, seed=2, mix=Mix.HAPPY, slow=True, wait=15
    )
    seen: list[tuple[int, int]] = []
    summary = await run_demo(options, lambda sent, finished: seen.append((sent, finished)))

    slow = sum(o.scenario is Scenario.SLOW for o in make_plan(options, summary.run).orders)
    assert slow >= 1
    assert summary.outcomes == {"confirmed": 12 - slow, "cancelled:timeout": slow}
    assert seen[-1] == (12, 12)


def test_the_plan_depends_on_the_seed_alone_and_only_oversized_orders_lack_stock() -> None:
    options = DemoOptions(nats_url="nats://unused", orders=400, seed=11)
    a, b = make_plan(options, "aaaa"), make_plan(options, "bbbb")

    def shape(plan: Any) -> list[Any]:
        return [
            (
                o.scenario,
                o.payment_method,
                o.country,
                [(ln.product_id.rsplit("-", 1)[1], ln.quantity) for ln in o.lines],
            )
            for o in plan.orders
        ]

    assert shape(a) == shape(b)
    assert [p.stock for p in a.products] == [p.stock for p in b.products]
    assert {o.scenario for o in a.orders} == set(Scenario) - {Scenario.SLOW}
    stock = {p.product_id: p.stock for p in a.products}
    demand: Counter[str] = Counter()
    for o in a.orders:
        if o.scenario is Scenario.OVERSIZED:
            assert all(ln.quantity > stock[ln.product_id] for ln in o.lines)
        else:
            demand.update({ln.product_id: ln.quantity for ln in o.lines})
    assert all(demand[p] <= stock[p] for p in stock)
    assert shape(make_plan(DemoOptions(nats_url="x", orders=400, seed=12), "aaaa")) != shape(a)
