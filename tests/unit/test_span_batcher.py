"""The span batcher: what reaches the exporter, when, and what a full queue drops."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from telemetry.batching import DEFAULT_MAX_QUEUE_SIZE, SpanBatcher

NEVER = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}  # only a full batch or a flush exports


class Recorder(SpanExporter):
    def __init__(self, *, hold: threading.Event | None = None, fail_first: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.arrived = threading.Event()
        self.exporting = threading.Event()
        self.shut = False
        self._hold = hold
        self._fail = fail_first

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exporting.set()
        if self._hold is not None:
            self._hold.wait(10)
        if self._fail:
            self._fail = False
            raise RuntimeError("collector down")
        self.batches.append([s.name for s in spans])
        self.arrived.set()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True

    def names(self) -> list[str]:
        return [name for batch in self.batches for name in batch]


def span(name: str, *, sampled: bool = True) -> ReadableSpan:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return ReadableSpan(name, SpanContext(1, 2, False, flags))


def test_shutdown_exports_everything_in_batches_in_order() -> None:
    exporter = Recorder()
    batcher = SpanBatcher(exporter, environ=NEVER | {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"})
    for i in range(10):
        batcher.on_end(span(f"s{i}"))
    batcher.on_end(span("not sampled", sampled=False))
    batcher.shutdown()
    assert [len(b) for b in exporter.batches] == [4, 4, 2]
    assert exporter.names() == [f"s{i}" for i in range(10)]
    assert exporter.shut
    batcher.on_end(span("after"))  # ignored once shut down
    assert len(exporter.names()) == 10


def test_a_full_batch_is_exported_without_waiting_for_the_schedule() -> None:
    exporter = Recorder()
    batcher = SpanBatcher(exporter, environ=NEVER | {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "3"})
    try:
        for i in range(3):
            batcher.on_end(span(f"s{i}"))
        assert exporter.arrived.wait(10), "a full batch waited for the schedule delay"
        assert exporter.batches == [["s0", "s1", "s2"]]
    finally:
        batcher.shutdown()


def test_the_schedule_exports_a_partial_batch() -> None:
    exporter = Recorder()
    batcher = SpanBatcher(exporter, environ={"OTEL_BSP_SCHEDULE_DELAY": "20"})
    try:
        batcher.on_end(span("alone"))
        assert exporter.arrived.wait(10)
        assert exporter.batches == [["alone"]]
    finally:
        batcher.shutdown()


def test_force_flush_exports_at_once() -> None:
    exporter = Recorder()
    batcher = SpanBatcher(exporter, environ=NEVER)
    try:
        batcher.on_end(span("a"))
        assert batcher.force_flush()
        assert exporter.batches == [["a"]]
    finally:
        batcher.shutdown()


def test_a_full_queue_drops_new_spans_and_counts_them() -> None:
    hold = threading.Event()
    exporter = Recorder(hold=hold)
    settings = NEVER | {"OTEL_BSP_MAX_QUEUE_SIZE": "4", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"}
    batcher = SpanBatcher(exporter, environ=settings)
    try:
        for i in range(4):
            batcher.on_end(span(f"first{i}"))
        assert exporter.exporting.wait(10)  # the worker holds the first batch now
        for i in range(5):
            batcher.on_end(span(f"second{i}"))
        assert batcher.dropped == 1
    finally:
        hold.set()
        batcher.shutdown()
    assert exporter.names() == [f"first{i}" for i in range(4)] + [f"second{i}" for i in range(4)]


def test_a_failing_export_loses_that_batch_only() -> None:
    exporter = Recorder(fail_first=True)
    batcher = SpanBatcher(exporter, environ=NEVER | {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2"})
    for name in ("a", "b", "c"):
        batcher.on_end(span(name))
    batcher.shutdown()
    assert exporter.batches == [["c"]]


def test_settings_come_from_otel_bsp_and_bad_ones_fall_back() -> None:
    batcher = SpanBatcher(
        Recorder(),
        environ={
            "OTEL_BSP_SCHEDULE_DELAY": "250",
            "OTEL_BSP_MAX_QUEUE_SIZE": "lots",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "-1",
        },
    )
    try:
        assert batcher.schedule_delay == 0.25
        assert batcher.max_queue_size == DEFAULT_MAX_QUEUE_SIZE
        assert batcher.max_export_batch_size == 512
    finally:
        batcher.shutdown()
