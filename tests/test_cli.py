"""The `gateway` command as users run it: a real process serving real calls."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.adapters.serving import loop_factory
from gateway.cli import main
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.demo import logs_to
from gateway.simulator.loopback import free_port


def test_print_config_hides_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway serve --print-config` shows effective settings with secrets masked."""
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok-secret-1")
    monkeypatch.setenv("HUME_API_KEY", "sk-secret-2")
    assert main(["serve", "--port", "9999", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "port = 9999" in out and "tok-secret-1" not in out and "sk-secret-2" not in out


def test_a_bad_numbers_file_stops_serve_before_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway serve --numbers FILE` with a broken file exits 2, naming the file, the number and the key."""
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    bad = tmp_path / "numbers.toml"
    bad.write_text('[numbers."+15550001111"]\nconfig_idd = "x"\n', encoding="utf-8")
    assert main(["serve", "--port", str(free_port()), "--numbers", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "[numbers.'+15550001111']: unknown key 'config_idd'" in err


def test_an_event_loop_that_is_not_installed_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GATEWAY_EVENT_LOOP=uvloop without uvloop installed exits 2 naming the missing extra; auto falls back."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    monkeypatch.setenv("GATEWAY_EVENT_LOOP", "uvloop")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    assert main(["serve", "--port", str(free_port())]) == 2
    assert "uvloop is not installed (the `fast` extra)" in capsys.readouterr().err
    assert loop_factory("auto") == (None, "asyncio")


def test_unknown_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """An option a subcommand does not take is an error, not silently ignored."""
    with pytest.raises(SystemExit) as info:
        main(["serve", "--colour", "blue"])
    assert info.value.code == 2 and "--colour" in capsys.readouterr().err


async def serve_with_agent(port: int, **environ: str) -> asyncio.subprocess.Process:
    """`gateway serve --evi simulator --evi-cheap` on ``port``, signatures on (token ``cli-token``); its stdout
    (the listening line) is piped."""
    env = {**os.environ, "TWILIO_AUTH_TOKEN": "cli-token", "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}", **environ}
    return await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway", "serve", "--port", str(port), "--evi", "simulator", "--evi-cheap"],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_serve_with_the_built_in_agent_answers_a_signed_call(event_loop: str) -> None:
    """`gateway serve --evi simulator` in its own process, on the event loop GATEWAY_EVENT_LOOP names, says
    which loop it runs and answers a signed call with the agent's greeting."""
    port = free_port()
    proc = await serve_with_agent(port, GATEWAY_EVENT_LOOP=event_loop)
    try:
        assert proc.stdout is not None
        listening = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"(event loop: {event_loop})".encode() in listening, listening
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("gateway serve did not come up within 10 s")
        config = CallerConfig(
            webhook_url=f"http://127.0.0.1:{port}/twilio/voice", auth_token="cli-token", hangup_after_ms=10_000
        )
        async with TwilioCaller(config) as caller:
            await caller.dial()
            assert await caller.wait_agent_speaking(10) is not None
            await caller.hang_up()
        worker = agent_worker_of(proc.pid)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert not alive(worker), "the agent worker outlived the gateway"


def agent_worker_of(pid: int) -> int:
    """The pid of the agent worker process `gateway serve --evi simulator` started (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    module = b"gateway.simulator.agent_process"
    workers = [int(c) for c in children if module in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 1, f"children of the gateway: {children}"
    return workers[0]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_the_agent_worker_ends_when_the_gateway_is_killed() -> None:
    """The agent worker lives only as long as its gateway: SIGKILL the gateway and the worker exits too."""
    proc = await serve_with_agent(free_port())
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 20)  # listening: the worker is up
        worker = agent_worker_of(proc.pid)
        assert alive(worker)
    finally:
        proc.kill()
        await proc.wait()
    for _ in range(100):
        if not alive(worker):
            break
        await asyncio.sleep(0.1)
    assert not alive(worker), "the agent worker outlived a killed gateway by 10 s"


def test_demo_logs_go_to_the_file_and_with_verbose_to_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Inside the demo's log set-up records go to its log file only; with verbose they show on stderr as well."""
    logger = logging.getLogger("gateway.test_cli")
    with logs_to(tmp_path / "quiet.log"):
        logger.info("quiet record")
    with logs_to(tmp_path / "verbose.log", verbose=True):
        logger.info("verbose record")
    out, err = capfd.readouterr()
    assert "record" not in out
    assert "quiet record" not in err and "INFO gateway.test_cli verbose record" in err
    assert "INFO gateway.test_cli quiet record" in (tmp_path / "quiet.log").read_text(encoding="utf-8")
    assert "verbose record" in (tmp_path / "verbose.log").read_text(encoding="utf-8")
