"""``ordermesh projections rebuild`` replays the store into an emptied read model."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from nats.aio.client import Client as NATS

from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from tests.conftest import CORE_SERVICES, eventually, request, settings_for
from tests.integration.test_processes import ORDERMESH, env_for


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        ORDERMESH,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_rebuild_restores_a_damaged_read_model(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    app = App(settings_for(nats_server, data), CORE_SERVICES)
    await app.start()
    try:
        await request(
            nc,
            "commands.product.create",
            {"product_id": "p-1", "name": "W", "price": "2.00", "stock": 1},
        )
        for i in range(3):
            await request(
                nc,
                "commands.order.place",
                {
                    "order_id": f"o-{i}",
                    "customer_id": "c",
                    "items": [{"product_id": "p-1", "quantity": i + 1}],
                },
            )

        async def three() -> bool:
            return bool((await request(nc, "queries.order.list", {}))["data"]["total"] == 3)

        await eventually(three)
    finally:
        await app.stop()

    with sqlite3.connect(data / "readmodels.db") as conn:
        conn.execute("DELETE FROM orders WHERE order_id = 'o-1'")
        conn.execute("UPDATE orders SET total = '999.00'")

    env = env_for(data)
    code, out, err = await run_cli("projections", "rebuild", "orders", env=env)
    assert code == 0, err
    assert "rebuilt orders up to store position 4" in out + err

    with sqlite3.connect(data / "readmodels.db") as conn:
        rows = conn.execute(
            "SELECT order_id, total, version FROM orders ORDER BY order_id"
        ).fetchall()
    assert rows == [("o-0", "2.00", 1), ("o-1", "4.00", 1), ("o-2", "6.00", 1)]

    code, out, _ = await run_cli("projections", "status", env=env)
    assert code == 0
    assert "orders\t4\t0" in out

    code, _, err = await run_cli("projections", "rebuild", "nope", env=env)
    assert code != 0 and "unknown projection" in err
