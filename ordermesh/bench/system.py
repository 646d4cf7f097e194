"""The ordermesh cases: command path, command → read model, relay, memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from pydantic_core import from_json, to_json

from broker.connection import connect
from broker.projector import Projector
from broker.relay import Relay
from broker.tasks import cancel_and_wait
from domain.event_store import NewEvent, RecordedEvent, StreamState
from infra.eventstore.sqlite import SQLiteEventStore
from infra.nats_server import free_port
from ordermesh.api.process import MonitorProcess
from ordermesh.app import App
from ordermesh.bench import raw
from ordermesh.bench.measure import (
    Result,
    closed_loop,
    latency_summary,
    middle,
    middle_result,
)
from ordermesh.child import PartnersProcess
from ordermesh.tap.message import Tapped
from ordermesh.tap.render import json_line
from ordermesh.tap.session import Tap, TapOptions
from telemetry.batching import SpanBatcher
from telemetry.tracing import configure_tracing, shutdown_tracing

REQUEST_TIMEOUT = 10.0


async def call(nc: NATS, subject: str, body: dict[str, Any] | bytes) -> dict[str, Any]:
    """One request, checked. The load generator encodes with pydantic-core, as a client
    that cares would: the cost measured should be the service's, not the caller's JSON."""
    data = body if isinstance(body, bytes) else to_json(body)
    reply = await nc.request(subject, data, timeout=REQUEST_TIMEOUT)
    decoded: dict[str, Any] = from_json(reply.data)
    if not decoded.get("ok"):
        raise RuntimeError(f"{subject} refused: {decoded}")
    return decoded


async def seed_products(nc: NATS, count: int) -> list[str]:
    ids = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
    for pid in ids:
        await call(
            nc,
            "commands.product.create",
            {"product_id": pid, "name": "Bench", "price": "9.99", "stock": 1_000_000},
        )
    return ids


def order_body(order_id: str, product_id: str) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "bench",
        "items": [{"product_id": product_id, "quantity": 1}],
    }


async def command_rate(
    nc: NATS, command: str, products: list[str], *, concurrency: int, duration: float
) -> Result:
    """Acknowledged commands per second, spread over the products; every order is new."""

    # Restocks repeat one body per product: encode each once, as raw's body is made once.
    restocks = [to_json({"product_id": pid, "quantity": 1}) for pid in products]

    def op_for(run: str) -> Callable[[int], Awaitable[object]]:
        def body(i: int) -> dict[str, Any] | bytes:
            if command == "product.restock":
                return restocks[i % len(restocks)]
            return order_body(f"{run}-{i}", products[i % len(products)])

        return lambda i: call(nc, f"commands.{command}", body(i))

    await closed_loop(
        op_for(f"warm-{uuid.uuid4().hex[:6]}"),
        concurrency=concurrency,
        duration=min(duration, 0.3),
    )
    done, elapsed = await closed_loop(
        op_for(uuid.uuid4().hex[:6]), concurrency=concurrency, duration=duration
    )
    return Result(
        f"command.{command}.c{concurrency}",
        "command",
        "rate",
        done / elapsed,
        "cmd/s",
        ops=done,
        seconds=elapsed,
        baseline=f"raw.request_reply.c{concurrency}",
        target=0.25 if concurrency == 64 else None,
    )


async def command_vs_raw(
    url: str,
    nc: NATS,
    command: str,
    products: list[str],
    *,
    concurrency: int,
    duration: float,
    rounds: int = 3,
) -> Result:
    """The command rate, with its ratio taken against raw request/reply measured right
    before or after it, ``rounds`` times: the median of those pairs. On a shared machine raw alone
    moved by a third between two runs minutes apart; a pair seconds apart drifts less."""
    pairs: list[tuple[Result, Result]] = []
    for i in range(rounds):
        # Every other pair measures the command first: a drift within a pair then does
        # not always favour the same side.
        if i % 2 == 0:
            baseline = await raw.request_reply(url, concurrency=concurrency, duration=duration)
        measured = await command_rate(
            nc, command, products, concurrency=concurrency, duration=duration
        )
        if i % 2 == 1:
            baseline = await raw.request_reply(url, concurrency=concurrency, duration=duration)
        pairs.append((baseline, measured))
    return paired(pairs)


def paired(pairs: list[tuple[Result, Result]]) -> Result:
    """The median of the measured rounds, with the median of the (baseline, measured)
    pairs' ratios as its ratio, and every round in its JSON."""
    result = middle_result([m for _, m in pairs])
    result.ratio = middle([m.value / b.value for b, m in pairs])
    result.extra |= {
        "rounds": [round(m.value, 1) for _, m in pairs],
        "raw_rounds": [round(b.value, 1) for b, _ in pairs],
        "pair_ratios": [round(m.value / b.value, 3) for b, m in pairs],
    }
    return result


