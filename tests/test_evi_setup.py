"""`gateway evi setup` and the REST commands against the EVI simulator's REST API, over real sockets: a phone
line set up from nothing, then called."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hume import AsyncHumeClient

from gateway.evi_cli import main as evi_main
from gateway.evi_setup import GREETING, PHONE_PROMPT
from gateway.numbers import load_numbers
from gateway.simulator.agent_config import AgentConfig
from gateway.simulator.agent_script import parse_agent_script
from gateway.simulator.caller import CallerConfig, SendDtmf, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import running_gateway
from gateway.simulator.tool_server import ToolBehaviour, ToolServer

KEY = "setup-key"
SECRET = "tool-signing-secret"

# The script may call lookup_order when the caller presses 5; only a config that has that tool allows it.
SCRIPT = """
[agent]
greeting = "The simulator's own greeting."
[[rules]]
name = "order by keypad"
pattern = "keypad 5"
tool = "lookup_order"
arguments = { order_id = "A17" }
reply = "Here is what I found: {tool_result}"
"""


def numbers_file(folder: Path, tools: ToolServer) -> Path:
    """A numbers file with one tool on the tool server and two transfer destinations, no config yet."""
    path = folder / "numbers.toml"
    path.write_text(
        f"""# our phone lines
[default]
record = false

[default.transfer]
sales = "+15551230000"
support = "+15551230001"

[[tool]]
name = "lookup_order"
description = "Look up an order by its id"
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }}, required = ["order_id"] }}
url = "{tools.url("lookup_order")}"
""",
        encoding="utf-8",
    )
    return path


async def evi(sim: EviSimulator, *args: str) -> int:
    """Run ``gateway evi --api-url SIM ARGS`` off the event loop (it runs its own)."""
    return await asyncio.to_thread(evi_main, ["--api-url", sim.http_url, *args])


@pytest.fixture(autouse=True)
def hume_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUME_API_KEY", KEY)
    for name in ("GATEWAY_HUME_API_URL", "GATEWAY_EVI_URL"):
        monkeypatch.delenv(name, raising=False)


async def test_a_line_set_up_from_nothing_greets_and_calls_its_tools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway evi setup --numbers F --write` creates the prompt, both tools and the config, and writes its id
    into the numbers file; a call on that line opens its chat with the config, is greeted with the config's
    on_new_chat text, and the agent's lookup_order call is answered by the tool endpoint."""
    config = AgentConfig(script=parse_agent_script(SCRIPT), cheap=True, inactivity_timeout_s=None)
    async with (
        EviSimulator(api_key=KEY, agent_config=config) as sim,
        ToolServer(SECRET.encode(), {"lookup_order": ToolBehaviour(content="it ships on Friday")}) as tools,
    ):
        path = numbers_file(tmp_path, tools)
        assert await evi(sim, "setup", "--name", "acme-phone", "--numbers", str(path), "--write") == 0
        out = capsys.readouterr().out
        for made in ("prompt 'acme-phone'", "tool 'transfer_call'", "tool 'lookup_order'", "config 'acme-phone'"):
            assert f"created {made} v0" in out
        config_id = load_numbers(str(path)).default.config_id
        assert config_id and f"config id: {config_id}" in out
        assert "# our phone lines" in path.read_text(encoding="utf-8")  # the rest of the file is kept

        stored = sim.store.config(config_id, None)
        assert stored is not None and stored.prompt is not None and stored.prompt.text == PHONE_PROMPT
        transfer = next(t for t in stored.tools or [] if t.name == "transfer_call")
        assert json.loads(transfer.parameters)["properties"]["destination"]["enum"] == ["sales", "support"]
        assert [t.name for t in stored.builtin_tools or []] == ["hang_up"]

        caller_config = CallerConfig(
            webhook_url="", auth_token="", audio_ulaw=b"", hangup_after_ms=60_000, to_number="+15550009999"
        )
        async with running_gateway(sim.url, hume_api_key=KEY, numbers_file=str(path), tool_signing_secret=SECRET) as gw:
            caller_config.webhook_url, caller_config.auth_token = gw.webhook_url, gw.auth_token
            async with TwilioCaller(caller_config) as caller:
                await caller.dial()
                session = await sim.wait_session()
                await session.wait_message("session_settings")
                assert session.config_id == config_id
                assert sim.voice_agent is not None
                history = sim.voice_agent.conversations[session.chat_group_id].history
                assert await caller.wait_for(lambda r: r.heard_audio_ms > 500, 10)
                assert history[0] == ("assistant", GREETING)
                caller.send(SendDtmf("5"))
                answer = await session.wait_message("tool_response", 5)
                assert answer.content == "it ships on Friday"  # type: ignore[union-attr]
                assert [c.body["parameters"] for c in tools.calls] == [{"order_id": "A17"}]
                await caller.hang_up()


