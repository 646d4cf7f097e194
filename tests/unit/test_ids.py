"""Ids are random version-4 UUIDs, written in the canonical form every client parses."""

from __future__ import annotations

import uuid

from domain.ids import new_id, new_uuid


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
