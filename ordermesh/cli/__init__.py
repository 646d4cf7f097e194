"""The ``ordermesh`` command line: one module per group of commands."""

from __future__ import annotations

from ordermesh.cli import demo, messages, serve, tap, tools
from ordermesh.cli.app import app

__all__ = ["app", "demo", "main", "messages", "serve", "tap", "tools"]


def main() -> None:
    app()