class ApplyClock:
    """Times each order from its send to its commit in the orders read model."""

    def __init__(self, projector: Projector) -> None:
        self.sent: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self._all_applied = asyncio.Event()
        self._expected = 0
        projector.on_commit = self._committed

    def _committed(self, batch: list[RecordedEvent]) -> None:
        now = time.perf_counter()
        for event in batch:
            order_id = event.stream.removeprefix("order-")
            sent = self.sent.get(order_id)
            if sent is not None and order_id not in self.latency:
                self.latency[order_id] = now - sent
        if self._expected and len(self.latency) >= self._expected:
            self._all_applied.set()

    async def wait_all(self, expected: int, timeout: float) -> None:
        self._expected = expected
        if len(self.latency) >= expected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._all_applied.wait()

    def reset(self) -> None:
        self.sent.clear()
        self.latency.clear()
        self._all_applied = asyncio.Event()
        self._expected = 0


async def offered_load(
    nc: NATS, clock: ApplyClock, products: list[str], *, rate: float, duration: float
) -> dict[str, Any]:
    """Open loop: send ``order.place`` at ``rate``/s whatever the replies do."""
    clock.reset()
    run = uuid.uuid4().hex[:6]
    count = max(1, int(rate * duration))
    failures = 0

    async def send(i: int) -> None:
        nonlocal failures
        order_id = f"{run}-{i}"
        clock.sent[order_id] = time.perf_counter()
        try:
            await call(
                nc, "commands.order.place", order_body(order_id, products[i % len(products)])
            )
        except Exception:
            failures += 1
            clock.sent.pop(order_id, None)

    start = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the open loop, not waiting for a condition
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    await clock.wait_all(count - failures, timeout=5.0)
    applied = list(clock.latency.values())
    return {
        "offered_rate": rate,
        "sent": count,
        "failed": failures,
        "applied": len(applied),
    } | latency_summary(applied)


async def read_model_latency(
    nc: NATS, app: App, products: list[str], *, duration: float, ramp_duration: float
) -> list[Result]:
    projector = app.component(Projector)
    clock = ApplyClock(projector)
    try:
        fixed = await offered_load(nc, clock, products, rate=200, duration=duration)
        # The rate the split-process case is held to (ordermesh.bench.processes).
        at_500 = await offered_load(nc, clock, products, rate=500, duration=duration)
        steps = []
        best = 0.0
        for rate in (200, 400, 800, 1600, 3200, 6400):
            step = await offered_load(nc, clock, products, rate=rate, duration=ramp_duration)
            steps.append(step)
            ok = step["failed"] == 0 and step["applied"] == step["sent"] and step["p99_ms"] < 100
            if not ok:
                break
            best = rate
    finally:
        projector.on_commit = None
    return [
        Result(
            "read_model.latency_at_200",
            "read_model",
            "latency",
            fixed["p99_ms"],
            "ms p99",
            ops=fixed["applied"],
            seconds=duration,
            target=50.0,
            target_kind="max_value",
            extra=fixed,
        ),
        Result(
            "read_model.latency_at_500",
            "read_model",
            "latency",
            at_500["p99_ms"],
            "ms p99",
            ops=at_500["applied"],
            seconds=duration,
            extra=at_500,
        ),
        Result(
            "read_model.max_rate_p99_under_100ms",
            "read_model",
            "rate",
            best,
            "cmd/s",
            extra={"steps": steps},
        ),
    ]


