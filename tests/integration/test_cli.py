"""The CLI as users run it: ``ordermesh tap``, ``publish`` and ``request`` as
subprocesses against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.connection import connect
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from tests.conftest import events_in_stream, eventually, request
from tests.integration.test_processes import ORDERMESH, env_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def cli_env(server: EmbeddedNatsServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    return env_for(tmp_path / "data", ORDERMESH_NATS_URL=server.url, **extra)


async def run_cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        ORDERMESH,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def tapping(*args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A running ``ordermesh tap``, handed over once it says it is subscribed."""
    proc = await asyncio.create_subprocess_exec(
        ORDERMESH,
        "tap",
        "--no-color",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            line = (await proc.stderr.readline()).decode()
        assert "tapping" in line or "replaying" in line, line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, list[str]]:
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        out = await proc.stdout.read()
        code = await proc.wait()
    return code, [line for line in out.decode().splitlines() if line]


def ce(msg_type: str, *, correlation: str = "corr-1", subject: str | None = None) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"id-{msg_type}-{correlation}",
        "ce-type": msg_type,
        "ce-source": "test",
        "ce-correlationid": correlation,
        "traceparent": TRACEPARENT,
    }
    if subject:
        headers["ce-subject"] = subject
    return headers


# -- tap ----------------------------------------------------------------------------------


