"""FastStream's request/reply against raw nats-py and ordermesh's own command, in one run.

The command and query services answer on nats-py directly, not through FastStream
(docs/performance.md, "Why the command and query services are on nats-py"). That choice
rests on a number that a FastStream release could change, so the bench keeps measuring
it: a FastStream service that does nothing but validate its body into a pydantic model and
return it, next to nats-py's own echo and next to ``product.restock``, which validates,
decides, appends an event to the store and replies. All three are driven by the same
nats-py client code at the same concurrency, in alternated rounds, so each ratio is taken
between measurements seconds apart, as the other paired cases are.

FastStream is imported inside :func:`faststream_echo` only: the ``ordermesh`` CLI starts
without paying for it. ``python -m ordermesh.bench.faststream_echo [--quick] [--json FILE]``
runs this case alone, on a nats-server of its own, with the plan ``ordermesh bench`` uses:
about a minute and a half, to check a new FastStream release without the whole bench.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loguru import logger
from nats.aio.client import Client as NATS
from pydantic import BaseModel
from pydantic_core import from_json
from rich.console import Console

from broker.connection import connect, request_served
from infra.nats_server import EmbeddedNatsServer
from ordermesh import runtime
from ordermesh.app import App
from ordermesh.bench import raw
from ordermesh.bench.measure import Result, middle
from ordermesh.bench.system import command_rate, paired, seed_products
from ordermesh.config import Settings
from ordermesh.logs import configure_logging

NAME_PREFIX = "faststream.echo"
SUBJECT = "bench.faststream.echo"
#: The same size as the raw baselines' body, so the raw echo in a pair moves the same bytes.
BODY_SIZE = 200


class EchoLine(BaseModel):
    product_id: str
    quantity: int


class EchoBody(BaseModel):
    """A small order-like request, as a typical FastStream handler would declare it."""

    order_id: str
    customer_id: str
    items: list[EchoLine]
    note: str


def _body() -> bytes:
    """A valid ``EchoBody`` of exactly :data:`BODY_SIZE` bytes of JSON."""
    body = EchoBody(
        order_id="o-0001",
        customer_id="c-0001",
        items=[EchoLine(product_id="p-0001", quantity=2)],
        note="",
    )
    body.note = "x" * (BODY_SIZE - len(body.model_dump_json()))
    return body.model_dump_json().encode()


BODY = _body()


async def echo(body: EchoBody) -> EchoBody:
    """The whole service: FastStream decodes and validates the request into the model,
    and serialises the model returned as the reply. What is measured is FastStream's own
    path around a handler that costs nothing."""
    return body


async def faststream_echo(
    url: str, *, concurrency: int, duration: float, max_workers: int | None = None
) -> Result:
    """FastStream's NATS broker answering :data:`SUBJECT`, driven by the raw echo's driver.

    ``ordermesh bench`` leaves ``max_workers`` unset: FastStream's default, which is what a
    typical service declares, and the same one-message-at-a-time delivery as the raw echo's
    nats-py callback, so the pair compares like with like. A handler that never awaits has
    nothing to overlap, and FastStream's concurrent subscriber costs more per message (an
    anyio memory stream, task group and semaphore): by hand, with max_workers=4/16/64,
    FastStream 0.7.8 answered at 0.09-0.13x of raw instead of 0.21-0.27x
    (docs/performance.md). ``python -m ordermesh.bench.faststream_echo --max-workers N``
    measures that setting again.
    """
    from faststream.nats import NatsBroker

    broker = NatsBroker(url, logger=None)
    # None in `ordermesh bench`: FastStream's default, one message at a time like the raw
    # echo's nats-py callback (why, and the measured alternative, in the docstring).
    broker.subscriber(SUBJECT, max_workers=max_workers)(echo)
    await broker.start()
    client = await connect(url)
    try:
        # Measuring should not start, or fail, on a first "no responders"; and the echo
        # must echo: an error reply would be measured as fast as a right one.
        reply = await request_served(client, SUBJECT, BODY, timeout=5, attempts=50)
        if from_json(reply.data) != from_json(BODY):
            raise RuntimeError(f"FastStream echo answered {reply.data!r}")
        done, elapsed = await raw.drive_requests(
            client, SUBJECT, BODY, concurrency=concurrency, duration=duration
        )
    finally:
        await client.close()
        await broker.stop()
    return Result(
        f"{NAME_PREFIX}.c{concurrency}",
        "faststream",
        "rate",
        done / elapsed,
        "req/s",
        ops=done,
        seconds=elapsed,
        baseline=f"raw.request_reply.c{concurrency}",
        extra={"max_workers": max_workers or 1, "body_bytes": len(BODY)},
    )


async def faststream_vs_raw_and_restock(
    url: str,
    nc: NATS,
    products: list[str],
    *,
    concurrency: int,
    duration: float,
    rounds: int,
    max_workers: int | None = None,
) -> Result:
    """FastStream echo, raw echo and ``product.restock``, ``rounds`` times, in the order
    raw, FastStream, restock and then reversed, so a drift within a round does not always
    favour one side; FastStream sits in the middle, next to both sides it is compared with.

    The result is the median FastStream round; its ``ratio`` the median of the rounds'
    FastStream / raw ratios, ``restock_ratio`` the median of restock / raw and
    ``faststream_over_restock`` the median of FastStream / restock, each from measurements
    of the same round. (Medians of ratios do not multiply exactly: with one round they do.)
    """
    fast: list[Result] = []
    bare: list[Result] = []
    restock: list[Result] = []

    async def run_raw() -> None:
        bare.append(
            await raw.request_reply(url, concurrency=concurrency, duration=duration, body=BODY)
        )

    async def run_faststream() -> None:
        fast.append(
            await faststream_echo(
                url, concurrency=concurrency, duration=duration, max_workers=max_workers
            )
        )

    async def run_restock() -> None:
        restock.append(
            await command_rate(
                nc, "product.restock", products, concurrency=concurrency, duration=duration
            )
        )

    for i in range(rounds):
        sides = (run_raw, run_faststream, run_restock)
        for side in sides if i % 2 == 0 else reversed(sides):
            await side()
    result = paired(list(zip(bare, fast, strict=True)))
    over_raw = [r.value / b.value for b, r in zip(bare, restock, strict=True)]
    over_restock = [f.value / r.value for f, r in zip(fast, restock, strict=True)]
    result.extra |= {
        "restock_rounds": [round(r.value, 1) for r in restock],
        "restock_pair_ratios": [round(x, 3) for x in over_raw],
        "faststream_over_restock_pair_ratios": [round(x, 3) for x in over_restock],
        "restock_ratio": round(middle(over_raw), 3),
        "faststream_over_restock": round(middle(over_restock), 3),
    }
    return result


async def run_case(
    url: str,
    data_dir: Path,
    *,
    products: int,
    duration: float,
    rounds: int,
    concurrency: int = 64,
    max_workers: int | None = None,
) -> Result:
    """The case on a command service of its own, as ``ordermesh run command`` deploys it and
    as fresh as the one ``command.product.restock.c64`` measures: the earlier cases leave
    thousands of orders behind them in theirs, which slow a restock down."""
    app = App(Settings(nats_url=url, data_dir=data_dir, metrics_port=0), ("command",))
    await app.start()
    runtime.tune_gc()  # as `ordermesh up` and `ordermesh run` do once started
    client = await connect(url)
    try:
        ids = await seed_products(client, products)
        return await faststream_vs_raw_and_restock(
            url,
            client,
            ids,
            concurrency=concurrency,
            duration=duration,
            rounds=rounds,
            max_workers=max_workers,
        )
    finally:
        await client.close()
        await app.stop()


def summary(result: Result) -> str:
    """The case's three ratios on one line, for the progress output and under the table."""
    rounds = len(result.extra["pair_ratios"])
    return (
        f"{result.name}: faststream/raw {result.ratio or 0:.2f}x, "
        f"restock/raw {result.extra['restock_ratio']:.2f}x, "
        f"faststream/restock {result.extra['faststream_over_restock']:.2f}x "
        f"(median of {rounds} round{'' if rounds == 1 else 's'} each)"
    )


