"""The container deployment as files: compose.yaml, the Dockerfile, .dockerignore, and
the NATS and OpenTelemetry Collector configuration that compose.yaml mounts.

No container engine runs here, so these tests check what can be checked without one:
docker-compose's own validation of the file, the contract between the files (service
names, ports, mounts, the URLs the services are given, Prometheus's targets), the
health checks (run against a local HTTP server), and nats.conf with the nats-server
binary the project already depends on. The collector's configuration is checked for
structure only: no otelcol binary is available here.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from infra.nats_server import nats_server_binary
from ordermesh.app import SERVICES as ORDERMESH_RUNNABLE
from tests.stack.tools import INFRA, ROOT, require_tool

COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NATS_CONF = INFRA / "nats" / "nats.conf"
COLLECTOR_CONFIG = INFRA / "otel-collector" / "config.yaml"
PROMETHEUS_CONFIG = INFRA / "prometheus" / "prometheus.yml"

#: compose service -> the services its `ordermesh run` starts (a contract: Prometheus's
#: `service` label and the dashboards use these names).
ORDERMESH = {
    "ordermesh-command": ("command",),
    "ordermesh-partners": ("partners",),
    "ordermesh-relay": ("relay",),
    "ordermesh-saga": ("saga",),
    "ordermesh-read": ("projections", "query"),
    "ordermesh-api": ("api",),
}
INFRASTRUCTURE = (
    "nats",
    "nats-exporter",
    "kurrentdb",
    "otel-collector",
    "jaeger",
    "prometheus",
    "grafana",
)
#: ordermesh containers that reach no event store (NATS only): they do not wait for it.
WITHOUT_EVENT_STORE = frozenset({"ordermesh-partners"})
#: Images with nothing inside to run a probe with (FROM scratch).
NO_HEALTHCHECK_POSSIBLE = {"otel-collector"}
METRICS_PORT = 9464


# --- reading the files -------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *anchor` merges the file uses.
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"compose.yaml has no service {name!r}"
    found = services[name]
    assert isinstance(found, dict)
    return found


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends_on(name: str) -> dict[str, str]:
    """Each dependency with its condition (a plain list means service_started)."""
    deps = service(name).get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {dep: (spec or {}).get("condition", "service_started") for dep, spec in deps.items()}


def command(name: str) -> list[str]:
    cmd = service(name).get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(part) for part in cmd]


def healthcheck_test(name: str) -> list[str] | None:
    check = service(name).get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check.get("test")
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    assert isinstance(test, list)
    return None if test == ["NONE"] else [str(part) for part in test]


def mounts(name: str) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume entry, short or long syntax."""
    found = []
    for entry in service(name).get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) == 1:  # an anonymous volume
                found.append(("", parts[0], False))
                continue
            mode = parts[2] if len(parts) > 2 else "rw"
            found.append((parts[0], parts[1], "ro" in mode.split(",")))
        else:
            found.append(
                (str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only")))
            )
    return found


def bind_mounts(name: str) -> list[tuple[str, str, bool]]:
    return [m for m in mounts(name) if m[0].startswith((".", "/", "~"))]


def published_ports(name: str) -> set[int]:
    published = set()
    for entry in service(name).get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                published.add(int(entry["published"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2:  # [ip:]published:target; a lone port is not published
            published.add(int(parts[-2]))
    return published


def container_ports(name: str) -> set[int]:
    """The ports the service listens on inside the network (ports' targets, expose)."""
    ports = set()
    for entry in service(name).get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].split(":")[-1]))
    for entry in service(name).get("expose") or []:
        ports.add(int(str(entry).split("/")[0]))
    return ports


def url_host_port(url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


@cache
def collector_config() -> dict[str, Any]:
    loaded = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    assert isinstance(loaded, dict)
    return loaded


def nats_conf_value(key: str) -> str | None:
    """A top-level or jetstream-block `key: value` of nats.conf (enough for this file)."""
    text = re.sub(r"#.*", "", NATS_CONF.read_text())
    found = re.search(rf"^\s*{re.escape(key)}\s*[:=]?\s*(\S+)\s*$", text, re.MULTILINE)
    return found.group(1).strip("\"'") if found else None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


# --- a stand-in for an ordermesh process's /readyz ------------------------------------


class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def readyz() -> Iterator[tuple[int, type[_Readyz]]]:
    handler = type("Handler", (_Readyz,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def run_probe(argv: list[str], port: int) -> int:
    """Run a health check's python command as the container would, on `port`."""
    assert argv[0] == "python", argv
    env = {"ORDERMESH_METRICS_PORT": str(port), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    return done.returncode


# --- compose.yaml ----------------------------------------------------------------------


def test_docker_compose_accepts_the_file() -> None:
    tool = require_tool("docker-compose")
    done = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_service_names_are_the_contract() -> None:
    names = set(compose()["services"])
    missing = (set(INFRASTRUCTURE) | set(ORDERMESH)) - names
    assert not missing, f"missing services: {sorted(missing)}"
    extra = {n for n in names if n.startswith("ordermesh")} - set(ORDERMESH)
    assert not extra, f"ordermesh containers outside the contract: {sorted(extra)}"


def test_every_ordermesh_service_runs_in_exactly_one_container() -> None:
    started: list[str] = []
    for name, services in ORDERMESH.items():
        assert command(name) == ["run", *services], name
        started += services
    assert sorted(started) == sorted(ORDERMESH_RUNNABLE)


@pytest.mark.parametrize("name", sorted(ORDERMESH))
def test_ordermesh_services_are_wired_to_the_stack(name: str) -> None:
    env = environment(name)
    assert url_host_port(env["ORDERMESH_NATS_URL"]) == ("nats", 4222)
    store = env["ORDERMESH_EVENTSTORE_URL"]
    assert store.split("://")[0] in {"esdb", "kurrentdb"}, store
    assert url_host_port(store) == ("kurrentdb", 2113)
    assert "tls=false" in store  # KurrentDB runs insecure
    assert environment("kurrentdb").get("KURRENTDB_INSECURE") == "true"

    host, port = url_host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host == "otel-collector"
    grpc = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc"
    assert port == (4317 if grpc else 4318)
    assert port in container_ports("otel-collector")

    assert env["ORDERMESH_METRICS_HOST"] == "0.0.0.0"
    assert int(env.get("ORDERMESH_METRICS_PORT", METRICS_PORT)) == METRICS_PORT
    assert METRICS_PORT in container_ports(name)
    assert env["ORDERMESH_DATA_DIR"] == "/data"

    spec = service(name)
    assert spec["image"] == "ordermesh:local"
    build = spec["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE
    assert spec["restart"] == "unless-stopped"

    test = healthcheck_test(name)
    assert test is not None and "/readyz" in " ".join(test)
    deps = depends_on(name)
    assert deps.get("nats") == "service_healthy"
    if name in WITHOUT_EVENT_STORE:
        assert "kurrentdb" not in deps, f"{name} uses no event store: no need to wait for it"
    else:
        assert deps.get("kurrentdb") == "service_healthy"
    assert "otel-collector" in deps


@pytest.mark.parametrize("name", ["ordermesh-relay", "ordermesh-saga"])
def test_relay_and_saga_are_not_scaled(name: str) -> None:
    spec = service(name)
    assert spec.get("scale", 1) == 1
    assert (spec.get("deploy") or {}).get("replicas", 1) == 1


@pytest.mark.parametrize("name", ["ordermesh-saga", "ordermesh-read", "ordermesh-partners"])
def test_sqlite_state_lives_in_a_named_volume(name: str) -> None:
    sources = {target: source for source, target, _ in mounts(name)}
    assert "/data" in sources, f"{name} keeps SQLite files in /data: mount a volume there"
    assert sources["/data"] in (compose().get("volumes") or {}), sources["/data"]


def test_published_ports() -> None:
    expected = {
        "grafana": {3000},
        "prometheus": {9090},
        "jaeger": {16686},
        "nats": {4222, 8222},
        "kurrentdb": {2113},
        "otel-collector": {4317, 4318},
        "ordermesh-api": {4000},
    }
    for name, ports in expected.items():
        assert ports <= published_ports(name), name
    every = set().union(*(published_ports(n) for n in compose()["services"]))
    assert {3000, 9090, 16686, 8222, 4222} <= every


def test_images_are_pinned() -> None:
    for name, spec in compose()["services"].items():
        image = str(spec["image"])
        if "build" in spec:
            continue
        last = image.rsplit("/", 1)[-1]
        assert ":" in last or "@sha256:" in image, f"{name}: {image} has no tag"
        tag = last.split(":", 1)[1].split("@")[0] if ":" in last else ""
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: pin a version, not {image}"


def test_healthchecks_where_an_image_can_run_one() -> None:
    for name in compose()["services"]:
        if name in NO_HEALTHCHECK_POSSIBLE:
            continue
        assert healthcheck_test(name) is not None, f"{name} has no healthcheck"


def test_dependencies_can_be_satisfied() -> None:
    services = compose()["services"]
    for name in services:
        for dep, condition in depends_on(name).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert condition in {"service_started", "service_healthy"}, (name, dep, condition)
            if condition == "service_healthy":
                # Waiting for the health of a service without a check never ends.
                assert healthcheck_test(dep) is not None, f"{name} waits for {dep}'s health"


def test_grafana_and_the_collector_start_after_their_backends() -> None:
    assert depends_on("grafana").get("prometheus") == "service_healthy"
    assert "jaeger" in depends_on("grafana")
    assert "jaeger" in depends_on("otel-collector")
    assert depends_on("nats-exporter").get("nats") == "service_healthy"


def test_the_configuration_is_mounted_where_the_commands_read_it() -> None:
    expected = {
        "nats": [("./infra/nats/nats.conf", "/etc/nats/nats.conf")],
        "otel-collector": [
            ("./infra/otel-collector/config.yaml", "/etc/otelcol-contrib/config.yaml")
        ],
        "prometheus": [("./infra/prometheus", "/etc/prometheus")],
        "grafana": [
            ("./infra/grafana/provisioning", "/etc/grafana/provisioning"),
            ("./infra/grafana/dashboards", "/var/lib/grafana/dashboards"),
        ],
    }
    for name, pairs in expected.items():
        binds = {(source, target): ro for source, target, ro in bind_mounts(name)}
        for pair in pairs:
            assert pair in binds, f"{name} does not mount {pair[0]} at {pair[1]}"
            assert binds[pair], f"{name} mounts {pair[0]} read-write"

    nats_cmd = command("nats")
    assert nats_cmd[nats_cmd.index("-c") + 1] == "/etc/nats/nats.conf"
    assert "--config=/etc/otelcol-contrib/config.yaml" in command("otel-collector")
    prometheus = command("prometheus")
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus
    assert "--enable-feature=exemplar-storage" in prometheus
    assert "--web.enable-lifecycle" in prometheus
    tsdb = next(a for a in prometheus if a.startswith("--storage.tsdb.path="))
    assert tsdb.split("=", 1)[1] in {t for _, t, _ in mounts("prometheus")}

    env = environment("grafana")
    assert env["GF_SECURITY_ADMIN_USER"] == "admin"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "admin"


def test_bind_mounted_files_exist_in_the_repository() -> None:
    for name in compose()["services"]:
        for source, target, _ in bind_mounts(name):
            assert source.startswith("./"), f"{name}: mount {source} from the repository"
            path = (ROOT / source).resolve()
            assert path.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
            assert path.exists(), f"{name} mounts {source} at {target}: it does not exist"


def test_every_prometheus_target_is_a_service_port() -> None:
    if not PROMETHEUS_CONFIG.exists():
        pytest.skip(f"{PROMETHEUS_CONFIG.relative_to(ROOT)} is not written yet")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    services = compose()["services"]
    jobs: dict[str, set[str]] = {}
    for job in config.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                # Prometheus scraping itself: localhost is its own container.
                name = "prometheus" if host in {"localhost", "127.0.0.1"} else host
                assert name in services, f"job {job['job_name']}: {target} is no service"
                assert int(port) in container_ports(name), f"{target}: {name} has no such port"
                jobs.setdefault(job["job_name"], set()).add(name)
                label = (static.get("labels") or {}).get("service")
                if label is not None and job["job_name"] == "ordermesh":
                    assert label == name, f"{target} is labelled service={label}"
    assert jobs.get("ordermesh") == set(ORDERMESH), jobs.get("ordermesh")
    assert jobs.get("nats") == {"nats-exporter"}
    assert jobs.get("otel-collector") == {"otel-collector"}


# --- health checks, run --------------------------------------------------------------


def test_compose_ordermesh_healthcheck_follows_readyz(readyz: tuple[int, type[_Readyz]]) -> None:
    port, handler = readyz
    test = healthcheck_test("ordermesh-command")
    assert test is not None and test[0] == "CMD", test
    assert run_probe(test[1:], port) == 0
    handler.status = 503
    assert run_probe(test[1:], port) != 0


def test_dockerfile_healthcheck_follows_readyz(readyz: tuple[int, type[_Readyz]]) -> None:
    port, handler = readyz
    arguments = dict(final_stage()).get("HEALTHCHECK", "")
    assert "/readyz" in arguments and str(METRICS_PORT) in arguments
    argv = json.loads(arguments[arguments.index("CMD") + len("CMD") :].strip())
    assert run_probe(argv, port) == 0
    handler.status = 503
    assert run_probe(argv, port) != 0


# --- Dockerfile and .dockerignore -----------------------------------------------------


def test_dockerfile_runtime_stage() -> None:
    stage = final_stage()
    arguments = dockerfile_instructions()
    args = dict(
        a[1].split("=", 1) for a in arguments if a[0] == "ARG" and "=" in a[1]
    )  # global defaults, enough to resolve FROM ${PYTHON_IMAGE}
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), stage[0][1])
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base.split()[0]), base

    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users, "the runtime stage runs as root: add USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users[-1]

    assert json.loads(dict(stage)["ENTRYPOINT"]) == ["ordermesh"]
    cmd = json.loads(dict(stage)["CMD"])
    assert cmd[0] == "run" and set(cmd[1:]) <= set(ORDERMESH_RUNNABLE)

    env = " ".join(rest for keyword, rest in stage if keyword == "ENV")
    for setting in ("ORDERMESH_METRICS_HOST=0.0.0.0", "ORDERMESH_DATA_DIR=/data"):
        assert setting in env, setting
    assert "PYTHONUNBUFFERED=1" in env
    assert str(METRICS_PORT) in dict(stage)["EXPOSE"].split()
    assert "/data" in dict(stage)["VOLUME"]


def test_dockerignore_keeps_local_state_out_and_the_package_in() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for private in (".git", ".venv", ".ordermesh"):
        assert private in patterns, f".dockerignore should exclude {private}"
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = {"pyproject.toml", project["project"]["readme"], *packages}
    excluded = needed & {p.lstrip("/") for p in patterns}
    assert not excluded, f"the build needs {sorted(excluded)}"


# --- the OpenTelemetry Collector --------------------------------------------------------


def test_collector_receives_otlp_and_forwards_to_jaeger() -> None:
    config = collector_config()
    protocols = config["receivers"]["otlp"]["protocols"]
    # Since collector v0.104 the default is localhost: in a container it must be explicit.
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"

    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    to_jaeger = [
        e
        for e in traces["exporters"]
        if e.split("/")[0] in {"otlp", "otlp_grpc"}
        and config["exporters"][e]["endpoint"] == "jaeger:4317"
    ]
    assert to_jaeger, "the traces pipeline does not export to jaeger:4317"
    assert config["exporters"][to_jaeger[0]]["tls"]["insecure"] is True
    assert {4317, 4318} <= container_ports("jaeger")
    assert traces["processors"][0] == "memory_limiter", "memory_limiter goes first"
    assert "batch" in traces["processors"]


def test_collector_components_are_all_defined() -> None:
    config = collector_config()
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{kind} {component} undefined"
    for extension in config["service"].get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"extension {extension}"


def test_collector_exposes_its_metrics_and_health() -> None:
    config = collector_config()
    metrics = config["service"]["telemetry"]["metrics"]
    assert "address" not in metrics, "ignored since v0.123.0: use readers"
    pulls = [r["pull"]["exporter"]["prometheus"] for r in metrics["readers"] if "pull" in r]
    assert {"host": "0.0.0.0", "port": 8888} in [
        {k: p.get(k) for k in ("host", "port")} for p in pulls
    ]
    assert "health_check" in config["service"]["extensions"]
    assert config["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
    assert {4317, 4318, 8888, 13133} <= container_ports("otel-collector")


# --- NATS -----------------------------------------------------------------------------


def test_nats_conf_enables_jetstream_and_monitoring() -> None:
    text = re.sub(r"#.*", "", NATS_CONF.read_text())
    assert re.search(r"^\s*jetstream\s*[:=]?\s*\{", text, re.MULTILINE), "no jetstream block"
    assert nats_conf_value("port") == "4222"
    assert nats_conf_value("http_port") == "8222"
    store = nats_conf_value("store_dir") or ""
    volume_targets = {target for source, target, _ in mounts("nats") if source == "nats-data"}
    assert any(Path(store).is_relative_to(t) for t in volume_targets), store
    for limit in ("max_memory_store", "max_file_store", "max_payload"):
        assert nats_conf_value(limit), f"set {limit} explicitly"

    health = " ".join(healthcheck_test("nats") or [])
    assert "http://127.0.0.1:8222/healthz?js-enabled-only=true" in health
    exporter = command("nats-exporter")
    for flag in ("-varz", "-connz", "-routez", "-subz", "-jsz=all"):
        assert flag in exporter, flag
    assert exporter[exporter.index("-port") + 1] == "7777"
    assert 7777 in container_ports("nats-exporter")
    assert exporter[-1] == "http://nats:8222"


def test_nats_server_accepts_the_configuration(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(nats_server_binary()), "-c", str(NATS_CONF), "-t"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
