"""The generators themselves: every published subject is fuzzed, and "valid" means valid.

No server here: these hold the fuzzing honest. A subject in the contract that the suite
does not fuzz, or a model whose schema the body generator gets wrong, fails here rather
than quietly shrinking what the fuzzing covers.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from broker.asyncapi import asyncapi_document
from tests.fuzz.rig import SUBJECTS
from tests.fuzz.strategies import dumps, valid_bodies


def test_every_request_subject_of_the_contract_is_fuzzed() -> None:
    operations: dict[str, Any] = asyncapi_document()["operations"]
    request_reply = {subject for subject, op in operations.items() if "reply" in op}
    assert request_reply == set(SUBJECTS)


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
@given(data=st.data())
def test_valid_bodies_are_valid(subject: str, data: st.DataObject) -> None:
    """Only the checks a schema cannot express (money's range and places, in a Python
    validator) may refuse a generated body; a type, pattern or length error means the
    generator misread the schema."""
    model = SUBJECTS[subject]
    body = data.draw(valid_bodies(model))
    try:
        model.model_validate_json(dumps(body))
    except ValidationError as exc:
        assert {e["type"] for e in exc.errors()} == {"value_error"}, exc
