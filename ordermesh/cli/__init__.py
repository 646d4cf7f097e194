"""The ``ordermesh`` command line: one module per group of commands."""

from __future__ import annotations

from ordermesh.cli import demo, dlq, messages, serve, status, tap, tools
from ordermesh.cli.app import app

__all__ = ["app", "demo", "dlq", "main", "messages", "serve", "status", "tap", "tools"]


def main() -> None:
    app()
