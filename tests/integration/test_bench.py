"""``ordermesh bench --quick`` keeps the harness working; speeds are never asserted here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_processes import ORDERMESH, env_for

EXPECTED = {
    "raw.request_reply.c1": None,
    "raw.request_reply.c64": None,
    "raw.publish_subscribe": None,
    "raw.publish_subscribe.event_headers": None,
    "tap.json_lines": "raw.publish_subscribe.event_headers",
    "raw.jetstream_publish.w1": None,
    "raw.jetstream_publish.w256": None,
    "raw.jetstream_publish.w1.sync_always": "raw.jetstream_publish.w1",
    "raw.jetstream_publish.w256.sync_always": "raw.jetstream_publish.w256",
    "command.product.restock.c1": "raw.request_reply.c1",
    "command.product.restock.c64": "raw.request_reply.c64",
    "command.order.place.c1": "raw.request_reply.c1",
    "command.order.place.c64": "raw.request_reply.c64",
    "tracing.off.product.restock.c64": None,
    "tracing.on.product.restock.c64": "tracing.off.product.restock.c64",
    "monitor.off.product.restock.c64": None,
    "monitor.on.product.restock.c64": "monitor.off.product.restock.c64",
    "faststream.echo.c64": "raw.request_reply.c64",
    "saga.confirmed_per_second.c64": "command.order.place.c64",
    "read_model.latency_at_200": None,
    "read_model.max_rate_p99_under_100ms": None,
    "relay.store_to_jetstream": "raw.jetstream_publish.w256",
    "read_model.latency_at_500": None,
    "processes.command.order.place.c64.x1": None,
    "processes.command.order.place.c64.x2": "processes.command.order.place.c64.x1",
    "processes.command.order.place.c256.x1": None,
    "processes.command.order.place.c256.x2": "processes.command.order.place.c256.x1",
    "processes.saga.confirmed_per_second.c64": "saga.confirmed_per_second.c64",
    "processes.read_model.latency_at_500": "read_model.latency_at_500",
    "memory.up_peak_rss_after_1000_orders": None,
}
#: Cases whose ratio comes from raw rounds measured right before each of their own.
PAIRED = {
    "command.product.restock.c64",
    "command.order.place.c64",
    "tracing.on.product.restock.c64",
    "monitor.on.product.restock.c64",
    "faststream.echo.c64",
    "relay.store_to_jetstream",
    "processes.command.order.place.c64.x2",
    "processes.command.order.place.c256.x2",
}


@pytest.mark.timeout(300)
async def test_quick_bench_reports_every_case_with_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = await asyncio.create_subprocess_exec(
        ORDERMESH,
        "bench",
        "--quick",
        "--json",
        str(out),
        env=env_for(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 280)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["quick"] is True
    cases = doc["cases"]
    assert set(cases) == set(EXPECTED)
    for name, baseline in EXPECTED.items():
        case = cases[name]
        # "It ran", not a speed: the highest passing rate may honestly be 0 on a busy machine.
        assert case["value"] >= 0 if name.startswith("read_model.max") else case["value"] > 0
        assert case["baseline"] == baseline
        if name in PAIRED:
            # Paired with raw rounds of its own: the ratio is the median pair.
            pairs = sorted(case["pair_ratios"])
            assert case["ratio"] == pytest.approx(pairs[len(pairs) // 2], rel=1e-2, abs=1e-3)
            assert len(pairs) == len(case["rounds"])
            if name.startswith(("command.", "relay.", "faststream.", "processes.")):
                assert len(case["raw_rounds"]) == len(pairs)
        elif baseline is not None:
            expected_ratio = case["value"] / cases[baseline]["value"]
            assert case["ratio"] == pytest.approx(expected_ratio, rel=1e-2, abs=1e-3)
    saga = cases["saga.confirmed_per_second.c64"]
    # The partners ran in a process of their own: their cost per order is read off it. A
    # confirmed order asks them twice (a charge and a booking) and never less.
    assert saga["partner_requests_per_order"] >= 2
    assert saga["partner_cpu_ms_per_order"] > 0 and saga["partner_handler_ms_per_order"] > 0
    latency = cases["read_model.latency_at_200"]
    assert latency["applied"] == latency["sent"] > 0
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert doc["pending"] == {}
    assert cases["tap.json_lines"]["lost"] == 0
    saga = cases["saga.confirmed_per_second.c64"]
    assert saga["finished"] == saga["placed"] > 0
    assert "command.product.restock.c64" in stdout.decode()
    assert_split_over_processes(cases)
    assert_faststream_ratios(cases["faststream.echo.c64"])
    assert "faststream/restock" in stdout.decode()


def assert_split_over_processes(cases: dict[str, Any]) -> None:
    """The split cases ran the processes they say: the second command process served
    (its CPU moved while the load ran, and only in its rounds), every placed order ended
    with every service in a process of its own, and the three-process read side applied
    every command."""
    for c in (64, 256):
        two = cases[f"processes.command.order.place.c{c}.x2"]
        one = cases[f"processes.command.order.place.c{c}.x1"]
        assert one["value"] == median(two["raw_rounds"])
        busy = two["cores_busy"]
        assert set(busy["x1"]) == {"load", "nats-server", "command-1"}
        assert set(busy["x2"]) == {"load", "nats-server", "command-1", "command-2"}
        assert busy["x2"]["command-2"] > 0 and busy["x2"]["command-1"] > 0
    saga = cases["processes.saga.confirmed_per_second.c64"]
    assert saga["ended"] == saga["placed"] > 0
    per_order = saga["cpu_ms_per_order"]
    assert set(per_order) >= {"command", "relay", "projections", "saga", "partners"}
    assert all(per_order[s] > 0 for s in ("command", "relay", "projections", "saga"))
    read_side = cases["processes.read_model.latency_at_500"]
    assert read_side["applied"] == read_side["sent"] > 0
    assert read_side["p50_ms"] <= read_side["p99_ms"]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def assert_faststream_ratios(case: dict[str, Any]) -> None:
    """FastStream echo, raw echo and restock were measured in the same rounds: each of the
    three ratios is the median of its rounds', and within a round they agree."""
    rounds = len(case["rounds"])
    assert case["max_workers"] == 1
    assert len(case["restock_rounds"]) == rounds
    assert all(v > 0 for v in case["restock_rounds"] + case["raw_rounds"])
    fast_raw = case["pair_ratios"]
    restock_raw = case["restock_pair_ratios"]
    fast_restock = case["faststream_over_restock_pair_ratios"]
    assert len(restock_raw) == len(fast_restock) == rounds
    for fr, rr, fs, fast, bare, restock in zip(
        fast_raw,
        restock_raw,
        fast_restock,
        case["rounds"],
        case["raw_rounds"],
        case["restock_rounds"],
        strict=True,
    ):
        assert rr == pytest.approx(restock / bare, rel=1e-2)
        assert fs == pytest.approx(fast / restock, rel=1e-2)
        assert fs == pytest.approx(fr / rr, rel=2e-2)  # FastStream/restock = (F/raw)/(R/raw)
    assert case["restock_ratio"] == pytest.approx(median(restock_raw), rel=1e-2, abs=1e-3)
    assert case["faststream_over_restock"] == pytest.approx(median(fast_restock), rel=1e-2)
    if rounds == 1:  # one round: the medians are the round's, and multiply exactly
        assert case["faststream_over_restock"] == pytest.approx(
            case["ratio"] / case["restock_ratio"], rel=2e-2
        )
