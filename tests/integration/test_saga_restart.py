"""``ordermesh run saga`` killed with SIGKILL mid-flow, with a deadline pending, and
restarted: every saga finishes or compensates, nothing is done twice, deadlines hold."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from ordermesh.child import PartnersProcess
from tests.conftest import CORE_SERVICES, eventually, request, settings_for
from tests.integration.test_processes import env_for, ordermesh
from tests.integration.test_saga import check_conservation, create_product, place, saga, types_in

SAGA_ENV = {
    "ORDERMESH_SAGA__PROCESS_PAYMENT__TIMEOUT": "4",
    "ORDERMESH_SAGA__PROCESS_PAYMENT__ATTEMPT_TIMEOUT": "1",
}


async def saga_count(nc: NATS, status: str) -> int:
    reply = await request(nc, "queries.saga.list", {"status": status, "limit": 1})
    return int(reply["data"]["total"])


async def test_sigkill_mid_flow_and_restart(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    settings = settings_for(nats_server, data)
    core = App(settings, tuple(s for s in CORE_SERVICES if s != "partners"))
    partners = PartnersProcess(nats_server.url, settings)  # a process of their own
    await asyncio.gather(core.start(), partners.start())
    env = env_for(data, ORDERMESH_NATS_URL=nats_server.url, **SAGA_ENV)
    try:
        initial = {"p-1": 150, "p-2": 60}
        for product_id, stock in initial.items():
            await create_product(nc, product_id, stock)
        orders: dict[str, list[Any]] = {"slow": [("p-1", 2)]}

        async with ordermesh("run", "saga", env=env) as first:
            await place(nc, "slow", orders["slow"], payment_method="slow-card")

            async def waiting_on_payment() -> dict[str, Any] | None:
                reply = await request(nc, "queries.saga.get", {"saga_id": "slow"})
                ok = reply["ok"] and reply["data"]["current_step"] == "process_payment"
                return reply["data"] if ok else None

            before = await eventually(waiting_on_payment)
            deadline = before["steps"][1]["deadline"]
            methods = ("card", "declined-card", "flaky-card")
            for i in range(200):
                orders[f"o-{i}"] = [("p-1", 1), ("p-2", 1)] if i % 2 else [("p-1", 1)]
            await asyncio.gather(
                *(
                    place(nc, f"o-{i}", orders[f"o-{i}"], payment_method=methods[i % 3])
                    for i in range(200)
                )
            )

            async def some_finished() -> bool:
                return await saga_count(nc, "completed") >= 10

            await eventually(some_finished)
            first.kill()
            await first.wait()

        unfinished = 201 - await saga_count(nc, "completed") - await saga_count(nc, "failed")
        assert unfinished > 0, "the kill came too late to interrupt anything"

        async with ordermesh("run", "saga", env=env):

            async def all_ended() -> bool:
                ended = await saga_count(nc, "completed") + await saga_count(nc, "failed")
                return ended == 201

            await eventually(all_ended, timeout=60, interval=0.2)

        outcomes: Counter[str] = await check_conservation(nc, core.store, initial, orders)
        assert outcomes["confirmed"] > 0 and outcomes["payment_declined"] > 0
        assert outcomes["timeout"] == 1

        slow = await saga(nc, "slow")
        assert slow["status"] == "failed" and slow["error"]["code"] == "timeout"
        assert slow["steps"][1]["deadline"] == deadline, "the restart moved the deadline"
        assert datetime.fromisoformat(slow["steps"][1]["finished_at"]) >= datetime.fromisoformat(
            deadline
        )
        for order_id in orders:
            stream = await types_in(core.store, f"saga-order_fulfillment-{order_id}")
            assert stream.count("order_fulfillment.started") == 1, order_id
            assert stream[-1] in ("order_fulfillment.completed", "order_fulfillment.failed")
            completed = [t for t in stream if t == "order_fulfillment.step_completed"]
            assert len(completed) <= 4, (order_id, stream)
    finally:
        await core.stop()
        await partners.stop()
