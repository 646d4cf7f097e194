"""Spans leave the process over real OTLP, http/protobuf or gRPC, to a receiver in the
test that decodes them."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client as NATS
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)

from infra.nats_server import EmbeddedNatsServer
from tests.conftest import eventually, request
from tests.integration.test_processes import env_for, ordermesh, ready
from tests.integration.test_saga import create_product

TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4731"


class Spans:
    """Every decoded export request a receiver got."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    def spans(self) -> list[tuple[str, str, str]]:
        """(service.name, span name, trace id hex) of everything received."""
        found = []
        for req in list(self.requests):
            for rs in req.resource_spans:
                service = next(
                    a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                )
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        found.append((service, span.name, span.trace_id.hex()))
        return found


class Receiver(Spans):
    """A minimal OTLP/HTTP collector: keeps every decoded export request."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                decoded = ExportTraceServiceRequest()
                decoded.ParseFromString(body)
                receiver.requests.append(decoded)
                receiver.paths.append(self.path)
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


class GrpcReceiver(Spans, TraceServiceServicer):
    """A minimal OTLP/gRPC collector (grpcio's server and the OTLP service definition)."""

    def __init__(self) -> None:
        super().__init__()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        self.requests.append(request)
        return ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def exporting(
    tmp_path: Path, server: EmbeddedNatsServer, port: int, protocol: str
) -> dict[str, str]:
    """The environment of a process that exports every span to ``port`` in 50 ms batches."""
    return env_for(
        tmp_path / "data",
        ORDERMESH_NATS_URL=server.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_TRACES_SAMPLER="always_on",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )


async def test_a_service_exports_its_spans_under_its_own_name(
    receiver: Receiver, nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    env = exporting(tmp_path, nats_server, receiver.port, "http/protobuf")
    async with ordermesh("run", "command", env=env):

        async def serving() -> bool:
            return await ready(nc, "commands.product.change_price", {})

        await eventually(serving, timeout=30)
        reply = await request(
            nc,
            "commands.product.create",
            {"product_id": "p-1", "name": "W", "price": "1.00"},
            headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
        )
        assert reply["ok"], reply

        async def exported() -> bool:
            return ("ordermesh-command", "product.create process", TRACE_ID) in receiver.spans()

        await eventually(exported, timeout=20)
    ours = [s for s in receiver.spans() if s[2] == TRACE_ID]
    assert {name for _service, name, _trace in ours} == {
        "product.create process",
        "eventstore.append",
    }
    assert set(receiver.paths) == {"/v1/traces"}
    assert set(receiver.content_types) == {"application/x-protobuf"}


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    r = GrpcReceiver()
    r.server.start()
    try:
        yield r
    finally:
        r.server.stop(grace=None)


#: The spans of one placed order whose saga runs to the end, by name (several of some).
ORDER_SPANS = {
    "order.place process",
    "eventstore.append",
    "order.placed publish",
    "order.placed process",
    "order_fulfillment.start",
    "order_fulfillment.reserve_inventory",
    "inventory.reserve send",
    "inventory.reserve process",
    "order_fulfillment.process_payment",
    "payment.process process",
    "order_fulfillment.arrange_shipping",
    "shipment.arrange process",
    "order_fulfillment.confirm_order",
    "order.confirm process",
    "order.confirmed publish",
    "order_fulfillment.completed publish",
}


async def test_one_order_is_exported_over_grpc(
    grpc_receiver: GrpcReceiver, nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` sends every span of a placed order, from every
    service, over OTLP/gRPC to the port given (an ``http://`` endpoint: no TLS); the
    partners' spans (FastStream's middleware) under their own service names."""
    env = exporting(tmp_path, nats_server, grpc_receiver.port, "grpc")
    services = ("command", "relay", "projections", "query", "saga", "partners")
    async with ordermesh("run", *services, env=env):

        async def serving() -> bool:
            return await ready(nc, "commands.product.change_price", {})

        await eventually(serving, timeout=30)
        await create_product(nc, "p-1", 5)
        reply = await request(
            nc,
            "commands.order.place",
            {
                "order_id": "o-1",
                "customer_id": "c-1",
                "items": [{"product_id": "p-1", "quantity": 1}],
            },
            headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
        )
        assert reply["ok"], reply

        partner_spans = {"partners.payment.charge process", "partners.shipping.book process"}

        async def whole_order() -> set[str]:
            names = {name for _service, name, trace in grpc_receiver.spans() if trace == TRACE_ID}
            return names if names >= ORDER_SPANS | partner_spans else set()

        names = await eventually(whole_order, timeout=30)
    assert names >= ORDER_SPANS | partner_spans
    by_service = {(s, n) for s, n, trace in grpc_receiver.spans() if trace == TRACE_ID}
    # The core services in one process, as `ordermesh up` runs them; each partner apart.
    assert {s for s, _ in by_service} == {"ordermesh", "payment-gateway", "shipping-carrier"}
    assert ("payment-gateway", "partners.payment.charge process") in by_service
    assert ("shipping-carrier", "partners.shipping.book process") in by_service
