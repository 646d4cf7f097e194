"""``ordermesh bench --quick`` keeps the harness working; speeds are never asserted here."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

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
    "saga.confirmed_per_second.c64": "command.order.place.c64",
    "read_model.latency_at_200": None,
    "read_model.max_rate_p99_under_100ms": None,
    "relay.store_to_jetstream": "raw.jetstream_publish.w256",
    "memory.up_peak_rss_after_1000_orders": None,
}
#: Cases whose ratio comes from raw rounds measured right before each of their own.
PAIRED = {
    "command.product.restock.c64",
    "command.order.place.c64",
    "tracing.on.product.restock.c64",
    "monitor.on.product.restock.c64",
    "relay.store_to_jetstream",
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
            if name.startswith(("command.", "relay.")):
                assert len(case["raw_rounds"]) == len(pairs)
        elif baseline is not None:
            expected_ratio = case["value"] / cases[baseline]["value"]
            assert case["ratio"] == pytest.approx(expected_ratio, rel=1e-2, abs=1e-3)
    latency = cases["read_model.latency_at_200"]
    assert latency["applied"] == latency["sent"] > 0
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert doc["pending"] == {}
    assert cases["tap.json_lines"]["lost"] == 0
    saga = cases["saga.confirmed_per_second.c64"]
    assert saga["finished"] == saga["placed"] > 0
    assert "command.product.restock.c64" in stdout.decode()