async def test_tap_json_prints_exactly_count_messages_with_decoded_headers(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    env = cli_env(nats_server, tmp_path)
    async with tapping("--json", "--count", "5", "demo.>", env=env) as proc:
        for i in range(8):
            body = json.dumps({"order_id": f"o-{i}", "n": i}).encode()
            await nc.publish(f"demo.thing.{i}", body, headers=ce("order.noted", subject=f"o-{i}"))
        await nc.flush()
        code, lines = await finish(proc)
    assert code == 0
    assert len(lines) == 5
    for i, line in enumerate(lines):
        doc = json.loads(line)
        assert doc["subject"] == f"demo.thing.{i}"
        assert doc["type"] == "order.noted"
        assert doc["headers"]["ce-correlationid"] == "corr-1"
        assert doc["headers"]["traceparent"] == TRACEPARENT
        assert doc["body"] == {"order_id": f"o-{i}", "n": i}
        assert doc["received"]


async def test_tap_filters_by_type_correlation_trace_and_excluded_subject(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    env = cli_env(nats_server, tmp_path)
    args = ("--json", "--count", "2", "--type", "order.*", "--correlation", "c-7")
    async with tapping(*args, "--exclude", "demo.skip.>", "demo.>", env=env) as proc:
        sends = [
            ("demo.a", "product.created", "c-7"),  # wrong type
            ("demo.b", "order.placed", "c-8"),  # wrong correlation
            ("demo.skip.c", "order.placed", "c-7"),  # excluded subject
            ("demo.d", "order.placed", "c-7"),  # shown
            ("demo.e", "order.cancelled", "c-7"),  # shown
            ("demo.f", "order.placed", "c-7"),  # after the count
        ]
        for subject, msg_type, corr in sends:
            await nc.publish(subject, b"{}", headers=ce(msg_type, correlation=corr))
        await nc.flush()
        code, lines = await finish(proc)
    assert code == 0
    assert [json.loads(line)["subject"] for line in lines] == ["demo.d", "demo.e"]

    async with tapping("--json", "--count", "1", "--trace", TRACE_ID[:8], "demo.>", env=env) as p:
        await nc.publish("demo.untraced", b"{}", headers={"ce-type": "x.y"})
        await nc.publish("demo.traced", b"{}", headers=ce("x.y"))
        await nc.flush()
        code, lines = await finish(p)
    assert code == 0 and [json.loads(line)["subject"] for line in lines] == ["demo.traced"]


async def test_foreign_and_binary_messages_are_shown_raw_and_do_not_end_the_tap(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    env = cli_env(nats_server, tmp_path)
    async with tapping("--count", "3", "raw.>", env=env) as proc:
        await nc.publish("raw.binary", b"\x00\xff\xfe binary")
        await nc.publish("raw.text", b"plain words, not json")
        await nc.publish("raw.json", b'{"ok": true}', headers=ce("x.done"))
        await nc.flush()
        code, lines = await finish(proc)
    assert code == 0
    assert len(lines) == 3
    assert "raw.binary" in lines[0] and "base64:" in lines[0]
    assert "raw.text" in lines[1] and "plain words, not json" in lines[1]
    assert "raw.json" in lines[2] and "x.done" in lines[2] and "ok=true" in lines[2]


async def test_tap_matches_replies_to_their_requests(
    app: App, nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    env = cli_env(nats_server, tmp_path)
    async with tapping("--json", "--count", "2", "--type", "product.create*", env=env) as proc:
        body = {"product_id": "p-1", "name": "W", "price": "1.00"}
        reply = await request(nc, "commands.product.create", body, headers=ce("product.create"))
        assert reply["ok"]
        code, lines = await finish(proc)
    assert code == 0
    sent, answered = (json.loads(line) for line in lines)
    assert sent["kind"] == "command" and sent["subject"] == "commands.product.create"
    assert answered["kind"] == "reply" and answered["type"] == "product.create reply"
    assert answered["request_subject"] == "commands.product.create"
    assert answered["body"]["ok"] is True and answered["latency_ms"] >= 0


async def test_replay_last_returns_the_stored_events_in_order(
    app: App, nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    for i in range(4):
        body = {"product_id": f"p-{i}", "name": "W", "price": "1.00"}
        assert (await request(nc, "commands.product.create", body))["ok"]
    js = nc.jetstream()

    async def stored() -> bool:
        return int((await js.stream_info("EVENTS")).state.messages) >= 4

    await eventually(stored)  # the relay publishes asynchronously
    env = cli_env(nats_server, tmp_path)
    code, out, err = await run_cli(
        "tap", "--replay", "--last", "3", "--no-follow", "--json", env=env
    )
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["sequence"] for d in docs] == [2, 3, 4]
    assert [d["body"]["product_id"] for d in docs] == ["p-1", "p-2", "p-3"]
    assert all(d["headers"]["ce-type"] == "product.created" for d in docs)

    code, out, err = await run_cli(
        "tap", "--replay", "--from-seq", "4", "--no-follow", "--count", "5", "--json", env=env
    )
    assert code == 0, err  # --no-follow: the end of the stream ends the tap
    assert [json.loads(line)["sequence"] for line in out.splitlines()] == [4]

    code, out, err = await run_cli(
        "tap", "--replay", "--from-seq", "4", "--count", "5", "--timeout", "0.5", env=env
    )
    assert code == 1  # following: the timeout came before the count
    assert "stopped after 1 of 5" in err


# -- publish and request --------------------------------------------------------------------


async def test_request_round_trips_and_exit_codes_follow_the_reply(
    app: App, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    env = cli_env(nats_server, tmp_path, ORDERMESH_JAEGER_URL="http://jaeger.local:16686/")
    widget = json.dumps({"product_id": "p-1", "name": "Widget", "price": "12.50", "stock": 10})
    code, out, err = await run_cli("request", "commands.product.create", widget, env=env)
    assert code == 0, err
    assert '"ok": true' in out and '"Widget"' in out
    trace_line = next(line for line in err.splitlines() if "trace" in line)
    trace_id = trace_line.split("trace")[1].split()[0]
    assert len(trace_id) == 32
    assert f"http://jaeger.local:16686/trace/{trace_id}" in err

    order = json.dumps({"customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": 2}]})
    code, out, err = await run_cli(
        "request",
        "commands.order.place",
        order,
        "--json",
        "--traceparent",
        TRACEPARENT,
        env=env,
    )
    assert code == 0, err
    reply = json.loads(out)
    assert reply["ok"] and reply["data"]["total"] == "25.00"
    assert app.store is not None
    [placed] = await app.store.read_stream(f"order-{reply['data']['order_id']}")
    meta = json.loads(placed.metadata)
    assert meta["traceparent"].split("-")[1] == TRACE_ID  # the CLI joined our trace
    assert meta["source"] != "cli" and meta["correlation_id"]

    bad = json.dumps({"customer_id": "c-1", "items": []})
    code, out, err = await run_cli("request", "commands.order.place", bad, env=env)
    assert code == 1
    assert "validation_error" in err and "items" in err

    code, out, err = await run_cli("request", "commands.order.place", "{not json", env=env)
    assert code == 2 and "not JSON" in err


async def test_request_exit_code_when_nobody_answers(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    env = cli_env(nats_server, tmp_path)
    code, _out, err = await run_cli("request", "nobody.here", "{}", env=env)
    assert code == 3 and "nobody serves" in err

    silent = await nc.subscribe("slow.service", cb=None)
    await nc.flush()
    code, _out, err = await run_cli("request", "slow.service", "{}", "--timeout", "0.3", env=env)
    assert code == 3 and "no reply" in err
    await silent.unsubscribe()


async def test_publish_builds_a_cloudevent_with_extra_headers_and_the_given_trace(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    received: list[Msg] = []
    got = asyncio.Event()

    async def collect(msg: Msg) -> None:
        received.append(msg)
        got.set()

    await nc.subscribe("demo.note", cb=collect)
    await nc.flush()
    env = cli_env(nats_server, tmp_path)
    body_file = tmp_path / "note.json"
    body_file.write_text(json.dumps({"order_id": "o-5", "text": "hello"}))
    code, out, err = await run_cli(
        "publish",
        "demo.note",
        f"@{body_file}",
        "-H",
        "X-Origin:laptop",
        "--traceparent",
        TRACEPARENT,
        "--correlation",
        "corr-cli",
        "--json",
        env=env,
    )
    assert code == 0, err
    printed = json.loads(out)
    async with asyncio.timeout(10):
        await got.wait()
    [msg] = received
    headers: dict[str, Any] = dict(msg.headers or {})
    assert json.loads(msg.data) == {"order_id": "o-5", "text": "hello"}
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == printed["id"]
    assert headers["ce-type"] == "demo.note"
    assert headers["ce-source"] == "cli"
    assert headers["ce-subject"] == "o-5"
    assert headers["ce-correlationid"] == "corr-cli" == printed["correlation_id"]
    assert headers["X-Origin"] == "laptop"
    assert headers["traceparent"].split("-")[1] == TRACE_ID == printed["trace_id"]
    assert headers["traceparent"] != TRACEPARENT  # a span of its own in that trace

    code, _out, err = await run_cli("publish", "demo.note", "-", env=env, stdin=b'{"x": 1}')
    assert code == 0, err
    async with asyncio.timeout(10):
        while len(received) < 2:
            got.clear()
            await got.wait()
    assert json.loads(received[1].data) == {"x": 1}


COMMANDS = [
    ("up",),
    ("run",),
    ("tap",),
    ("publish",),
    ("request",),
    ("demo",),
    ("asyncapi",),
    ("bench",),
    ("projections", "rebuild"),
    ("projections", "status"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
async def test_help_of_every_command_shows_an_example(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    code, out, err = await run_cli(*command, "--help", env=env_for(tmp_path), timeout=30)
    assert code == 0, err
    assert "Example" in out, out
    assert f"ordermesh {' '.join(command)}" in " ".join(out.split()), out


async def test_tap_headers_body_and_stats(
    nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    env = cli_env(nats_server, tmp_path)
    async with tapping("--headers", "--body", "--count", "1", "demo.>", env=env) as proc:
        await nc.publish("demo.one", b'{"order_id": "o-1", "total": "9.50"}', headers=ce("x.y"))
        await nc.flush()
        code, lines = await finish(proc)
    assert code == 0
    text = "\n".join(lines)
    assert "ce-correlationid: corr-1" in text and f"traceparent: {TRACEPARENT}" in text
    assert '"total": "9.50"' in text  # the pretty body

    async with tapping("--stats", "--count", "6", "demo.>", env=env) as proc:
        for i in range(6):
            await nc.publish(f"demo.{'a' if i % 3 else 'b'}", b"{}")
        await nc.flush()
        assert proc.stderr is not None
        code = await proc.wait()
        table = (await proc.stderr.read()).decode()
    assert code == 0
    cells = [
        [cell.strip() for cell in line.split("│")[1:3]]
        for line in table.splitlines()
        if "│ demo." in line
    ]
    assert dict(cells) == {"demo.a": "4", "demo.b": "2"}


async def test_replay_since_and_of_dead_letters(
    app: App, nats_server: EmbeddedNatsServer, nc: NATS, tmp_path: Path
) -> None:
    body = {"product_id": "p-1", "name": "W", "price": "1.00"}
    assert (await request(nc, "commands.product.create", body))["ok"]

    async def relayed() -> bool:
        return await events_in_stream(nc) == 1

    await eventually(relayed)  # the relay publishes after the reply: order the two
    await nc.jetstream().publish("events.foreign.note", b"not ours")

    async def dead_lettered() -> bool:
        try:
            return bool((await nc.jetstream().stream_info("DLQ")).state.messages)
        except Exception:
            return False

    await eventually(dead_lettered)
    env = cli_env(nats_server, tmp_path)
    code, out, err = await run_cli("tap", "--since", "5m", "--no-follow", "--json", env=env)
    assert code == 0, err
    subjects = [json.loads(line)["subject"] for line in out.splitlines()]
    assert subjects == ["events.product.created", "events.foreign.note"]

    code, out, err = await run_cli(
        "tap", "--since", "5m", "--no-follow", "--json", "dlq.>", env=env
    )
    assert code == 0, err
    [dead] = [json.loads(line) for line in out.splitlines()]
    assert dead["subject"] == "dlq.events.foreign.note" and dead["kind"] == "dlq"
    assert dead["raw"] == "not ours"
    assert dead["headers"]["ordermesh-dlq-reason"].startswith("no ordermesh event headers")


async def test_credentials_reach_a_server_that_requires_them(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(
        tmp_path / "nats", extra_config='authorization { user: "ops", password: "local-only" }'
    )
    await server.start()
    try:
        env = env_for(tmp_path / "data", ORDERMESH_NATS_URL=server.url)
        code, _out, err = await run_cli(
            "tap", "--timeout", "0.2", "--user", "ops", "--password", "wrong", env=env
        )
        assert code == 2 and "Authorization Violation" in err
        assert "Traceback" not in err
        code, _out, err = await run_cli(
            "tap", "--timeout", "0.2", "--user", "ops", "--password", "local-only", env=env
        )
        assert code == 0, err
        code, _out, err = await run_cli(
            "request", "nobody.here", "{}", "--user", "ops", "--password", "local-only", env=env
        )
        assert code == 3 and "nobody serves" in err  # connected, and nobody answers
    finally:
        await server.stop()


async def test_tls_needs_the_servers_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_pem, server_key, ca_pem = tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(server_pem))
    cert.private_key_pem.write_to_path(str(server_key))
    ca.cert_pem.write_to_path(str(ca_pem))
    server = EmbeddedNatsServer(
        tmp_path / "nats",
        extra_config=f'tls {{ cert_file: "{server_pem}"\n key_file: "{server_key}" }}',
    )
    await server.start()
    try:
        env = env_for(tmp_path / "data", ORDERMESH_NATS_URL=server.url)
        code, _out, err = await run_cli("tap", "--timeout", "0.2", env=env)
        assert code == 2 and "cannot connect" in err and "Traceback" not in err
        code, _out, err = await run_cli("tap", "--timeout", "0.2", "--tlsca", str(ca_pem), env=env)
        assert code == 0, err
    finally:
        await server.stop()


async def test_tap_rides_out_a_server_restart(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats")
    await server.start()
    env = env_for(tmp_path / "data", ORDERMESH_NATS_URL=server.url)
    try:
        async with tapping("--json", "--count", "1", "after.>", env=env) as proc:
            assert proc.stderr is not None
            await server.stop()
            async with asyncio.timeout(20):
                line = (await proc.stderr.readline()).decode()
            assert "disconnected" in line
            server = EmbeddedNatsServer(tmp_path / "nats", port=server.port)
            await server.start()
            async with asyncio.timeout(20):
                line = (await proc.stderr.readline()).decode()
            assert "reconnected" in line
            client = await connect(server.url)
            try:
                # The tap subscribes again as it reconnects; publish until it has seen one.
                for _ in range(50):
                    await client.publish("after.restart", b'{"n": 1}')
                    await client.flush()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await proc.wait()
                    if proc.returncode is not None:
                        break
            finally:
                await client.close()
            code, lines = await finish(proc)
        assert code == 0
        assert [json.loads(line)["subject"] for line in lines] == ["after.restart"]
    finally:
        await server.stop()
