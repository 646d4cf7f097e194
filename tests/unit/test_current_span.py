"""The current span, set and read past OpenTelemetry's API layers, as the API sees it."""

from __future__ import annotations

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from telemetry import current_span


def _span(n: int) -> trace.Span:
    return NonRecordingSpan(SpanContext(n, n, False, TraceFlags(1)))


def test_the_fast_path_runs_with_this_opentelemetry() -> None:
    # If this fails, OpenTelemetry moved its context variable: everything still works
    # through the API, slower. Look at the new release and update current_span.
    assert current_span.CURRENT is not None


@pytest.fixture(params=["variable", "api"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "api":
        monkeypatch.setattr(current_span, "CURRENT", None)
    return str(request.param)


def test_made_current_is_what_the_api_sees_and_restore_undoes_it(path: str) -> None:
    outer, inner = _span(1), _span(2)
    assert current_span.current_span_or_none() is None
    token = current_span.make_current(outer)
    assert trace.get_current_span() is outer
    assert current_span.current_span_or_none() is outer
    nested = current_span.make_current(inner)
    assert trace.get_current_span() is inner
    current_span.restore(nested)
    assert trace.get_current_span() is outer
    current_span.restore(token)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert current_span.current_span_or_none() is None


def test_other_context_values_are_kept(path: str) -> None:
    key = otel_context.create_key("ordermesh-test")
    token = otel_context.attach(otel_context.set_value(key, "kept"))
    try:
        span_token = current_span.make_current(_span(3))
        assert otel_context.get_value(key) == "kept"
        # The API's own change on top of ours sees our span and the value.
        api_token = otel_context.attach(otel_context.set_value("other", 1))
        assert trace.get_current_span() is not trace.INVALID_SPAN
        otel_context.detach(api_token)
        current_span.restore(span_token)
        assert otel_context.get_value(key) == "kept"
    finally:
        otel_context.detach(token)
