"""Faults injected under load, over real processes; every check after each (``harness``).

The short runs (120 orders, one fault in the middle) are in the default suite; the long
ones (several hundred orders, every service killed in turn, a 10 s outage, …) carry the
``chaos`` marker, deselected by default: ``make chaos`` runs them. Each test prints its
result table (``pytest -rA`` or ``-s`` shows it when it passes; ``CHAOS_REPORT=<file>``
collects them in a file).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.cluster import SERVICES
from tests.chaos.faults import (
    Fault,
    kill_active,
    kill_nats,
    kill_service,
    network_outage,
    store_locked,
)
from tests.chaos.harness import ScenarioResult, run_scenario

SHORT_ORDERS = 120
LONG_ORDERS = 400
LONG_RATE = 25.0

#: Saga steps that give up after 3 s: a 4 s outage outlasts them, so the short outage run
#: shows whether a reply delayed by the outage (not refused) still cancels the order.
SHORT_SAGA_TIMEOUTS = {
    f"ORDERMESH_SAGA__{step}__{key}": value
    for step in ("RESERVE_INVENTORY", "PROCESS_PAYMENT", "ARRANGE_SHIPPING", "CONFIRM_ORDER")
    for key, value in (("TIMEOUT", "3"), ("ATTEMPT_TIMEOUT", "1"))
}


def report(result: ScenarioResult) -> None:
    print(result.render())
    assert result.ok, result.render()


# -- short: the default suite ------------------------------------------------------------


async def test_kill_command_service_mid_load(tmp_path: Path) -> None:
    result = await run_scenario(
        tmp_path,
        "kill -9 command (short)",
        [kill_service("command")],
        orders=SHORT_ORDERS,
    )
    report(result)


async def test_kill_nats_server_losing_unsynced_tail(tmp_path: Path) -> None:
    """As after a machine crash, twice: what JetStream acknowledged in the last 0.5 s is
    gone while the relay is busy (its publishes fail with the kill), then what it
    acknowledged since the end of the load is gone while the relay is idle (nothing
    fails; only comparing ``EVENTS`` with what it relayed shows it); 20 more orders
    follow."""
    result = await run_scenario(
        tmp_path,
        "kill -9 nats, tail lost x2 (short)",
        [kill_nats(lose_tail=0.5), kill_nats(at=1.0, quiet=True)],
        orders=SHORT_ORDERS,
        after=20,
    )
    report(result)


async def test_nats_unreachable_mid_load(tmp_path: Path) -> None:
    result = await run_scenario(
        tmp_path,
        "NATS unreachable 4 s (short)",
        [network_outage(4.0)],
        orders=SHORT_ORDERS,
        extra_env=SHORT_SAGA_TIMEOUTS,
    )
    report(result)


async def test_event_store_locked_mid_load(tmp_path: Path) -> None:
    result = await run_scenario(
        tmp_path, "event store locked 4 s (short)", [store_locked(4.0)], orders=SHORT_ORDERS
    )
    report(result)


# -- long: make chaos ------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(600)
async def test_long_kill_every_service_in_turn(tmp_path: Path) -> None:
    faults = [kill_service(s, at=0.1 + 0.15 * i) for i, s in enumerate(SERVICES)]
    result = await run_scenario(
        tmp_path,
        "kill -9 each service in turn",
        faults,
        orders=LONG_ORDERS,
        rate=LONG_RATE,
        settle=120,
    )
    report(result)


@pytest.mark.chaos
@pytest.mark.timeout(600)
async def test_long_kill_nats_server_twice(tmp_path: Path) -> None:
    """A plain kill -9, then one that loses the last second JetStream acknowledged."""
    result = await run_scenario(
        tmp_path,
        "kill -9 nats-server x2",
        [kill_nats(at=0.3), kill_nats(at=0.6, lose_tail=1.0)],
        orders=LONG_ORDERS,
        rate=LONG_RATE,
        settle=120,
    )
    report(result)


#: Saga steps that give up after 8 s, within a 10 s outage.
STEPS_8S = {
    f"ORDERMESH_SAGA__{step}__TIMEOUT": "8"
    for step in ("RESERVE_INVENTORY", "PROCESS_PAYMENT", "ARRANGE_SHIPPING", "CONFIRM_ORDER")
}


@pytest.mark.chaos
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("steps", "saga_env"), [("default steps", {}), ("8 s steps", STEPS_8S)], ids=["default", "8s"]
)
async def test_long_nats_unreachable_10s(
    tmp_path: Path, steps: str, saga_env: dict[str, str]
) -> None:
    """With the default step timeouts, and with steps that time out within the outage."""
    result = await run_scenario(
        tmp_path,
        f"NATS unreachable 10 s, {steps}",
        [network_outage(10.0)],
        orders=LONG_ORDERS,
        rate=LONG_RATE,
        settle=120,
        extra_env=saga_env,
    )
    report(result)


@pytest.mark.chaos
@pytest.mark.timeout(600)
async def test_long_event_store_unavailable(tmp_path: Path) -> None:
    """Held past the writers' ``busy_timeout`` (10 s): commands are refused, not queued."""
    result = await run_scenario(
        tmp_path,
        "event store locked 15 s",
        [store_locked(15.0, expect_refusal=True)],
        orders=LONG_ORDERS,
        rate=LONG_RATE,
        settle=120,
    )
    report(result)


@pytest.mark.chaos
@pytest.mark.timeout(600)
@pytest.mark.parametrize("role", ["relay", "saga", "projections"])
async def test_long_standby_takes_over(tmp_path: Path, role: str) -> None:
    """Two processes of ``role``; the one that leads is killed mid-load."""
    faults: list[Fault] = [kill_active(role, at=0.4)]
    result = await run_scenario(
        tmp_path,
        f"kill -9 active {role} (2 running)",
        faults,
        orders=LONG_ORDERS,
        rate=LONG_RATE,
        settle=120,
        standby=(role,),
    )
    report(result)
