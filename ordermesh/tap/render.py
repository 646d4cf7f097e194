"""One readable line per message; optionally its headers and its pretty body.

Plain strings with ANSI colours, not Rich markup: a tap must keep up with thousands of
messages a second, and Rich's rendering costs more than the rest of the tap together.
"""

from __future__ import annotations

import json
from typing import Any

from ordermesh.tap.message import Tapped

RESET = "\x1b[0m"
DIM = "\x1b[2m"
BOLD = "\x1b[1m"
COLOURS = {
    "command": "\x1b[36m",  # cyan
    "event": "\x1b[32m",  # green
    "query": "\x1b[34m",  # blue
    "saga": "\x1b[35m",  # magenta
    "partner": "\x1b[96m",  # bright cyan: the command service's calls out
    "reply": "\x1b[2;32m",  # dim green
    "dlq": "\x1b[31m",  # red
    "other": "\x1b[33m",  # yellow
}
FAILED = "\x1b[31m"
SHORT = 8
SUMMARY_WIDTH = 72
LABELS = {
    "command": "CMD",
    "event": "EVT",
    "query": "QRY",
    "saga": "SAGA",
    "partner": "PTNR",
    "reply": "REP",
    "dlq": "DLQ",
    "other": "MSG",
}


def _scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{…}"
    if isinstance(value, list):
        return f"[{len(value)}]"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def summary(msg: Tapped, width: int = SUMMARY_WIDTH) -> str:
    """The body in one short line: ``key=value`` pairs, or the raw text. A reply in our
    envelope reads ``ok …`` (its ``data``) or ``error …``; a partner's answer has no
    envelope, and its pairs (``status=declined`` among them) are the answer."""
    body = msg.body
    if not msg.is_json:
        text = msg.raw_text().replace("\n", "\\n")
    elif isinstance(body, dict):
        if msg.kind == "reply" and "ok" in body:
            inner = body.get("data") if body.get("ok") else body.get("error")
            prefix = "ok " if body.get("ok") else "error "
            body = inner if isinstance(inner, dict) else {"value": inner}
        else:
            prefix = ""
        text = prefix + " ".join(f"{k}={_scalar(v)}" for k, v in body.items())
    else:
        text = json.dumps(body)
    return text if len(text) <= width else text[: width - 1] + "…"


def line(msg: Tapped, *, colour: bool, headers: bool = False, body: bool = False) -> str:
    kind = "reply" if msg.request is not None else msg.kind
    c = (FAILED if msg.failed else COLOURS.get(kind, "")) if colour else ""
    dim, reset = (DIM, RESET) if colour else ("", "")
    parts = [
        f"{dim}{msg.received.strftime('%H:%M:%S.%f')[:-3]}{reset}",
        f"{c}{LABELS.get(kind, 'MSG'):<4}{reset if colour else ''}",
        f"{c}{msg.subject}{reset if colour else ''}",
    ]
    if msg.type:
        parts.append(msg.type)
    if msg.aggregate_id:
        parts.append(msg.aggregate_id)
    ids = []
    if msg.correlation_id:
        ids.append(f"corr={msg.correlation_id[:SHORT]}")
    if msg.trace_id:
        ids.append(f"trace={msg.trace_id[:SHORT]}")
    if msg.latency_ms is not None:
        ids.append(f"{msg.latency_ms:.1f}ms")
    if msg.sequence is not None:
        ids.append(f"seq={msg.sequence}")
    if ids:
        parts.append(f"{dim}{' '.join(ids)}{reset}")
    parts.append(summary(msg))
    out = "  ".join(parts)
    if headers and msg.headers:
        out += "".join(f"\n    {dim}{k}:{reset} {v}" for k, v in sorted(msg.headers.items()))
    if body:
        if msg.is_json:
            pretty = json.dumps(msg.body, indent=2, ensure_ascii=False)
        else:
            pretty = msg.raw_text()
        out += "\n" + "\n".join("    " + row for row in pretty.splitlines())
    return out


def json_line(msg: Tapped) -> str:
    """``--json``: one object per line, for ``jq``."""
    return json.dumps(msg.as_json(), ensure_ascii=False, default=str) + "\n"
