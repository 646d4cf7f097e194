"""Hostile requests on every command and query subject, over a real nats-server.

Each subject gets generated bodies (random bytes, JSON of the wrong shape, deep nesting,
numbers past every limit, invalid UTF-8, oversized, valid ones with one field broken,
valid ones) and generated headers (malformed ``traceparent``/``tracestate``, ``ce-id``
that is no UUID, empty or huge, odd ``ce-type``/``ce-time``, headers nobody asked for).
Every request must get the contract's reply in time, refusals must write nothing, and
the services must still serve afterwards (``rig`` says what is checked). The module runs
twice: with tracing off and on (``conftest.exporter``).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from broker.cloudevents import H_ID
from tests.fuzz.rig import (
    COMMANDS,
    SUBJECTS,
    CountingExporter,
    Rig,
    exchange,
    still_serving,
    unanswered_by_design,
)
from tests.fuzz.strategies import (
    as_received,
    dumps,
    hostile_bodies,
    hostile_headers,
    near_valid_bodies,
    valid_bodies,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
@given(data=st.data())
async def test_hostile_bodies(rig: Rig, subject: str, data: st.DataObject) -> None:
    model = SUBJECTS[subject]
    payload = data.draw(hostile_bodies(model, rig.limit, rig.room), label="body")
    assume(not unanswered_by_design(model, payload))
    await exchange(rig, "bodies", subject, payload)


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
@given(data=st.data())
async def test_hostile_headers(rig: Rig, subject: str, data: st.DataObject) -> None:
    model = SUBJECTS[subject]
    # Mostly bodies that reach the handler, so the headers' effects reach the store.
    body = data.draw(st.one_of(valid_bodies(model).map(dumps), near_valid_bodies(model)))
    headers = data.draw(hostile_headers(), label="headers")
    assume(not unanswered_by_design(model, body))
    command_id = as_received(headers[H_ID]) if H_ID in headers else None
    await exchange(rig, "headers", subject, body, headers, command_id=command_id or None)


_segment = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters=".*>"),
    min_size=1,
    max_size=12,
)


@given(
    prefix=st.sampled_from(["commands.", "queries."]),
    tokens=st.lists(_segment, min_size=1, max_size=4),
    data=st.data(),
)
async def test_unknown_subjects(
    rig: Rig, prefix: str, tokens: list[str], data: st.DataObject
) -> None:
    subject = prefix + ".".join(tokens)
    assume(subject not in SUBJECTS)
    model = next(iter(COMMANDS.values()))  # any model: these bodies only need variety
    payload = data.draw(hostile_bodies(model, rig.limit, rig.room), label="body")
    headers = data.draw(st.none() | hostile_headers(), label="headers")
    await exchange(rig, "unknown subjects", subject, payload, headers)


#: Query subjects whose model pages with ``offset``, from the registry.
PAGED = sorted(s for s, model in SUBJECTS.items() if "offset" in model.model_fields)


@pytest.mark.parametrize("subject", PAGED)
async def test_offset_past_sqlite_integers_is_refused(rig: Rig, subject: str) -> None:
    """Found by the fuzzer: an offset past SQLite's 64-bit integers got ``internal_error``
    (an OverflowError in the read-model query), a fault code, for a client's mistake."""
    reply = await exchange(rig, "regressions", subject, b'{"offset": 9223372036854775808}')
    assert reply["error"]["code"] == "validation_error", reply
    last = await exchange(rig, "regressions", subject, b'{"offset": 9223372036854775807}')
    assert last["ok"] and last["data"]["items"] == [], last


async def test_reservation_whose_lines_add_up_past_the_line_limit(rig: Rig) -> None:
    """Found by the fuzzer: two valid lines of one product whose sum exceeds a line's
    maximum got ``internal_error`` (reservations merge lines per product); ``order.place``
    accepted such an order. Both are refused now, as a validation error."""
    line = {"product_id": "p-1", "quantity": 1_000_000}
    for subject, body in (
        ("commands.inventory.reserve", {"order_id": "o-merge", "items": [line, line]}),
        ("commands.order.place", {"customer_id": "c-1", "items": [line, line]}),
    ):
        reply = await exchange(rig, "regressions", subject, json.dumps(body).encode())
        assert reply["error"]["code"] == "validation_error", reply


async def test_still_serving_after_fuzzing(rig: Rig, exporter: CountingExporter | None) -> None:
    """Runs after the fuzzing above (pytest keeps a module's order within each
    parametrization of ``rig``)."""
    await still_serving(rig, "after-fuzzing")
    if exporter is not None:
        assert exporter.spans > 0, "the traced run recorded no span"
