"""A drift-free periodic tick on the event loop's monotonic clock (twilio-media-streams.md P1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def ticks(period_s: float) -> AsyncIterator[float]:
    """Yield ``loop.time()`` at ``start + n·period``; late ticks are skipped, never bunched."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while True:
        n += 1
        due = start + n * period_s
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        if now - due >= period_s:
            n = int((now - start) / period_s)  # we fell behind: skip the missed ticks
        yield now
