"""`gateway evi`: EVI's REST API and control plane from the command line, against the EVI simulator."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from gateway.evi_cli import main as evi_main
from gateway.simulator.agent_config import AgentConfig
from gateway.simulator.agent_script import load_agent_script
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import running_gateway

KEY = "cli-key"


async def test_a_control_plane_message_reaches_a_live_call_and_is_heard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway evi send CHAT_ID '{"type": "assistant_input", …}'` makes the agent say it on the live call."""
    script = replace(load_agent_script(), greeting="")  # the line is silent until the supervisor speaks
    config = AgentConfig(script=script, cheap=True, inactivity_timeout_s=None, realtime_factor=0.0)
    monkeypatch.setenv("HUME_API_KEY", KEY)
    async with (
        EviSimulator(api_key=KEY, agent_config=config) as sim,
        running_gateway(sim.url, hume_api_key=KEY) as gw,
    ):
        caller_config = CallerConfig(
            webhook_url=gw.webhook_url, auth_token=gw.auth_token, hangup_after_ms=30_000, audio_ulaw=b""
        )
        async with TwilioCaller(caller_config) as caller:
            await caller.dial()
            session = await sim.wait_session()
            await session.wait_message("session_settings")
            assert caller.record.heard_audio_ms == 0
            message = json.dumps({"type": "assistant_input", "text": "A supervisor says hello."})
            args = ["--api-url", sim.http_url, "send", session.chat_id, message]
            assert await asyncio.to_thread(evi_main, args) == 0
            assert f"sent assistant_input to chat {session.chat_id}" in capsys.readouterr().out
            assert await caller.wait_for(lambda r: r.heard_audio_ms > 500, 10)
            assert session.control_plane_messages == 1
            await caller.hang_up()


async def test_control_plane_errors_are_reported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong key, an unknown chat and an audio_input are refused with EVI's reason and exit status 1."""
    async with EviSimulator(api_key=KEY) as sim:
        base = ["--api-url", sim.http_url, "send"]
        monkeypatch.setenv("HUME_API_KEY", "wrong")
        assert await asyncio.to_thread(evi_main, [*base, "chat-x", '{"type": "assistant_input", "text": "hi"}']) == 1
        assert "HUME_API_KEY" in capsys.readouterr().err
        monkeypatch.setenv("HUME_API_KEY", KEY)
        assert await asyncio.to_thread(evi_main, [*base, "chat-x", '{"type": "assistant_input", "text": "hi"}']) == 1
        assert "no live chat chat-x" in capsys.readouterr().err
        assert await asyncio.to_thread(evi_main, [*base, "chat-x", '{"type": "audio_input", "data": ""}']) == 1
        assert "audio_input" in capsys.readouterr().err
        assert await asyncio.to_thread(evi_main, [*base, "chat-x", "not json"]) == 2
        assert "not JSON" in capsys.readouterr().err