async def test_a_chat_on_a_config_without_the_tool_cannot_call_it(tmp_path: Path) -> None:
    """The same script on a config set up without a numbers file (no function tools) makes no tool call."""
    config = AgentConfig(script=parse_agent_script(SCRIPT), cheap=True, inactivity_timeout_s=None)
    async with EviSimulator(api_key=KEY, agent_config=config) as sim:
        assert await evi(sim, "--json", "setup", "--name", "bare") == 0
        config_id = sim.store.configs.list_page(name="bare").configs_page[0].id  # type: ignore[union-attr,index]
        async with running_gateway(sim.url, hume_api_key=KEY, hume_config_id=config_id) as gw:
            caller_config = CallerConfig(
                webhook_url=gw.webhook_url, auth_token=gw.auth_token, audio_ulaw=b"", hangup_after_ms=60_000
            )
            async with TwilioCaller(caller_config) as caller:
                await caller.dial()
                session = await sim.wait_session()
                await session.wait_message("session_settings")
                caller.send(SendDtmf("5"))
                with pytest.raises(TimeoutError):
                    await session.wait_message("tool_response", 1.5)
                assert session.config_id == config_id
                await caller.hang_up()


async def test_running_setup_twice_changes_nothing_and_a_new_prompt_versions_only_what_refers_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run reports everything unchanged and adds no version; a changed prompt file gives the prompt
    and the config (which names the prompt's version) a new version, and the tools none."""
    async with EviSimulator(api_key=KEY) as sim, ToolServer(SECRET.encode(), {}) as tools:
        path = numbers_file(tmp_path, tools)
        setup = ("setup", "--name", "acme-phone", "--numbers", str(path))
        assert await evi(sim, *setup) == 0
        capsys.readouterr()
        assert await evi(sim, *setup) == 0
        second = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in second[:-1]] == ["unchanged"] * 4
        hume = AsyncHumeClient(api_key=KEY, base_url=sim.http_url).empathic_voice

        async def versions() -> dict[str, int]:
            counts: dict[str, int] = {}
            for kind, lister in (("prompt", hume.prompts.list_prompts), ("tool", hume.tools.list_tools)):
                async for item in await lister(restrict_to_most_recent=False, page_size=100):
                    counts[f"{kind} {item.name}"] = counts.get(f"{kind} {item.name}", 0) + 1
            async for config in await hume.configs.list_configs(restrict_to_most_recent=False, page_size=100):
                counts[f"config {config.name}"] = counts.get(f"config {config.name}", 0) + 1
            return counts

        once = {"prompt acme-phone": 1, "tool transfer_call": 1, "tool lookup_order": 1, "config acme-phone": 1}
        assert await versions() == once
        prompt_file = tmp_path / "prompt.txt"
        prompt_file.write_text("You answer the phone for Acme. Be brief.", encoding="utf-8")
        assert await evi(sim, *setup, "--prompt-file", str(prompt_file)) == 0
        third = capsys.readouterr().out
        assert "new version of prompt 'acme-phone' v1" in third and "new version of config 'acme-phone' v1" in third
        assert await versions() == {**once, "prompt acme-phone": 2, "config acme-phone": 2}


