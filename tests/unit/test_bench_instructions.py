"""The instruction-count harness drives the real command service, and counts."""

from __future__ import annotations

import shutil

import pytest
from pydantic_core import from_json

from ordermesh.bench import instructions
from telemetry import tracing


@pytest.mark.parametrize("traced", [False, True])
async def test_every_command_is_handled_and_answered(traced: bool) -> None:
    per_command, replies = await instructions.run("order.place", 70, traced=traced)
    assert per_command > 0
    decoded = [from_json(r) for r in replies]
    assert len(decoded) == 70 and all(r["ok"] for r in decoded)
    assert {r["data"]["order_id"] for r in decoded} == {f"o-{i}" for i in range(70)}
    assert not tracing.enabled()  # turned off again after a traced run


async def test_restocks_add_up() -> None:
    _, replies = await instructions.run("product.restock", 200)
    stock: dict[str, int] = {}
    for reply in map(from_json, replies):
        stock[reply["data"]["product_id"]] = reply["data"]["stock"]
    # Every product restocked twice, by one each time.
    assert len(stock) == instructions.PRODUCTS
    assert set(stock.values()) == {instructions.STOCK + 2}


def test_the_total_is_read_from_valgrinds_summary() -> None:
    output = "==1== Collected : 2,375,428,107\n==1== \n==1== I   refs:      2,375,428,107\n"
    assert instructions.instructions_of(output) == 2_375_428_107
    with pytest.raises(ValueError, match="I refs"):
        instructions.instructions_of("==1== ERROR SUMMARY: 0 errors\n")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.timeout(300)
def test_a_command_costs_a_plausible_number_of_instructions() -> None:
    # Tens of thousands of instructions are a Python function call or two; a command is
    # far more, and a difference of two runs that went wrong would not be.
    assert 50_000 < instructions.count("product.restock", 64) < 5_000_000
