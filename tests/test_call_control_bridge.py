"""Call control through real sockets: the gateway, the EVI simulator, the caller emulator, a tool server and
the fake Twilio REST endpoint, all on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.errors import DialError
from gateway.simulator.agent_config import AgentConfig
from gateway.simulator.agent_script import parse_agent_script, split_sentences
from gateway.simulator.caller import CallerConfig, SendDtmf, TwilioCaller
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway
from gateway.simulator.loopback import free_port
from gateway.simulator.tool_server import ToolBehaviour, ToolServer
from gateway.simulator.twilio_rest import FakeTwilioRest
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import evi_messages as evi

ACCOUNT_SID = "AC" + "a" * 32
SECRET = b"tool-signing-secret"
CALLED = "+15550002222"


def numbers_file(folder: Path, tools: ToolServer) -> Path:
    """A numbers file with two tools on the tool server and a transfer table."""
    path = folder / "numbers.toml"
    path.write_text(
        f"""
[default]
variables = {{ brand = "Acme" }}
[default.transfer]
sales = "+15551230000"
[[tool]]
name = "lookup_order"
url = "{tools.url("lookup_order")}"
timeout_s = 1.0
[[tool]]
name = "slow"
url = "{tools.url("slow")}"
timeout_s = 0.3
[[tool]]
name = "broken"
url = "{tools.url("broken")}"
[[tool]]
name = "offline"
url = "http://127.0.0.1:{free_port()}/tools/offline"
""",
        encoding="utf-8",
    )
    return path


@asynccontextmanager
async def call_center(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[RunningGateway, EviSimulator, ToolServer]]:
    """The gateway with a numbers file, Twilio REST pointed at ``overrides['twilio_api_url']`` if given."""
    behaviours = {
        "lookup_order": ToolBehaviour(content={"status": "shipped", "eta": "Friday"}),
        "slow": ToolBehaviour(content="late", delay_s=2.0),
        "broken": ToolBehaviour(status=500, raw="boom"),
    }
    async with EviSimulator() as sim, ToolServer(SECRET, behaviours) as tools:
        path = numbers_file(tmp_path, tools)
        async with running_gateway(
            sim.url, numbers_file=str(path), tool_signing_secret=SECRET.decode(), **overrides
        ) as gw:
            yield gw, sim, tools


def caller_config(gw: RunningGateway) -> CallerConfig:
    """A caller that talks for a second and stays on the line."""
    audio = pcm16_to_ulaw(speechlike_pcm16(1000, 8000, seed=3))
    return CallerConfig(
        webhook_url=gw.webhook_url,
        auth_token=gw.auth_token,
        audio_ulaw=audio,
        hangup_after_ms=60_000,
        to_number=CALLED,
        account_sid=ACCOUNT_SID,
    )


async def connected(caller: TwilioCaller, sim: EviSimulator, index: int = 0) -> EviSession:
    """Dial and wait until the gateway's EVI session has its settings."""
    await caller.dial()
    session = await sim.wait_session(index)
    await session.wait_message("session_settings")
    return session


def tool_call(name: str, arguments: dict[str, Any], call_id: str) -> evi.ToolCallMessage:
    """A function tool_call as EVI sends it."""
    return evi.ToolCallMessage(
        name=name, parameters=json.dumps(arguments), tool_call_id=call_id, response_required=True, tool_type="function"
    )


async def test_function_tools_are_answered_from_the_tool_server(tmp_path: Path) -> None:
    """A tool call reaches its endpoint signed and with the call's identity; EVI gets the endpoint's content, and a
    tool_error (with something to say) on timeout, HTTP 500 and an unknown tool."""
    async with call_center(tmp_path) as (gw, sim, tools), TwilioCaller(caller_config(gw)) as caller:
        session = await connected(caller, sim)
        calls = (("lookup_order", "t1"), ("slow", "t2"), ("broken", "t3"), ("weather", "t4"), ("offline", "t5"))
        for name, call_id in calls:
            await session.send_message(tool_call(name, {"order_id": "A17"}, call_id))
        answers: dict[str, Any] = {}
        for kind, count in (("tool_response", 1), ("tool_error", 4)):
            for n in range(1, count + 1):
                message = await session.wait_message(kind, 5, count=n)
                answers[message.tool_call_id] = message  # type: ignore[union-attr]
        assert answers["t1"].type == "tool_response"
        assert json.loads(answers["t1"].content) == {"status": "shipped", "eta": "Friday"}
        assert (answers["t2"].type, answers["t2"].code) == ("tool_error", "timeout")
        assert (answers["t3"].type, answers["t3"].code) == ("tool_error", "http_500")
        assert (answers["t4"].type, answers["t4"].code) == ("tool_error", "unknown_tool")
        assert (answers["t5"].type, answers["t5"].code) == ("tool_error", "unreachable")
        assert all(answers[i].content for i in ("t2", "t3", "t4", "t5"))
        first = next(c for c in tools.calls if c.name == "lookup_order")
        assert first.signature_ok
        assert first.body["parameters"] == {"order_id": "A17"} and first.body["tool_call_id"] == "t1"
        assert first.body["call"]["call_sid"] == caller.config.call_sid
        assert first.body["call"]["to"] == CALLED and first.body["call"]["chat_id"] == session.chat_id
        assert not caller.is_closed
        await caller.hang_up()


