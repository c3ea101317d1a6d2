"""`gateway serve` as a process: SIGTERM drains (operations.md §2), SIGHUP reloads the numbers file, and the
startup heap is frozen (operations.md §4)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import DialError
from gateway.simulator.caller import CallerConfig, TwilioCaller

GRACE_S = 4.0
GOODBYE = "The line is closing for maintenance now. Please call again later. Goodbye."
TOKEN = secrets.token_hex(16)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def spawn(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `gateway serve --evi simulator --evi-cheap` on a free port, its log in tmp_path/serve.log."""
    environ = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "GATEWAY_DRAIN_GRACE_S": str(GRACE_S),
        "GATEWAY_DRAIN_GOODBYE_MESSAGE": GOODBYE,
        "GATEWAY_MAX_CONCURRENT_CALLS": "20",
        **env,
    }
    environ.pop("GATEWAY_PUBLIC_URL", None)
    command = [sys.executable, "-m", "gateway", "serve", "--port", "0", "--evi", "simulator", "--evi-cheap"]
    with open(tmp_path / "serve.log", "wb") as log:
        return subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=log)


@asynccontextmanager
async def served(tmp_path: Path, **env: str) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """The served gateway; yields the process and its base URL, and kills it if it is still running."""
    proc = spawn(tmp_path, env)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        found = re.search(rb"listening on (http://[\d.]+:\d+)", line)
        assert found, f"no listening line: {line!r}; log: {(tmp_path / 'serve.log').read_text()}"
        yield proc, found.group(1).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, 10)


def caller(base: str, n: int) -> TwilioCaller:
    """A caller who says nothing (silence frames) and stays on the line."""
    config = CallerConfig(
        webhook_url=base + "/twilio/voice",
        auth_token=TOKEN,
        audio_ulaw=b"",
        hangup_after_ms=120_000,
        call_sid="CA" + f"{n:032x}",
    )
    return TwilioCaller(config)


async def quiet(c: TwilioCaller, quiet_s: float = 0.6, timeout_s: float = 20) -> None:
    """Wait until the caller has heard nothing new for ``quiet_s`` (the greeting is over)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    heard = -1.0
    while c.record.heard_audio_ms != heard and loop.time() < end:
        heard = c.record.heard_audio_ms
        await asyncio.sleep(quiet_s)


async def test_sigterm_drains_live_calls_then_says_goodbye_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM during 10 live calls: readiness is 503 at once and a new call gets the busy answer; calls that
    hang up during the grace end normally, the others keep streaming until the grace ends, then hear the
    goodbye and are closed with 1001; the process exits 0."""
    async with served(tmp_path) as (proc, base), aiohttp.ClientSession() as http:
        callers = [caller(base, n) for n in range(10)]
        for c in callers:
            await c.__aenter__()
        try:
            await asyncio.gather(*(c.dial() for c in callers))
            assert all([await c.wait_for(lambda r: r.heard_audio_ms > 300, 20) for c in callers])  # the greeting
            await asyncio.gather(*(quiet(c) for c in callers))
            heard_before = [c.record.heard_audio_ms for c in callers]
            loop = asyncio.get_running_loop()
            proc.send_signal(signal.SIGTERM)
            term_s = loop.time()
            status = 0
            while status != 503 and loop.time() - term_s < 5:
                async with http.get(base + "/readyz") as resp:
                    status = resp.status
            assert status == 503
            async with caller(base, 99) as late:
                with pytest.raises(DialError):
                    await late.dial()
                assert late.record.twiml is not None and "<Say>" in late.record.twiml
            leaving, staying = callers[:4], callers[4:]
            for c in leaving:
                await c.hang_up()
            await asyncio.sleep(GRACE_S - 1.5)
            assert all(c.record.close_code is None for c in staying)  # still streaming within the grace
            assert [c.record.heard_audio_ms for c in staying] == heard_before[4:]  # nothing said yet
            assert all([await c.wait_for(lambda r: r.close_code is not None, 30) for c in staying])
            assert all(c.record.closed_by == "gateway" and c.record.close_code == 1001 for c in staying)
            goodbye_ms = [c.record.heard_audio_ms - before for c, before in zip(staying, heard_before[4:], strict=True)]
            assert min(goodbye_ms) > 1000, goodbye_ms  # the goodbye was heard in full, not cut
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            for c in callers:
                await c.__aexit__(None, None, None)


async def test_a_second_sigterm_ends_at_once(tmp_path: Path) -> None:
    """While draining with a live call, a second SIGTERM closes it and exits 0 without waiting for the grace."""
    async with served(tmp_path, GATEWAY_DRAIN_GRACE_S="300") as (proc, base), caller(base, 1) as c:
        await c.dial()
        assert await c.wait_for(lambda r: r.heard_audio_ms > 300, 20)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert c.record.close_code is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        assert await c.wait_for(lambda r: r.close_code is not None, 5)


async def test_sighup_with_a_broken_numbers_file_keeps_the_old_one(tmp_path: Path) -> None:
    """SIGHUP re-reads the numbers file: a broken one is refused (readiness 503, the old busy message still
    used), a fixed one is taken (ready again, the new message used)."""
    numbers = tmp_path / "numbers.toml"
    numbers.write_text('[default]\nbusy_message = "First."\n', encoding="utf-8")
    env = {"GATEWAY_NUMBERS_FILE": str(numbers), "GATEWAY_MAX_CONCURRENT_CALLS": "1"}
    async with served(tmp_path, **env) as (proc, base), aiohttp.ClientSession() as http:

        async def ready_status(expected: int) -> bool:
            for _ in range(100):
                async with http.get(base + "/readyz") as resp:
                    if resp.status == expected:
                        return True
                await asyncio.sleep(0.05)
            return False

        async def busy_message() -> str:
            async with caller(base, 1) as holder, caller(base, 2) as refused:
                await holder.dial()
                with pytest.raises(DialError):
                    await refused.dial()
                await holder.hang_up()
                assert refused.record.twiml is not None
                return refused.record.twiml

        assert "First." in await busy_message()
        numbers.write_text("[default]\nbusy_message = 3\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        assert await ready_status(503)
        await asyncio.sleep(0.5)  # the holder's slot is released once its stream closes
        assert "First." in await busy_message()
        numbers.write_text('[default]\nbusy_message = "Second."\n', encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        assert await ready_status(200)
        await asyncio.sleep(0.5)
        assert "Second." in await busy_message()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 20) == 0


async def test_serve_freezes_its_startup_heap(tmp_path: Path) -> None:
    """Once listening, `gateway serve` has frozen its startup objects out of the garbage collector's view (a
    full collection then walks only what calls made), and says how many in ``gateway_gc_frozen_objects``."""
    async with served(tmp_path) as (_proc, base), aiohttp.ClientSession() as http, http.get(base + "/metrics") as r:
        text = await r.text()
    frozen = re.search(r"^gateway_gc_frozen_objects (\S+)$", text, re.MULTILINE)
    assert frozen is not None and float(frozen.group(1)) > 10_000
