"""Logging through loguru: ``LOG_LEVEL``, ``LOG_FORMAT=json|text``.

Every record carries ``service``, ``trace_id``, ``span_id`` and ``correlation_id``
(empty when unknown), so one grep for a trace id finds a request across services.
The standard library's loggers (nats, asyncio, uvicorn) are routed here too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

from loguru import logger

from telemetry.context import log_ids

if TYPE_CHECKING:
    from loguru import Record

_CONTEXT_KEYS = ("service", "trace_id", "span_id", "correlation_id")


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def _json_line(record: Record) -> str:
    extra = record["extra"]
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    for key in _CONTEXT_KEYS:
        line[key] = extra.get(key)
    line.update({k: v for k, v in extra.items() if k not in _CONTEXT_KEYS})
    if record["exception"] is not None:
        exc = record["exception"]
        line["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    record["extra"]["_json"] = json.dumps(line, default=str)
    return "{extra[_json]}\n"


def _text_line(record: Record) -> str:
    """Readable in a terminal; the ids appear only when a record has them."""
    ids = " ".join(
        f"{key.removesuffix('_id')}={record['extra'][key]}"
        for key in ("trace_id", "correlation_id")
        if record["extra"].get(key)
    )
    suffix = f" <dim>{ids}</dim>" if ids else ""
    return (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{extra[service]}</cyan> {message}"
        + suffix.replace("{", "{{").replace("}", "}}")
        + "\n{exception}"
    )


def _with_context(record: Record) -> None:
    """Fill the ids from the message being handled and the current span, unless bound."""
    extra = record["extra"]
    if extra.get("trace_id") is None or extra.get("correlation_id") is None:
        for key, value in log_ids().items():
            if extra.get(key) is None:
                extra[key] = value


def configure_logging(service: str, *, level: str | None = None, fmt: str | None = None) -> None:
    level = (level or os.environ.get("LOG_LEVEL", "INFO")).upper()
    fmt = (fmt or os.environ.get("LOG_FORMAT", "text")).lower()
    logger.remove()
    logger.configure(
        extra={"service": service, "trace_id": None, "span_id": None, "correlation_id": None},
        patcher=_with_context,
    )
    if fmt == "json":
        logger.add(sys.stderr, level=level, format=_json_line, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=_text_line, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
