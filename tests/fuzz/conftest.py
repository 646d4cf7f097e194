"""Settings profiles, fixtures and the case count of the hostile-input suite.

Profiles (``HYPOTHESIS_PROFILE``): ``default`` is what ``make test`` runs, a few
examples per test; ``fuzz`` (``make fuzz``) runs over 10 000 in all, and the session
fails if fewer were executed (counted, not assumed: :data:`tests.fuzz.rig.CASES`).

``default`` is derandomized: the examples derive from a hash of each test function, so
CI runs the same cases every time and a red build reproduces on any machine. That
implies no example database: no failure saved on one machine replays first on another
and makes runs differ. ``fuzz`` is random on purpose, to look somewhere new on each run,
also without a database; a failure prints a ``@reproduce_failure`` blob that replays it,
and ``--hypothesis-seed=N`` fixes a whole run.

Fixtures are module-scoped: one nats-server and one app serve every example of a module.
Hypothesis's ``function_scoped_fixture`` health check exists because function-scoped
fixtures are not reset between examples; these need no reset (each example compares the
store before and after itself), and since no test takes a function-scoped fixture, the
health check runs and has nothing to report. It is not suppressed. ``deadline=None``:
a request over a real server on a shared machine has no fixed duration, and a hang is
caught by the request's own timeout instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from broker.connection import connect
from infra.nats_server import EmbeddedNatsServer
from ordermesh.app import App
from telemetry import tracing
from tests.conftest import CORE_SERVICES, settings_for
from tests.fuzz.rig import CASES, CountingExporter, Rig

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
#: Cases the whole fuzz package must execute under a profile.
MIN_CASES = {"fuzz": 10_000}

settings.register_profile("default", max_examples=8, deadline=None, derandomize=True)
settings.register_profile("fuzz", max_examples=165, deadline=None, database=None, print_blob=True)
settings.load_profile(PROFILE)


@pytest.fixture(scope="module", params=["untraced", "traced"])
def exporter(request: pytest.FixtureRequest) -> Iterator[CountingExporter | None]:
    """Both ways a request's trace context is handled: with tracing off, a ``traceparent``
    is carried into the stored events as it came; with tracing on, it is parsed."""
    if request.param == "untraced":
        yield None
        return
    counting = CountingExporter()
    tracing.configure_tracing("ordermesh-fuzz", processors=[SimpleSpanProcessor(counting)])
    try:
        yield counting
    finally:
        tracing.shutdown_tracing()


async def _rig(directory: Path) -> AsyncIterator[Rig]:
    """A nats-server of its own (the relay's ``EVENTS`` then holds this app's events
    only), the core services (no saga: every stored event is one a request caused), and
    a client."""
    server = EmbeddedNatsServer(directory / "nats")
    await server.start()
    app = App(settings_for(server, directory / "data"), CORE_SERVICES)
    try:
        await app.start()
        client = await connect(server.url)
        rig = await Rig.open(app, client)
        try:
            yield rig
        finally:
            rig.close()
            await client.close()
    finally:
        await app.stop()
        await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(
    exporter: CountingExporter | None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    async for value in _rig(tmp_path_factory.mktemp("fuzz")):
        yield value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def untraced_rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async for value in _rig(tmp_path_factory.mktemp("fuzz")):
        yield value


#: Set when the session ran fewer cases than its profile needs (reported in the summary).
_SHORTFALL: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under a profile with a minimum, fewer executed cases fail the run: the figure is
    measured. ``ORDERMESH_FUZZ_MIN_CASES`` overrides it (0 for a partial run)."""
    minimum = int(os.environ.get("ORDERMESH_FUZZ_MIN_CASES", MIN_CASES.get(PROFILE, 0)))
    if CASES.total() < minimum:
        _SHORTFALL.append(
            f"only {CASES.total()} cases executed; profile {PROFILE!r} needs {minimum}"
        )
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CASES:
        by_family = ", ".join(f"{family} {n}" for family, n in sorted(CASES.items()))
        terminalreporter.write_line(
            f"fuzz: {CASES.total()} cases executed (profile {PROFILE!r}: {by_family})"
        )
    for shortfall in _SHORTFALL:
        terminalreporter.write_line(f"fuzz: {shortfall}", red=True)
