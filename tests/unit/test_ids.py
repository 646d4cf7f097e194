"""Ids are version-4 (random) or version-7 (time-ordered, for events) UUIDs, written in
the canonical form every client parses."""

from __future__ import annotations

import time
import uuid

import pytest

from domain import ids
from domain.ids import new_event_id, new_id, new_uuid


def test_new_id_is_a_canonical_version_4_uuid() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:1000]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_new_uuid_is_version_4() -> None:
    u = new_uuid()
    assert u.version == 4 and u.variant == uuid.RFC_4122
    assert new_uuid() != u


def test_event_ids_are_canonical_version_7_in_creation_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "a later id must sort later"
    for text in ids[:: len(ids) // 500]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after + 1


def test_past_4096_ids_in_one_millisecond_the_clock_part_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen = (time.time_ns() // 1_000_000 + 10_000) * 1_000_000  # ahead of earlier ids
    monkeypatch.setattr(ids.time, "time_ns", lambda: frozen)
    for state in ("_last_ms", "_sequence", "_prefix"):  # later tests get the real clock back
        monkeypatch.setattr(ids, state, getattr(ids, state))
    made = [uuid.UUID(new_event_id()) for _ in range(4097 + 5)]
    assert made == sorted(made, key=lambda u: u.int)
    millis = [u.int >> 80 for u in made]
    counters = [(u.int >> 64) & 0xFFF for u in made]
    assert millis[0] == frozen // 1_000_000 and counters[:3] == [0, 1, 2]
    assert millis[4096] == millis[0] + 1 and counters[4096] == 0