def print_summaries(results: list[Result], console: Console) -> None:
    for r in results:
        if r.name.startswith(NAME_PREFIX):
            console.print(summary(r))


async def _alone(quick: bool, max_workers: int | None) -> dict[str, Any]:
    """The case alone on a nats-server of its own; prints it and returns the bench's JSON."""
    from ordermesh.bench.runner import PRODUCTS, Plan, report  # the runner imports this module

    plan = Plan.of(quick)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="ordermesh-bench-") as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats")
        await server.start()
        try:
            result = await run_case(
                server.url,
                Path(tmp) / "commands",
                products=PRODUCTS,
                duration=plan.pair_duration,
                rounds=plan.rounds,
                max_workers=max_workers,
            )
        finally:
            await server.stop()
    console.print(summary(result))
    console.print(f"rounds, req/s: faststream {result.extra['rounds']}")
    console.print(f"               raw        {result.extra['raw_rounds']}")
    console.print(f"rounds, cmd/s: restock    {result.extra['restock_rounds']}")
    return report([result], plan, quick)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ordermesh.bench.faststream_echo",
        description="Only the faststream.echo.c64 case of `ordermesh bench`.",
    )
    parser.add_argument("--quick", action="store_true", help="one round of a second a side")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the result here")
    parser.add_argument(
        "--max-workers",
        type=int,
        metavar="N",
        help="FastStream's concurrent subscriber (ordermesh bench runs its default)",
    )
    args = parser.parse_args(argv)
    configure_logging("ordermesh-bench", level="WARNING")
    logger.disable("broker")  # as `ordermesh bench` does
    doc = runtime.run(_alone(args.quick, args.max_workers))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