async def test_a_422_is_printed_one_problem_per_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config body the API refuses shows each of EVI's validation problems with where it is."""
    body = tmp_path / "config.json"
    body.write_text(json.dumps({"name": "x", "prompt": {"id": 7}}), encoding="utf-8")
    async with EviSimulator(api_key=KEY) as sim:
        assert await evi(sim, "configs", "create", str(body)) == 1
        err = capsys.readouterr().err
        assert "422" in err and "evi_version" in err and "prompt" in err
        assert err.count("\n") >= 3, err  # a headline and one line per problem
        assert await evi(sim, "--json", "configs", "list") == 0
        assert json.loads(capsys.readouterr().out) == []


async def test_a_wrong_key_is_refused_with_what_to_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong HUME_API_KEY fails every command with exit 1 and a message naming the key, not a traceback."""
    monkeypatch.setenv("HUME_API_KEY", "not-the-key")
    async with EviSimulator(api_key=KEY) as sim:
        for command in (("configs", "list"), ("setup", "--name", "x")):
            assert await evi(sim, *command) == 1
            err = capsys.readouterr().err
            assert "401" in err and "HUME_API_KEY" in err and "Traceback" not in err
        assert not sim.store.configs.list_page().configs_page  # type: ignore[union-attr]


async def test_the_cli_keeps_to_the_rate_limit_by_waiting_out_429s(capsys: pytest.CaptureFixture[str]) -> None:
    """Against a server allowing 3 requests a second, listing 12 configs a page at a time meets 429s, waits as
    Retry-After says and still prints all 12."""
    async with EviSimulator(api_key=KEY, rest_requests_per_s=3) as sim:
        for n in range(12):
            sim.store.configs.create({"name": f"c{n:02}", "evi_version": "3"}, now_s=1_700_000_000 + n)
        assert await evi(sim, "--json", "configs", "list", "--page-size", "1") == 0
        names = sorted(item["name"] for item in json.loads(capsys.readouterr().out))
        assert names == [f"c{n:02}" for n in range(12)]
        assert sim.rest.refused_rate_limited > 0


def test_simulate_evi_state_dir_keeps_a_setup_across_restarts(tmp_path: Path) -> None:
    """`gateway simulate-evi --state-dir D` serves REST and chat on one port and keeps what was created in
    D/evi-rest.sqlite3: after a restart the config is still listed, and setup finds it unchanged."""
    state = tmp_path / "state"
    env = {**os.environ, "HUME_API_KEY": KEY}
    env.pop("GATEWAY_HUME_API_URL", None)

    def serve() -> tuple[subprocess.Popen[str], str]:
        command = [sys.executable, "-m", "gateway", "simulate-evi", "--port", "0", "--api-key", KEY, "--cheap"]
        proc = subprocess.Popen(
            [*command, "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert proc.stdout is not None
        for _ in range(2):
            line = proc.stdout.readline()
            found = re.search(r"EVI REST API on (http://\S+)/v0/evi", line)
            if found:
                assert f"kept in {state / 'evi-rest.sqlite3'}" in line
                return proc, found.group(1)
        proc.kill()
        raise AssertionError(f"no REST line from simulate-evi: {line!r}")

    def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", "evi", "--api-url", url, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    for run in range(2):
        proc, url = serve()
        try:
            done = cli(url, "setup", "--name", "kept")
            assert done.returncode == 0, done.stderr
            assert ("created config 'kept' v0" if run == 0 else "unchanged config 'kept' v0") in done.stdout
            listed = cli(url, "--json", "configs", "list")
            assert [c["name"] for c in json.loads(listed.stdout)] == ["kept"]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
