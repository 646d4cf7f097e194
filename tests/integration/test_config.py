"""Configuration by environment: which NATS server, which store, where the data lives."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from ordermesh.config import Settings
from tests.conftest import request


async def test_up_uses_the_given_nats_server_instead_of_embedding_one(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    app = App(Settings(nats_url=nats_server.url, data_dir=data, metrics_port=0), embedded_nats=True)
    await app.start()
    try:
        assert app.nats_server is None
        assert app.nats_url == nats_server.url
        assert (await request(nc, "queries.product.list", {}))["ok"]
    finally:
        await app.stop()
    assert not (data / "nats").exists()


async def test_eventstore_url_chooses_the_store_file(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    store_file = tmp_path / "elsewhere" / "custom.db"
    settings = Settings(
        nats_url=nats_server.url,
        data_dir=tmp_path / "data",
        eventstore_url=f"sqlite:///{store_file}?synchronous=full",
        metrics_port=0,
    )
    app = App(settings, ("command",))
    await app.start()
    try:
        body = {"product_id": "p-1", "name": "W", "price": "1.00", "stock": 1}
        assert (await request(nc, "commands.product.create", body))["ok"]
    finally:
        await app.stop()
    assert store_file.exists()
    assert not (tmp_path / "data" / "events.db").exists()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERMESH_NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("ORDERMESH_DATA_DIR", "/tmp/somewhere")
    monkeypatch.setenv("ORDERMESH_MAX_PAYLOAD_BYTES", "1024")
    s = Settings()
    assert (s.nats_url, s.data_dir, s.max_payload_bytes) == (
        "nats://127.0.0.1:1",
        Path("/tmp/somewhere"),
        1024,
    )
    assert s.event_store_url == "sqlite:////tmp/somewhere/events.db"


async def test_unknown_event_store_scheme_is_refused(tmp_path: Path) -> None:
    from infra.eventstore import open_event_store

    with pytest.raises(ValueError, match="unsupported event store URL"):
        await open_event_store("postgres://x")
