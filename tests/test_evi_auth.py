"""EVI access tokens and EVI's chat cap, through real sockets: the gateway, the EVI simulator, the caller."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from pydantic import SecretStr

from gateway.adapters.evi_client import EviConnector
from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.errors import UpstreamConnectError
from gateway.settings import load_settings, prompt
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway
from gateway.simulator.loopback import serve_app
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire.upstream import SessionStart

KEY, SECRET = "key-1", "secret-1"
SESSION = SessionStart(input_rate_hz=8000, channels=1, variables={}, custom_session_id=None)


def caller_config(gw: RunningGateway) -> CallerConfig:
    """A caller saying half a second, then staying on."""
    audio = pcm16_to_ulaw(speechlike_pcm16(500, 8000, seed=1))
    return CallerConfig(webhook_url=gw.webhook_url, auth_token=gw.auth_token, audio_ulaw=audio, hangup_after_ms=30_000)


async def test_calls_use_access_tokens_and_refresh_them_before_they_expire() -> None:
    """With HUME_SECRET_KEY the gateway fetches an access token, reuses it while it is fresh, and fetches a new
    one once it is within the refresh margin of expiring; the key itself never reaches the chat socket."""
    async with (
        EviSimulator(api_key=KEY, secret_key=SECRET, token_ttl_s=63.0) as sim,
        running_gateway(sim.url, hume_api_key=KEY, hume_secret_key=SECRET) as gw,
    ):
        loop = asyncio.get_running_loop()
        first_s = loop.time()
        for index in range(3):
            if index == 2:  # wait until the token is within the 60 s refresh margin of its 63 s life
                await asyncio.sleep(max(0.0, first_s + 3.2 - loop.time()))
            async with TwilioCaller(caller_config(gw)) as caller:
                await caller.dial()
                session = await sim.wait_session(index)
                await session.wait_message("session_settings")
                assert session.auth == "token" and "X-Hume-Api-Key" not in session.headers
                await caller.hang_up()
        assert sim.tokens_issued == 2


async def test_a_malformed_token_answer_is_a_clear_connect_error() -> None:
    """A token endpoint answering without access_token fails the connect with a clear error, not a crash."""
    app = web.Application()
    app.router.add_post("/oauth2-cc/token", _token_without_access_token)
    runner, port = await serve_app(app)
    try:
        settings = load_settings(
            None,
            environ={},
            evi_url=f"ws://127.0.0.1:{port}/v0/evi/chat",
            hume_api_key=SecretStr(KEY),
            hume_secret_key=SecretStr(SECRET),
        )
        with pytest.raises(UpstreamConnectError, match="no access_token"):
            await EviConnector(settings).connect(SESSION)
    finally:
        await runner.cleanup()


async def _token_without_access_token(_request: web.Request) -> web.Response:
    return web.json_response({"token": "x", "expires_in": 60})


async def test_a_call_refused_by_evis_chat_cap_hears_an_apology() -> None:
    """When EVI refuses a chat (429: its concurrency cap) the caller hears the apology, then the line closes."""
    async with (
        EviSimulator(api_key=KEY, max_sessions=1) as sim,
        running_gateway(sim.url, hume_api_key=KEY) as gw,
        TwilioCaller(caller_config(gw)) as first,
        TwilioCaller(caller_config(gw)) as second,
    ):
        await first.dial()
        await (await sim.wait_session(0)).wait_message("session_settings")
        await second.dial()
        assert await second.wait_closed(15)
        assert second.record.closed_by == "gateway" and sim.refused_busy == 1
        apology_ms = len(prompt("apology")) / 8
        assert second.record.heard_audio_ms == pytest.approx(apology_ms, abs=20)
        assert not first.is_closed
        await first.hang_up()
