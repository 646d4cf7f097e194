"""The loop instruments expose what prometheus-client's Counter and Histogram would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from telemetry.instruments import CallbackGauge, LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _exposed(registry: CollectorRegistry) -> list[str]:
    """OpenMetrics lines without the timestamps that differ between two registries."""
    lines = generate_latest(registry).decode().splitlines()
    return [line.split(" # ")[0] for line in lines if "_created" not in line]


def test_same_exposition_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counters = [
        LoopCounter("t_requests", "Requests", ["kind"], registry=ours),
        Counter("t_requests", "Requests", ["kind"], registry=theirs),
    ]
    histograms = [
        LoopHistogram("t_seconds", "Latency", ["kind"], BUCKETS, registry=ours),
        Histogram("t_seconds", "Latency", ["kind"], buckets=BUCKETS, registry=theirs),
    ]
    # On a bound, between bounds, below the first, above the last.
    amounts = [0.001, 0.005, 0.0001, 5.0, 1.0, 0.1]
    for counter in counters:
        counter.labels("a").inc()
        counter.labels("a").inc(2)
        counter.labels("b").inc()
    for histogram in histograms:
        for amount in amounts:
            histogram.labels("a").observe(amount)
    assert _exposed(ours) == _exposed(theirs)
    text = generate_latest(ours).decode()
    assert 't_seconds_bucket{kind="a",le="0.001"} 2.0' in text
    assert 't_seconds_bucket{kind="a",le="+Inf"} 6.0' in text
    assert 't_requests_created{kind="b"}' in text and 't_seconds_created{kind="a"}' in text


def test_an_exemplar_stays_with_its_bucket() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("t_seconds", "Latency", ["kind"], BUCKETS, registry=registry)
    histogram.labels("a").observe(0.05, {"trace_id": "ab" * 16})
    histogram.labels("a").observe(0.5)
    [family] = [f for f in registry.collect() if f.name == "t_seconds"]
    with_exemplar = [s for s in family.samples if s.exemplar is not None]
    assert [(s.labels["le"], s.exemplar.labels, s.exemplar.value) for s in with_exemplar] == [
        ("0.1", {"trace_id": "ab" * 16}, 0.05)
    ]
    assert registry.get_sample_value("t_seconds_count", {"kind": "a"}) == 2
    assert registry.get_sample_value("t_seconds_sum", {"kind": "a"}) == pytest.approx(0.55)


def test_wrong_label_count_and_duplicate_names_are_refused() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("t_requests", "Requests", ["kind", "code"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("t_requests", "Again", ["kind"], registry=registry)


def test_a_callback_gauge_is_absent_until_something_reads_into_it() -> None:
    registry = CollectorRegistry()
    gauge = CallbackGauge("t_position", "Position", registry=registry)
    assert registry.get_sample_value("t_position") is None
    position = [0]
    gauge.read = lambda: position[0] or None
    assert registry.get_sample_value("t_position") is None  # None: nothing to say yet
    position[0] = 42
    assert registry.get_sample_value("t_position") == 42
    assert "# TYPE t_position gauge" in generate_latest(registry).decode()