async def relay_vs_raw(
    url: str, nc: NATS, store_dir: Path, *, events: int, rounds: int, duration: float
) -> Result:
    """The relay's rate, with its ratio taken against raw JetStream publishing (256 in
    flight) measured right before or after it, ``rounds`` times, as for the commands: raw
    JetStream measured minutes earlier in the run had moved by half on a busy machine."""
    pairs: list[tuple[Result, Result]] = []
    for i in range(rounds):
        if i % 2 == 0:
            baseline = await raw.jetstream_publish(url, in_flight=256, duration=duration)
        measured = await relay_rate(nc, store_dir / f"relay-bench-{i}.db", events=events)
        if i % 2 == 1:
            baseline = await raw.jetstream_publish(url, in_flight=256, duration=duration)
        pairs.append((baseline, measured))
    return paired(pairs)


async def relay_rate(nc: NATS, db: Path, *, events: int) -> Result:
    """Events/s from a pre-filled store (a new file at ``db``) into an empty EVENTS stream."""
    store = await SQLiteEventStore.open(db)
    data = json.dumps(
        {
            "order_id": "o-x",
            "customer_id": "c",
            "items": [
                {"product_id": "p", "quantity": 1, "unit_price": "9.99", "line_total": "9.99"}
            ],
            "total": "9.99",
        }
    ).encode()
    meta = b'{"correlation_id":"c","causation_id":"c","source":"bench"}'
    try:
        for start in range(0, events, 100):
            batch = [NewEvent("order.placed", data, meta) for _ in range(min(100, events - start))]
            await store.append(f"order-b{start}", batch, StreamState.NO_STREAM)
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.purge_stream("EVENTS")
        finished = asyncio.Event()

        def count(event: RecordedEvent) -> None:
            if relay.published + relay.duplicates >= events:
                finished.set()

        relay = Relay(nc, store, on_acked=count)
        began = time.perf_counter()
        await relay.start()
        try:
            async with asyncio.timeout(120):
                await finished.wait()
        finally:
            await relay.stop()
        elapsed = time.perf_counter() - began
    finally:
        await store.close()
    return Result(
        "relay.store_to_jetstream",
        "relay",
        "rate",
        events / elapsed,
        "event/s",
        ops=events,
        seconds=elapsed,
        baseline="raw.jetstream_publish.w256",
        target=0.5,
    )


