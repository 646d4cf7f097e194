"""The external tools the stack's tests drive: promtool, prometheus, docker-compose.

``make test`` installs them (Debian packages) and sets ``ORDERMESH_REQUIRE_TOOLS=1``, so
that there a missing tool fails the test instead of skipping it; a developer running
``pytest`` by hand without them gets a skip that says how to install them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def require_tool(name: str) -> str:
    """The path of ``name`` on ``PATH``; fails (under ``make test``) or skips without it."""
    found = shutil.which(name)
    if found is not None:
        return found
    if os.environ.get("ORDERMESH_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is required here (make test installs it with apt-get)")
    pytest.skip(f"{name} not installed (make test installs it)")
