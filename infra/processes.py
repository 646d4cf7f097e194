"""Stopping a child process the way every ordermesh parent does it."""

from __future__ import annotations

import asyncio
import contextlib


async def terminate(proc: asyncio.subprocess.Process, timeout: float) -> int:
    """SIGTERM, so the process closes its connections and stores; SIGKILL if it has not
    exited within ``timeout`` seconds. Returns its exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(timeout):
                return await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()
