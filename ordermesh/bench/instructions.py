"""What a command costs ordermesh, counted in instructions: steady on a noisy machine.

The bench's ratios are medians of alternating pairs because this machine's speed moves by
a third between two seconds; a change worth 3 % cannot be seen through that. The number of
instructions a command executes does not move with the machine. This drives the real
command service (``RequestService.handle``, the executor, a SQLite store in a temp dir)
with requests built in memory, 64 at a time, replying into a stub connection, so nothing of
nats-py or nats-server is counted, and :func:`count` runs it under valgrind's cachegrind
twice, with ``n`` commands and with none: the difference over ``n`` is one command's
instructions. ``make bench-instructions`` prints them for the cases the bench's floors
watch. Instructions are not time (a cache miss costs more than an add), so a change is
confirmed in full bench runs too; but they tell a 3 % step from noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from pydantic_core import from_json, to_json

from broker.partner_clients import NatsPaymentGateway, NatsShippingCarrier
from broker.services import command_service
from handlers import CommandExecutor
from infra.eventstore.sqlite import SQLiteEventStore
from ordermesh import runtime
from ordermesh.bench.system import trace_everything
from telemetry.tracing import shutdown_tracing

#: The cases, by name: the command, and whether every span is recorded.
CASES = {
    "product.restock": ("product.restock", False),
    "order.place": ("order.place", False),
    "product.restock.traced": ("product.restock", True),
}
IN_FLIGHT = 64
PRODUCTS = 100
STOCK = 1_000_000
_I_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


class _Replies:
    """A connection that keeps the replies instead of sending them."""

    def __init__(self) -> None:
        self.replies: list[bytes] = []

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.replies.append(payload)


def _request(subject: str, body: dict[str, Any]) -> Msg:
    return Msg(_client=None, subject=subject, reply="_INBOX.bench", data=to_json(body))  # type: ignore[arg-type]


async def run(command: str, n: int, *, traced: bool = False) -> tuple[float, list[bytes]]:
    """Handle ``n`` commands; the event loop's CPU seconds per command, and the replies."""
    if traced:
        trace_everything()
    try:
        with tempfile.TemporaryDirectory(prefix="ordermesh-instructions-") as tmp:
            store = await SQLiteEventStore.open(Path(tmp) / "events.db")
            try:
                return await _measure(store, command, n)
            finally:
                await store.close()
    finally:
        if traced:
            shutdown_tracing()


async def _measure(store: SQLiteEventStore, command: str, n: int) -> tuple[float, list[bytes]]:
    replies = _Replies()
    # Restock and place never reach a partner: the clients are there, never called.
    service = command_service(
        replies,  # type: ignore[arg-type]
        CommandExecutor(store),
        gateway=NatsPaymentGateway(replies),  # type: ignore[arg-type]
        carrier=NatsShippingCarrier(replies),  # type: ignore[arg-type]
    )
    products = [f"p-{i}" for i in range(PRODUCTS)]
    for pid in products:
        await service.handle(
            _request(
                "commands.product.create",
                {"product_id": pid, "name": "Bench", "price": "9.99", "stock": STOCK},
            )
        )
    refused = [r for r in replies.replies if not from_json(r)["ok"]]
    if refused:
        raise RuntimeError(f"creating the products was refused: {refused[0]!r}")
    runtime.tune_gc()  # as the services run
    replies.replies.clear()

    def body(i: int) -> dict[str, Any]:
        pid = products[i % PRODUCTS]
        if command == "product.restock":
            return {"product_id": pid, "quantity": 1}
        return {
            "order_id": f"o-{i}",
            "customer_id": "bench",
            "items": [{"product_id": pid, "quantity": 1}],
        }

    requests = [_request(f"commands.{command}", body(i)) for i in range(n)]
    started = time.thread_time()
    for first in range(0, n, IN_FLIGHT):
        # A task each, as the service's subscription makes them: appends share groups.
        await asyncio.gather(*(service.handle(m) for m in requests[first : first + IN_FLIGHT]))
    spent = time.thread_time() - started
    return (spent / n if n else 0.0), replies.replies


def instructions_of(valgrind_output: str) -> int:
    """The ``I refs`` total of a cachegrind run's summary."""
    found = _I_REFS.search(valgrind_output)
    if found is None:
        raise ValueError("no 'I refs' line in valgrind's output")
    return int(found.group(1).replace(",", ""))


def count(case: str, n: int) -> int:
    """Instructions per command of ``case``: a run of ``n`` commands less a run of none."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (make bench-instructions installs it)")
    totals = []
    for commands in (0, n):
        proc = subprocess.run(
            [
                valgrind,
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                sys.executable,
                "-m",
                "ordermesh.bench.instructions",
                "--run",
                case,
                str(commands),
            ],
            capture_output=True,
            text=True,
            check=True,
            # The same dict order and hashes in both runs: only the commands differ.
            env=os.environ | {"PYTHONHASHSEED": "0"},
        )
        totals.append(instructions_of(proc.stderr))
    return (totals[1] - totals[0]) // n


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ordermesh.bench.instructions")
    parser.add_argument("--run", nargs=2, metavar=("CASE", "N"), help="handle N commands once")
    parser.add_argument("-n", type=int, default=2000, help="commands per counted run")
    args = parser.parse_args(argv)
    if args.run:
        case, n = args.run[0], int(args.run[1])
        command, traced = CASES[case]
        per_command, _ = runtime.run(run(command, n, traced=traced))
        print(f"{case}: {per_command * 1e6:.1f} µs of CPU a command ({n} commands)")
        return
    for case in CASES:
        print(f"{case:24s} {count(case, args.n):>9,} instructions a command", flush=True)


if __name__ == "__main__":
    main()