async def peak_rss_of_up(*, orders: int, concurrency: int = 64) -> Result:
    """Peak RSS of a real ``ordermesh up`` process after ``orders`` orders are projected."""
    with tempfile.TemporaryDirectory(prefix="ordermesh-bench-") as tmp:
        port, monitor = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERMESH_")}
        env |= {
            "ORDERMESH_DATA_DIR": tmp,
            "ORDERMESH_NATS_PORT": str(port),
            "ORDERMESH_NATS_MONITOR_PORT": str(monitor),
            "ORDERMESH_API_PORT": "0",
            "LOG_LEVEL": "WARNING",
        }
        exe = str(Path(sys.executable).parent / "ordermesh")
        proc = await asyncio.create_subprocess_exec(
            exe, "up", env=env, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(60):
                while b"Ctrl-C" not in await proc.stdout.readline():
                    pass
            nc = await connect(f"nats://127.0.0.1:{port}")
            try:
                products = await seed_products(nc, 10)
                run = uuid.uuid4().hex[:6]
                await closed_loop(
                    lambda i: call(
                        nc, "commands.order.place", order_body(f"{run}-{i}", products[i % 10])
                    ),
                    concurrency=concurrency,
                    duration=600,
                    max_ops=orders,
                )
                # The read model lives in the other process: its query is our only view.
                async with asyncio.timeout(120):
                    while await _projected_orders(nc) < orders:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                await nc.close()
            peak_kib = _status_kib(proc.pid, "VmHWM")
            current_kib = _status_kib(proc.pid, "VmRSS")
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
    return Result(
        f"memory.up_peak_rss_after_{orders}_orders",
        "memory",
        "bytes",
        peak_kib / 1024,
        "MiB",
        ops=orders,
        extra={"rss_now_mib": round(current_kib / 1024, 1)},
    )


async def _projected_orders(nc: NATS) -> int:
    return int((await call(nc, "queries.order.list", {"limit": 1}))["data"]["total"])


def _status_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


class _Discard(SpanExporter):
    """A span sink that keeps nothing: the cost measured is making and batching spans."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def trace_everything() -> None:
    """Tracing as the bench measures it: every span sampled, batched by the services' own
    processor, and discarded. ``shutdown_tracing()`` turns it off again."""
    configure_tracing(
        "ordermesh-bench",
        processors=[SpanBatcher(_Discard())],
        environ={"OTEL_TRACES_SAMPLER": "always_on"},
    )


async def on_off_cost(
    nc: NATS,
    products: list[str],
    *,
    label: str,
    turn_on: Callable[[], Awaitable[None]],
    turn_off: Callable[[], Awaitable[None]],
    target: float,
    concurrency: int,
    duration: float,
    rounds: int = 3,
) -> list[Result]:
    """``product.restock`` with something off and on, alternated so that machine drift
    hits both alike; every other pair runs "on" first, so that a drift within a pair does
    not always favour one side. The ratio is the median pair's."""
    off: list[Result] = []
    on: list[Result] = []

    async def measure(enabled: bool) -> None:
        if enabled:
            await turn_on()
        try:
            (on if enabled else off).append(
                await command_rate(
                    nc, "product.restock", products, concurrency=concurrency, duration=duration
                )
            )
        finally:
            if enabled:
                await turn_off()

    for i in range(rounds):
        for enabled in (False, True) if i % 2 == 0 else (True, False):
            await measure(enabled)

    def median(
        results: list[Result], name: str, baseline: str | None, target: float | None
    ) -> Result:
        best = middle_result(results)
        return Result(
            name,
            label,
            "rate",
            best.value,
            "cmd/s",
            ops=best.ops,
            seconds=best.seconds,
            baseline=baseline,
            target=target,
            extra={"rounds": [round(r.value, 1) for r in results]},
        )

    off_name = f"{label}.off.product.restock.c{concurrency}"
    measured = median(on, f"{label}.on.product.restock.c{concurrency}", off_name, target)
    pairs = [t.value / o.value for t, o in zip(on, off, strict=True)]
    measured.extra["pair_ratios"] = [round(r, 3) for r in pairs]
    # The median pair, as for the commands at 64 in flight: drift stays in its pair.
    measured.ratio = middle(pairs)
    return [median(off, off_name, None, None), measured]


async def tracing_cost(
    nc: NATS, products: list[str], *, concurrency: int, duration: float, rounds: int = 3
) -> list[Result]:
    """Tracing off and on: always-on sampler, batch processor, discarding exporter."""

    async def on() -> None:
        trace_everything()

    async def off() -> None:
        shutdown_tracing()

    return await on_off_cost(
        nc,
        products,
        label="tracing",
        turn_on=on,
        turn_off=off,
        target=0.8,
        concurrency=concurrency,
        duration=duration,
        rounds=rounds,
    )


async def monitor_cost(
    url: str,
    nc: NATS,
    products: list[str],
    *,
    concurrency: int,
    duration: float,
    rounds: int = 3,
) -> list[Result]:
    """The live monitor beside the command service as ``ordermesh up`` runs it: a process
    of its own (``ordermesh run api``) taking a copy of every request and reply."""
    running: list[MonitorProcess] = []

    async def on() -> None:
        monitor = MonitorProcess(url, port=0)
        await monitor.start()
        running.append(monitor)

    async def off() -> None:
        await running.pop().stop()

    return await on_off_cost(
        nc,
        products,
        label="monitor",
        turn_on=on,
        turn_off=off,
        target=0.9,
        concurrency=concurrency,
        duration=duration,
        rounds=rounds,
    )


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds a process has used (Linux ``/proc``; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name: field 3 on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def partner_totals(metrics_url: str) -> tuple[float, float]:
    """Requests the partners took and the seconds their handlers ran, from FastStream's
    own series on the partners process's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    requests = seconds = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "faststream_received_messages_total":
                requests += sample.value
            elif sample.name == "faststream_received_processed_messages_duration_seconds_sum":
                seconds += sample.value
    return requests, seconds


async def saga_rate(
    nc: NATS,
    app: App,
    products: list[str],
    *,
    orders: int,
    concurrency: int = 64,
    partners: PartnersProcess | None = None,
) -> Result:
    """Orders/s from ``order.place`` to a completed saga (the order confirmed), end to end.

    With ``partners`` (the payment gateway and the carrier in a process of their own, as
    ``ordermesh up`` runs them) it also reports what they cost per order: their process's
    CPU time, their requests, and the time their handlers ran."""
    assert app.sagas is not None
    sagas = app.sagas
    run = uuid.uuid4().hex[:6]
    before = sagas.finished
    pid = partners.pid if partners is not None else None
    metrics_url = partners.ready_url.removesuffix("readyz") + "metrics" if partners else None
    cpu_before = cpu_seconds(pid) if pid is not None else None
    totals_before = await asyncio.to_thread(partner_totals, metrics_url) if metrics_url else None
    start = time.perf_counter()
    placed, _ = await closed_loop(
        lambda i: call(
            nc, "commands.order.place", order_body(f"saga-{run}-{i}", products[i % len(products)])
        ),
        concurrency=concurrency,
        duration=120.0,
        max_ops=orders,
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(120.0):
            await sagas.wait_finished(before + placed)
    elapsed = time.perf_counter() - start
    finished = sagas.finished - before
    extra: dict[str, Any] = {"placed": placed, "finished": finished}
    if pid is not None and cpu_before is not None and finished:
        cpu_after = cpu_seconds(pid)
        if cpu_after is not None:
            extra["partner_cpu_ms_per_order"] = 1000 * (cpu_after - cpu_before) / finished
    if metrics_url and totals_before is not None and finished:
        requests, seconds = await asyncio.to_thread(partner_totals, metrics_url)
        extra["partner_requests_per_order"] = (requests - totals_before[0]) / finished
        extra["partner_handler_ms_per_order"] = 1000 * (seconds - totals_before[1]) / finished
    return Result(
        f"saga.confirmed_per_second.c{concurrency}",
        "saga",
        "rate",
        finished / elapsed,
        "orders/s",
        ops=finished,
        seconds=elapsed,
        baseline=f"command.order.place.c{concurrency}",
        extra=extra,
    )


#: The headers the relay puts on every event: the tap case decodes what it really sees.
EVENT_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "0b7e4f3a-6d1c-4d7e-9a55-2f0d5b1c9e01",
    "Nats-Msg-Id": "0b7e4f3a-6d1c-4d7e-9a55-2f0d5b1c9e01",
    "ce-source": "ordermesh.command",
    "ce-type": "order.placed",
    "ce-time": "2026-11-29T12:00:00.000000Z",
    "ce-subject": "o-1",
    "content-type": "application/json",
    "ce-stream": "order-o-1",
    "ce-revision": "0",
    "ce-position": "1",
    "ce-correlationid": "5c1f6a52-8e0b-4d5f-b7e1-0f3c2a9d8e77",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


async def _tap_consumer(
    nc: NATS, subject: str, counted: Callable[[], None]
) -> Callable[[], Awaitable[None]]:
    """``ordermesh tap --json`` as the CLI runs it, writing to /dev/null."""
    out = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - /dev/null; closed by stop()

    def sink(msg: Tapped) -> None:
        out.write(json_line(msg))
        counted()

    session = Tap(nc, TapOptions(subjects=(subject,), replies=False), sink)
    task = asyncio.create_task(session.run())
    await session.ready.wait()

    async def stop() -> None:
        await cancel_and_wait(task)
        out.close()

    return stop


async def tap_rate(url: str, *, duration: float) -> list[Result]:
    """The tap against a raw subscriber of the same messages (ordermesh event headers)."""
    baseline = await raw.publish_subscribe(
        url, duration=duration, name="raw.publish_subscribe.event_headers", headers=EVENT_HEADERS
    )
    tapped = await raw.publish_subscribe(
        url,
        duration=duration,
        name="tap.json_lines",
        headers=EVENT_HEADERS,
        attach=_tap_consumer,
        baseline=baseline.name,
        target=0.5,
    )
    return [baseline, tapped]
