"""Ended spans, batched to an exporter on a thread of its own.

The SDK's ``BatchSpanProcessor`` does this too, and asks ``os.getpid()`` for every span
to notice a fork it also hears of through ``os.register_at_fork``. A system call per
span is nothing alone; on a traced command at 64 in flight it was about 5 % of all the
samples in a profile, because a system call is where the kernel gives the core to
nats-server while our thread still holds the GIL. This processor hears of a fork only
through the at-fork hook. It reads the same ``OTEL_BSP_*`` settings, with the same
defaults, and hands its exporter the same lists of ``ReadableSpan``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Mapping

from loguru import logger
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

#: ``OTEL_BSP_*`` defaults, as the specification gives them.
DEFAULT_SCHEDULE_DELAY_MS = 5000
DEFAULT_MAX_QUEUE_SIZE = 2048
DEFAULT_MAX_EXPORT_BATCH_SIZE = 512


def _setting(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(environ.get(name, default))
    except ValueError:
        logger.warning("{} is not a number; using {}", name, default)
        return default
    if value <= 0:
        logger.warning("{} must be positive; using {}", name, default)
        return default
    return value


class SpanBatcher(SpanProcessor):
    """Queue sampled spans as they end; export them in batches every schedule delay, or
    as soon as a batch is full. A full queue drops the new span and counts it."""

    def __init__(self, exporter: SpanExporter, *, environ: Mapping[str, str] = os.environ) -> None:
        self._exporter = exporter
        self.schedule_delay = (
            _setting(environ, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS) / 1000
        )
        self.max_queue_size = _setting(environ, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE)
        self.max_export_batch_size = min(
            self.max_queue_size,
            _setting(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_MAX_EXPORT_BATCH_SIZE),
        )
        #: Spans dropped because the queue was full.
        self.dropped = 0
        self._queue: deque[ReadableSpan] = deque()
        self._shutdown = False
        self._start_worker()
        reinit = weakref.WeakMethod(self._start_worker)

        def after_fork() -> None:
            start = reinit()
            if start is not None:
                start()

        os.register_at_fork(after_in_child=after_fork)

    def _start_worker(self) -> None:
        """(Re)start the worker; in a forked child the parent's spans are not ours."""
        self._queue.clear()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="ordermesh-spans", daemon=True)
        self._worker.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        # ``trace_flags & 1`` is ``trace_flags.sampled`` without a property call per span.
        if self._shutdown or context is None or not context.trace_flags & 1:
            return
        queue = self._queue
        if len(queue) >= self.max_queue_size:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) >= self.max_export_batch_size and not self._wake.is_set():
            self._wake.set()

    def _work(self) -> None:
        while not self._shutdown:
            self._wake.wait(self.schedule_delay)
            self._wake.clear()
            self._export()
        self._export()

    def _export(self) -> None:
        """Everything queued, a batch at a time; the lock keeps a flush and the worker
        from exporting side by side."""
        with self._export_lock:
            queue = self._queue
            while queue:
                count = min(self.max_export_batch_size, len(queue))
                batch = [queue.popleft() for _ in range(count)]
                try:
                    self._exporter.export(batch)
                except Exception:
                    logger.exception("exporting {} spans failed", count)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._export()
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        self._worker.join()
        self._exporter.shutdown()