async def test_transfer_moves_the_call_with_dial_and_ends_the_stream(tmp_path: Path) -> None:
    """transfer_call → tool_response, the hand-off line is heard, then one REST update with <Dial> to the
    configured number; Twilio's stop follows, EVI is closed, and the call ended as transferred."""
    async with FakeTwilioRest(ACCOUNT_SID, "rest-token") as rest:
        overrides = {"twilio_account_sid": ACCOUNT_SID, "twilio_api_url": rest.url}
        async with call_center(tmp_path, **overrides) as (gw, sim, _tools):
            # The REST credentials are the gateway's Twilio auth token, as in production.
            rest.auth_token = gw.auth_token or ""
            async with TwilioCaller(caller_config(gw)) as caller:
                rest.add(caller)
                session = await connected(caller, sim)
                await session.send_message(tool_call("transfer_call", {"destination": "sales"}, "x1"))
                answer = await session.wait_message("tool_response", 5)
                assert answer.content == "Transferring the caller to sales now."  # type: ignore[union-attr]
                heard_before = caller.record.heard_audio_ms
                await session.wait_said(await session.say(speechlike_pcm16(700, 24000, seed=4), 24000))
                assert await caller.wait_closed(10)
                assert caller.record.heard_audio_ms >= heard_before + 680  # the hand-off line was heard
                assert len(rest.requests) == 1
                twiml = rest.requests[0]["Twiml"]
                assert "<Dial><Number>+15551230000</Number></Dial>" in twiml
                assert caller.record.redirect_twiml == twiml
                await asyncio.wait_for(session.closed.wait(), 3)
                assert "stop" in caller.record.sent_events
            for _ in range(100):
                if not gw.state.active_calls:
                    break
                await asyncio.sleep(0.02)
            assert not gw.state.active_calls


async def test_the_sixth_call_over_a_cap_of_five_hears_the_busy_message(tmp_path: Path) -> None:
    """With five calls up, the sixth gets TwiML that speaks the busy message and hangs up; no EVI session opens."""
    async with call_center(tmp_path, max_concurrent_calls=5) as (gw, sim, _tools):
        callers = [TwilioCaller(caller_config(gw)) for _ in range(6)]
        try:
            for index, caller in enumerate(callers[:5]):
                await caller.__aenter__()
                await connected(caller, sim, index)
            sixth = callers[5]
            await sixth.__aenter__()
            with pytest.raises(DialError, match="no <Connect>"):
                await sixth.dial()
            assert sixth.record.twiml is not None and "<Hangup />" in sixth.record.twiml
            assert "All our agents are busy" in sixth.record.twiml
            assert len(sim.sessions) == 5 and gw.state.calls_busy == 1
        finally:
            for caller in callers:
                await caller.close()


async def test_the_gateways_duration_limit_speaks_a_goodbye_that_is_heard_in_full(tmp_path: Path) -> None:
    """When the gateway's own limit (EVI's plus a grace) is reached it asks EVI to say the line's goodbye, lets it
    be heard to the end, then closes the stream."""
    overrides = {"max_call_duration_s": 1.0, "max_duration_grace_s": 0.5}
    async with call_center(tmp_path, **overrides) as (gw, sim, _tools), TwilioCaller(caller_config(gw)) as caller:
        session = await connected(caller, sim)
        request = await session.wait_message("assistant_input", 5)
        assert "time limit" in request.text  # type: ignore[union-attr]
        heard_before = caller.record.heard_audio_ms
        await session.wait_said(await session.say(speechlike_pcm16(1200, 24000, seed=5), 24000))
        assert await caller.wait_closed(10)
        assert caller.record.closed_by == "gateway"
        assert caller.record.heard_audio_ms >= heard_before + 1180


async def test_evis_own_max_duration_goodbye_is_heard_before_the_line_closes() -> None:
    """EVI's limit comes first (the gateway's sits a grace period later): its on_max_duration_timeout line is
    heard in full, then EVI closes and the gateway ends the call."""
    config = AgentConfig(cheap=True, max_duration_s=2.0, inactivity_timeout_s=None, realtime_factor=0.0)
    config = replace(config, script=replace(config.script, greeting=""))
    async with (
        EviSimulator(agent_config=config) as sim,
        running_gateway(sim.url, max_call_duration_s=2.0, max_duration_grace_s=30.0) as gw,
        TwilioCaller(replace(caller_config(gw), audio_ulaw=b"")) as caller,  # a silent caller: no other turns
    ):
        await caller.dial()
        assert await caller.wait_closed(15)
        session = sim.sessions[0]
        assert session.close_reason == "max_duration_timeout"
        said = [m for m in session.received if m.type == "assistant_input"]
        assert said == []  # the gateway's own goodbye was not needed
        # The cheap voice speaks each sentence as a tone of 65 ms per character, in whole 20 ms.
        goodbye_ms = sum(
            65 * len(sentence) // 20 * 20 for sentence in split_sentences(config.script.max_duration_message)
        )
        assert caller.record.heard_audio_ms == pytest.approx(goodbye_ms, abs=40)


