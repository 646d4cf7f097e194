"""The event-loop lag probe reports a loop that was blocked; the endpoint answers
health and readiness probes beside the metrics."""

from __future__ import annotations

import asyncio
import http.client
import time

from prometheus_client import REGISTRY

from telemetry.exposition import EventLoopLag, MetricsEndpoint


def lag() -> float:
    return REGISTRY.get_sample_value("ordermesh_event_loop_lag_seconds") or 0.0


async def test_a_blocked_loop_shows_as_lag() -> None:
    probe = EventLoopLag(interval=0.05)
    await probe.start()
    try:
        await asyncio.sleep(0)  # the probe starts its first wait
        time.sleep(0.3)  # noqa: ASYNC251 - the point: block the loop past the probe's wake-up
        # The overdue probe runs on the loop's next turns, before any new 0.05 s wait ends.
        for _ in range(100):
            if lag() >= 0.2:
                break
            await asyncio.sleep(0)
        assert lag() >= 0.2
    finally:
        await probe.stop()


async def test_health_and_readiness_are_served_beside_the_metrics() -> None:
    ready = False
    endpoint = MetricsEndpoint(0, ready=lambda: ready)
    await endpoint.start()
    try:

        def get(path: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=5)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.close()

        assert await asyncio.to_thread(get, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(get, "/readyz") == (503, "not ready\n")
        ready = True
        assert await asyncio.to_thread(get, "/readyz") == (200, "ready\n")
        status, body = await asyncio.to_thread(get, "/metrics")
        assert status == 200 and "ordermesh_event_loop_lag_seconds" in body
    finally:
        await endpoint.stop()
