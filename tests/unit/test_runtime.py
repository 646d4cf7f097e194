"""The collector tuning every ordermesh process applies once its services are up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ordermesh import runtime


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_the_start_up_heap_and_widens_the_young_generation() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    runtime.tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (runtime.GC_YOUNG_THRESHOLD, middle, old)
    # Still a collector: a cycle made after start-up is freed.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
