"""The monitor as a process of its own beside ``ordermesh up``.

The monitor receives a copy of every message the services exchange. Decoded on the
services' own event loop, those copies cost a quarter of the command throughput
(``ordermesh bench``: 0.73 of the monitor off); in a process of its own, its cost is a
share of the machine's other core. So ``ordermesh up`` starts ``ordermesh run api`` as a
child (:mod:`ordermesh.child`) and waits until its page answers.
"""

from __future__ import annotations

from infra.nats_server import free_port
from ordermesh.child import STOP_WITH_STDIN, ChildService

__all__ = ["STOP_WITH_STDIN", "MonitorProcess"]


class MonitorProcess(ChildService):
    def __init__(
        self,
        nats_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 4000,
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        self.nats_url = nats_url
        self.host = host
        self.port = port or free_port()
        self.metrics_port = metrics_port
        super().__init__(
            ("api",),
            self.url,
            {
                "ORDERMESH_NATS_URL": nats_url,
                "ORDERMESH_API_HOST": host,
                "ORDERMESH_API_PORT": str(self.port),
                "ORDERMESH_METRICS_PORT": str(metrics_port),
                "ORDERMESH_METRICS_HOST": metrics_host,
            },
        )
        if metrics_port:
            self.metrics_url = f"http://{metrics_host}:{metrics_port}/metrics"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"
