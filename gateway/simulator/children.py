"""Child processes spoken to in JSON lines: commands on stdin, answers on stdout, stdin closing means exit.

The agent worker of `gateway serve --evi simulator` and the benchmarks' children (capacity, faults) all live
this way, so a child ends with its parent even when the parent is killed (its stdin reaches end of file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["answer", "command_lines", "stop_child"]


async def command_lines() -> AsyncIterator[dict[str, Any]]:
    """In the child: commands from the parent, one JSON object per stdin line, until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip():
            yield json.loads(line)


def answer(obj: dict[str, Any]) -> None:
    """In the child: one JSON line to the parent."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def stop_child(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    """In the parent: close the child's stdin (it exits), then kill its process group if it lingers past
    ``timeout_s`` (the child was started with ``start_new_session=True``)."""
    if proc.stdin is not None:
        proc.stdin.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout_s)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