async def test_a_hang_up_before_its_goodbye_still_lets_the_goodbye_play(tmp_path: Path) -> None:
    """EVI's hang_up tool_call arriving before the goodbye's audio: the goodbye still plays in full, then the call
    ends."""
    async with call_center(tmp_path) as (gw, sim, _tools), TwilioCaller(caller_config(gw)) as caller:
        session = await connected(caller, sim)
        hang_up = evi.ToolCallMessage(
            name="hang_up", parameters="{}", tool_call_id="h1", response_required=False, tool_type="builtin"
        )
        await session.send_message(hang_up)
        await asyncio.sleep(0.3)
        heard_before = caller.record.heard_audio_ms
        await session.wait_said(await session.say(speechlike_pcm16(1000, 24000, seed=6), 24000))
        assert await caller.wait_closed(10)
        assert caller.record.heard_audio_ms >= heard_before + 980
        await asyncio.wait_for(session.closed.wait(), 3)


async def test_a_supervisor_can_make_the_agent_speak_on_a_live_call(tmp_path: Path) -> None:
    """GET /calls lists the live call with its chat id; POST /calls/{sid}/say reaches EVI as assistant_input;
    both refuse a missing or wrong bearer token."""
    async with (
        call_center(tmp_path, admin_token="admin-secret") as (gw, sim, _tools),
        TwilioCaller(caller_config(gw)) as caller,
        aiohttp.ClientSession() as http,
    ):
        session = await connected(caller, sim)
        auth = {"Authorization": "Bearer admin-secret"}
        async with http.get(gw.base_url + "/calls") as resp:
            assert resp.status == 401
        async with http.get(gw.base_url + "/calls", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        async with http.get(gw.base_url + "/calls", headers=auth) as resp:
            listed = (await resp.json())["calls"]
        assert [(c["call_sid"], c["chat_id"], c["to"]) for c in listed] == [
            (caller.config.call_sid, session.chat_id, CALLED)
        ]
        url = f"{gw.base_url}/calls/{caller.config.call_sid}/say"
        async with http.post(url, json={"text": "A supervisor is listening."}, headers=auth) as resp:
            assert resp.status == 202
        said = await session.wait_message("assistant_input", 5)
        assert said.text == "A supervisor is listening."  # type: ignore[union-attr]
        async with http.post(url, json={"text": ""}, headers=auth) as resp:
            assert resp.status == 422
        async with http.post(gw.base_url + "/calls/CAnope/say", json={"text": "hi"}, headers=auth) as resp:
            assert resp.status == 404
        await caller.hang_up()


async def test_admin_routes_are_off_without_a_token(tmp_path: Path) -> None:
    """With no GATEWAY_ADMIN_TOKEN the admin routes do not exist."""
    async with call_center(tmp_path) as (gw, _sim, _tools), aiohttp.ClientSession() as http:
        resp = await http.get(gw.base_url + "/calls")
        assert resp.status == 404
        resp.release()


TOOL_SCRIPT = """
[agent]
greeting = ""
[[rules]]
name = "order by keypad"
pattern = "keypad 5"
tool = "lookup_order"
arguments = { order_id = "A17" }
reply = "Here is what I found: {tool_result}"
"""


async def test_the_agents_tool_call_is_answered_by_the_endpoint_and_heard(tmp_path: Path) -> None:
    """The EVI agent calls a function tool (a keypress made the caller's turn); the gateway runs it against the
    tool server and the agent speaks the answer, which the caller hears."""
    config = AgentConfig(
        script=parse_agent_script(TOOL_SCRIPT), cheap=True, inactivity_timeout_s=None, realtime_factor=0.0
    )
    behaviours = {"lookup_order": ToolBehaviour(content="it ships on Friday")}
    async with (
        EviSimulator(agent_config=config) as sim,
        ToolServer(SECRET, behaviours) as tools,
    ):
        path = numbers_file(tmp_path, tools)
        async with (
            running_gateway(sim.url, numbers_file=str(path), tool_signing_secret=SECRET.decode()) as gw,
            TwilioCaller(caller_config(gw)) as caller,
        ):
            await caller.dial()
            session = await sim.wait_session()
            await session.wait_message("session_settings")
            caller.send(SendDtmf("5"))
            answer = await session.wait_message("tool_response", 5)
            assert answer.content == "it ships on Friday"  # type: ignore[union-attr]
            assert await caller.wait_for(lambda r: r.heard_audio_ms > 500, 10)
            assert [c.body["parameters"] for c in tools.calls] == [{"order_id": "A17"}]
            assert any("it ships on Friday" in text for role, text in _history(sim, session))
            await caller.hang_up()


def _history(sim: EviSimulator, session: EviSession) -> list[tuple[str, str]]:
    assert sim.voice_agent is not None
    return list(sim.voice_agent.conversations[session.chat_group_id].history)
