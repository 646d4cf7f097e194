"""Tracing is configured by the standard OTEL_* variables and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased

from telemetry import tracing


@pytest.fixture(autouse=True)
def reset() -> Iterator[None]:
    yield
    tracing.shutdown_tracing()


def test_no_endpoint_means_no_tracing_at_all() -> None:
    assert tracing.configure_tracing("ordermesh-command", environ={}) is None
    assert not tracing.enabled()
    with tracing.span("x process") as span:
        assert not span.is_recording()


def test_an_endpoint_turns_on_batch_export_under_the_services_name() -> None:
    provider = tracing.configure_tracing(
        "ordermesh-command",
        environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
    )
    assert provider is not None and tracing.enabled()
    assert provider.resource.attributes[SERVICE_NAME] == "ordermesh-command"
    processors = provider._active_span_processor._span_processors
    assert [type(p).__name__ for p in processors] == ["SpanBatcher"]


def test_sdk_disabled_and_exporter_none_turn_it_off() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing.configure_tracing("s", environ=endpoint | {"OTEL_SDK_DISABLED": "true"}) is None
    assert (
        tracing.configure_tracing("s", environ=endpoint | {"OTEL_TRACES_EXPORTER": "none"}) is None
    )


def test_otel_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-east")
    provider = tracing.configure_tracing(
        "ordermesh-command",
        environ={"OTEL_SERVICE_NAME": "orders-east", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
    )
    assert provider is not None
    assert provider.resource.attributes[SERVICE_NAME] == "orders-east"


def test_the_sampler_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    exporter = InMemorySpanExporter()
    provider = tracing.configure_tracing("s", processors=[SimpleSpanProcessor(exporter)])
    assert provider is not None
    assert isinstance(provider.sampler, ParentBased)
    with tracing.span("x process") as span:
        assert not span.is_recording()
    assert exporter.get_finished_spans() == ()


def test_traceparent_round_trip_and_garbage() -> None:
    tracing.configure_tracing("s", processors=[SimpleSpanProcessor(InMemorySpanExporter())])
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with tracing.span("child", traceparent=parent, tracestate="k=v") as span:
        child = tracing.traceparent_of(span)
        assert child is not None
        assert child.split("-")[1] == parent.split("-")[1]
        assert child.split("-")[2] != parent.split("-")[2]
        assert span.get_span_context().trace_state.get("k") == "v"
        # The lean span's own, formatted once, is what the API's span context says.
        sc = span.get_span_context()
        assert child == f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
        assert tracing.traceparent_of(span) is child
        assert tracing.trace_id_of(span) == f"{sc.trace_id:032x}"
    assert tracing.trace_id_of(span) is None  # ended: no exemplar from it
    for bad in (
        "",
        "garbage",
        "00-xyz-00f067aa0ba902b7-01",
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
    ):
        assert tracing.span_context_of(bad) is None


@pytest.mark.parametrize(
    ("sampler", "parent_flags", "recorded"),
    [
        ("parentbased_always_on", None, True),
        ("parentbased_always_on", "01", True),
        ("parentbased_always_on", "00", False),
        ("always_on", "00", True),
        ("traceidratio", None, True),  # through the SDK's sampler: ratio 1.0
        ("always_off", None, False),
    ],
)
def test_sampling_follows_the_sampler_and_the_parent(
    monkeypatch: pytest.MonkeyPatch, sampler: str, parent_flags: str | None, recorded: bool
) -> None:
    exporter = InMemorySpanExporter()
    tracing.configure_tracing(
        "s", processors=[SimpleSpanProcessor(exporter)], environ={"OTEL_TRACES_SAMPLER": sampler}
    )
    parent = None
    if parent_flags is not None:
        parent = f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{parent_flags}"
    with tracing.span("x process", traceparent=parent) as span:
        assert span.is_recording() is recorded
        child = tracing.traceparent_of(span)
    assert len(exporter.get_finished_spans()) == (1 if recorded else 0)
    if parent is not None:
        assert child is not None and child.split("-")[1] == parent.split("-")[1]
        assert child.endswith("-01" if recorded else "-00")


def test_a_span_context_built_without_checks_equals_the_checked_one() -> None:
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    tracing.configure_tracing(
        "s",
        processors=[SimpleSpanProcessor(InMemorySpanExporter())],
        environ={"OTEL_TRACES_SAMPLER": "always_on"},
    )
    for tracestate in (None, "k=v"):
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        for traceparent in (parent, None):
            with tracing.span("x", traceparent=traceparent, tracestate=tracestate) as span:
                fast = span.get_span_context()
            state = TraceState([("k", "v")]) if tracestate and traceparent else None
            checked = SpanContext(fast.trace_id, fast.span_id, False, TraceFlags(1), state)
            assert fast == checked and type(fast) is SpanContext
            assert (fast.is_remote, fast.is_valid) == (False, True)
            assert fast.trace_state == checked.trace_state


def test_a_child_names_its_own_span_in_its_parents_trace() -> None:
    from opentelemetry.trace import SpanKind

    tracing.configure_tracing("s", processors=[SimpleSpanProcessor(InMemorySpanExporter())])
    with tracing.span("parent") as parent:
        parent_traceparent = tracing.traceparent_of(parent)
        with tracing.leaf("child", kind=SpanKind.CLIENT) as child:
            child_traceparent = tracing.traceparent_of(child)
            sc = child.get_span_context()
    assert parent_traceparent is not None
    assert child_traceparent == f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01"
    assert child_traceparent[3:35] == parent_traceparent[3:35]
    assert child_traceparent[36:52] != parent_traceparent[36:52]


@pytest.mark.parametrize(
    ("environ", "module"),
    [
        ({}, "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "opentelemetry.exporter.otlp.proto.grpc"),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": " GRPC "},
            "opentelemetry.exporter.otlp.proto.grpc",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "opentelemetry.exporter.otlp.proto.http"),
    ],
)
def test_the_protocol_picks_the_exporter(environ: dict[str, str], module: str) -> None:
    """The traces' own variable wins over the general one; http/protobuf is the default
    and what an unsupported protocol falls back to."""
    exporter = tracing.otlp_exporter(environ)
    try:
        assert type(exporter).__module__.startswith(module)
    finally:
        exporter.shutdown()
