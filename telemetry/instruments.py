"""Counters and histograms for the message path: plain numbers, exposed by a collector.

prometheus-client guards every value with a lock and checks each call: an increment
cost about 0.9 µs here and a histogram observation 1.7 µs, and a command makes four or
five of them, some 4 % of a command at 64 in flight (more with exemplars). These are
updated only from event-loop code (one thread per process), so a slotted attribute
and a list entry do; a scrape, in the metrics server's thread, copies them under the
GIL. Exposition stays prometheus-client's: each instrument is a collector in its
registry and yields the same families, samples (``_total``, ``_bucket``, ``_count``,
``_sum``, ``_created``) and exemplars a ``Counter`` or ``Histogram`` of the same name
would.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

_INF = float("inf")


class CounterSeries:
    """One labelled series of a :class:`LoopCounter`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    """One labelled series of a :class:`LoopHistogram`: a count per bucket (not
    cumulative: one increment per observation), the sum, and the latest exemplar of each
    bucket."""

    __slots__ = ("_bounds", "counts", "created", "exemplars", "last_exemplar", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.exemplars: list[Exemplar | None] = [None] * len(bounds)
        self.sum = 0.0
        self.created = time.time()
        #: When this series last took an exemplar (monotonic; the caller throttles).
        self.last_exemplar = 0.0

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        # ``le`` buckets: the first bound not below the amount.
        i = bisect_left(self._bounds, amount)
        self.counts[i] += 1
        self.sum += amount
        if exemplar is not None:
            self.exemplars[i] = Exemplar(exemplar, amount, time.time())


S = TypeVar("S", "CounterSeries", "HistogramSeries")


class _Instrument(Collector, Generic[S]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], S] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> S:
        """The series of these label values, made on first use."""
        found = self._series.get(values)
        if found is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            found = self._series[values] = self._new_series()
        return found

    def _new_series(self) -> S:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        """What the registry checks for duplicate names: the family, without samples."""
        yield self._family()

    def _family(self) -> Metric:
        raise NotImplementedError


class LoopCounter(_Instrument[CounterSeries]):
    """A labelled counter, for code running on the event loop."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> CounterSeries:
        return CounterSeries()

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in list(self._series.items()):
            family.add_metric(values, series.value, created=series.created)
        yield family


class LoopHistogram(_Instrument[HistogramSeries]):
    """A labelled histogram, for code running on the event loop."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        self._bounds = bounds if bounds[-1] == _INF else (*bounds, _INF)
        self._le = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, series in list(self._series.items()):
            counts, exemplars, total = list(series.counts), list(series.exemplars), series.sum
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
            cumulative = 0
            for le, count, exemplar in zip(self._le, counts, exemplars, strict=True):
                cumulative += count
                buckets.append((le, cumulative) if exemplar is None else (le, cumulative, exemplar))
            family.add_metric(values, buckets, total)
            labels = dict(zip(self.labelnames, values, strict=True))
            family.samples.append(Sample(f"{self.name}_created", labels, series.created))
        yield family


class CallbackGauge(Collector):
    """An unlabelled gauge read from ``read`` when scraped, and absent until something
    in this process gives it a ``read``, or while ``read`` returns None: a process that
    runs no relay exports no relay position, rather than a 0 that ``min()`` or a
    difference would take for a reading."""

    def __init__(
        self, name: str, documentation: str, registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.read: Callable[[], float | None] | None = None
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation)
        value = self.read() if self.read is not None else None
        if value is not None:
            family.add_metric([], value)
        yield family


class LoopTotal(LoopCounter):
    """A counter exposed as an untyped ``<name>`` family whose one sample is ``<name>``
    itself: for a count whose name ends in ``_total`` beside a gauge of the bare name
    (``ordermesh_websocket_connections`` and ``…_connections_total``), which a counter
    family of that name would clash with in OpenMetrics. PromQL's ``rate()`` and
    ``increase()`` read it as they read any counter."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"{name}: a LoopTotal's name ends in _total")
        super().__init__(name, documentation, labelnames, registry)

    def _family(self) -> Metric:
        return Metric(self.name, self.documentation, "unknown")

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, series in list(self._series.items()):
            family.add_sample(
                self.name, dict(zip(self.labelnames, values, strict=True)), series.value
            )
        yield family
