"""Security and bad input over real sockets: forged requests are refused before EVI is touched; bad frames
on either socket are logged and survived (or end that one call cleanly) while other calls carry on."""

from __future__ import annotations

import asyncio
import base64
import logging

import aiohttp
import pytest

from gateway.cli import main as cli_main
from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.errors import DialError
from gateway.simulator.caller import CallerConfig, SendBinary, SendText, TwilioCaller
from gateway.simulator.caller_dial import open_stream
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw
from gateway.wire.twilio_signature import sign_request


def config(gw: RunningGateway, **kw: object) -> CallerConfig:
    """A caller who talks for a second then stays on the line."""
    audio = pcm16_to_ulaw(speechlike_pcm16(1000, 8000, seed=4))
    settings: dict[str, object] = {"auth_token": gw.auth_token, "audio_ulaw": audio, "hangup_after_ms": 60_000}
    return CallerConfig(webhook_url=gw.webhook_url, **{**settings, **kw})  # type: ignore[arg-type]


async def live_session(caller: TwilioCaller, sim: EviSimulator, index: int = 0) -> EviSession:
    """Dial and wait until the EVI session has its settings."""
    await caller.dial()
    session = await sim.wait_session(index)
    await session.wait_message("session_settings")
    return session


# ------------------------------------------------------------------------------------------ security


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_unsigned_or_forged_webhook_is_refused(
    gateway: RunningGateway, evi_sim: EviSimulator, token: str | None
) -> None:
    """A webhook without a valid X-Twilio-Signature gets 403 and no EVI connection is attempted."""
    with pytest.raises(DialError) as info:
        async with TwilioCaller(config(gateway, auth_token=token)) as caller:
            await caller.dial()
    assert (info.value.stage, info.value.status) == ("webhook", 403)
    assert evi_sim.connection_attempts == 0


@pytest.mark.parametrize("signature", [None, "forged", "https"])
async def test_unsigned_or_forged_stream_upgrade_is_refused(
    gateway: RunningGateway, evi_sim: EviSimulator, signature: str | None
) -> None:
    """The Media Stream upgrade needs a signature over the ws URL: otherwise 403 and no EVI connection."""
    assert gateway.auth_token is not None
    headers = {}
    if signature == "forged":
        headers["X-Twilio-Signature"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    elif signature == "https":  # signed over the URL the server sees, not the one Twilio dialled
        https_url = gateway.media_url.replace("ws://", "http://")
        headers["X-Twilio-Signature"] = sign_request(gateway.auth_token, https_url, {})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(gateway.media_url, headers=headers)
    assert info.value.status == 403
    assert evi_sim.connection_attempts == 0


async def raw_stream(gw: RunningGateway, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    """A correctly signed Media Stream socket, driven by hand."""
    assert gw.auth_token is not None
    signature = sign_request(gw.auth_token, gw.media_url, {})
    return await http.ws_connect(gw.media_url, headers={"X-Twilio-Signature": signature})


async def test_bad_stream_token_closes_before_evi(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """A signed upgrade whose start carries a forged token is closed (1008) and EVI is never contacted."""
    async with aiohttp.ClientSession() as http:
        ws = await raw_stream(gateway, http)
        await ws.send_str(tw.connected_message())
        await ws.send_str(
            tw.start_message(
                sequence_number=1,
                stream_sid="MZ" + "a" * 32,
                account_sid="AC" + "b" * 32,
                call_sid="CA" + "c" * 32,
                custom_parameters={"token": "v1.forged"},
            )
        )
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
    assert evi_sim.connection_attempts == 0


async def test_media_before_start_closes_the_stream(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """Media before start ends that stream cleanly without any EVI session."""
    async with aiohttp.ClientSession() as http:
        ws = await raw_stream(gateway, http)
        await ws.send_str(tw.connected_message())
        await ws.send_str(
            tw.inbound_media_message(
                sequence_number=1, stream_sid="MZ" + "a" * 32, chunk=1, timestamp_ms=0, ulaw=b"\xff" * 160
            )
        )
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
    assert evi_sim.connection_attempts == 0


def test_serve_refuses_to_start_without_a_twilio_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway serve` exits with an explanation when TWILIO_AUTH_TOKEN is unset and --insecure is not given."""
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    assert cli_main(["serve", "--port", "0"]) == 2
    assert "TWILIO_AUTH_TOKEN" in capsys.readouterr().err


async def test_the_evi_key_never_appears_in_logs_twiml_or_urls(caplog: pytest.LogCaptureFixture) -> None:
    """With logging at DEBUG, a whole call and a refused EVI session never show the API key."""
    secret = "sk-live-do-not-print-4242"
    caplog.set_level(logging.DEBUG)
    async with (
        EviSimulator(api_key=secret) as sim,
        running_gateway(sim.url, hume_api_key=secret) as gw,
        TwilioCaller(config(gw)) as caller,
    ):
        session = await live_session(caller, sim)
        assert session.auth == "header"
        assert secret not in str(session.query) and secret not in (caller.record.twiml or "")
        await caller.hang_up()
    async with (
        EviSimulator(api_key="other") as sim,
        running_gateway(sim.url, hume_api_key=secret) as gw,
        TwilioCaller(config(gw)) as caller,
    ):
        await caller.dial()
        assert await caller.wait_closed(5)
    assert "EVI refused the session: HTTP 401" in caplog.text
    assert secret not in caplog.text


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "frame",
    [
        SendText("this is not json"),
        SendText('{"event": "surprise", "streamSid": "MZx"}'),
        SendText("[1, 2, 3]"),
        SendText(
            '{"event":"media","sequenceNumber":"9","streamSid":"MZ' + "f" * 32 + '",'
            '"media":{"track":"inbound","chunk":"9","timestamp":"180","payload":"/w=="}}'
        ),
        SendText('{"event":"media","sequenceNumber":"9","streamSid":"MZ1","media":{"payload":"%%%"}}'),
        SendBinary(b"\x00\x01binary"),
    ],
    ids=["not-json", "unknown-event", "not-an-object", "wrong-stream-sid", "bad-base64", "binary"],
)
async def test_bad_twilio_frames_are_survived(
    gateway: RunningGateway, evi_sim: EviSimulator, frame: SendText | SendBinary
) -> None:
    """A bad frame mid-call is logged and dropped; caller audio keeps flowing to EVI and EVI audio to the caller."""
    async with TwilioCaller(config(gateway)) as caller:
        session = await live_session(caller, evi_sim)
        caller.send(frame)
        before_ms = session.audio_ms
        await session.wait_audio_ms(before_ms + 200)
        await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=2), 24000))
        assert await caller.wait_for(lambda r: r.heard_audio_ms >= 280, 5)
        assert not caller.is_closed
        await caller.hang_up()


async def test_huge_frame_ends_only_that_call(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """A frame over the size limit closes that stream and its EVI session; another call is untouched."""
    async with TwilioCaller(config(gateway)) as victim, TwilioCaller(config(gateway)) as bystander:
        await live_session(victim, evi_sim, 0)
        other = await live_session(bystander, evi_sim, 1)
        victim.send(SendText('{"event":"media","x":"' + "A" * 200_000 + '"}'))
        assert await victim.wait_closed(5)
        await asyncio.wait_for(evi_sim.sessions[0].closed.wait(), 2)
        before_ms = other.audio_ms
        await other.wait_audio_ms(before_ms + 300)
        await other.wait_said(await other.say(speechlike_pcm16(300, 24000, seed=3), 24000))
        assert await bystander.wait_for(lambda r: r.heard_audio_ms >= 280, 5)
        await bystander.hang_up()


@pytest.mark.parametrize(
    "frame",
    [
        "not json at all",
        '{"type": "brand_new_message", "x": 1}',
        evi.AudioOutput(id="bad", index=0, data=base64.b64encode(b"RIFF....WAVEnot a wav").decode()).to_json(),
        '{"type": "audio_output", "id": "bad", "index": 0, "data": "@@not-base64@@"}',
        b"\x00binary-from-evi",
    ],
    ids=["not-json", "unknown-type", "invalid-wav", "bad-base64", "binary"],
)
async def test_bad_evi_frames_are_survived(gateway: RunningGateway, evi_sim: EviSimulator, frame: str | bytes) -> None:
    """A bad EVI frame is logged and skipped; the call goes on and later EVI audio is heard."""
    async with TwilioCaller(config(gateway)) as caller:
        session = await live_session(caller, evi_sim)
        await session.send_raw(frame)
        await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=9), 24000))
        assert await caller.wait_for(lambda r: r.heard_audio_ms >= 280, 5)
        assert caller.record.protocol_violations == []
        assert not caller.is_closed
        await caller.hang_up()


async def test_calls_over_capacity_hear_the_busy_message_without_evi(evi_sim: EviSimulator) -> None:
    """Beyond max_concurrent_calls the webhook answers with the busy message and a hang-up (no stream, no EVI)."""
    async with (
        running_gateway(evi_sim.url, max_concurrent_calls=1) as gw,
        TwilioCaller(config(gw)) as first,
        TwilioCaller(config(gw)) as second,
    ):
        await live_session(first, evi_sim)
        with pytest.raises(DialError) as info:
            await second.dial()
        assert info.value.stage == "twiml"
        assert second.record.twiml is not None
        assert "<Say>All our agents are busy. Please call again later.</Say><Hangup />" in second.record.twiml
        assert evi_sim.connection_attempts == 1
        await first.hang_up()


async def test_a_stream_over_capacity_is_still_refused_at_the_upgrade(evi_sim: EviSimulator) -> None:
    """The WebSocket upgrade keeps its own check: a stream no webhook admitted gets 503 when the gateway is full."""
    async with (
        running_gateway(evi_sim.url, max_concurrent_calls=1) as gw,
        TwilioCaller(config(gw)) as first,
        aiohttp.ClientSession() as http,
    ):
        await live_session(first, evi_sim)
        assert first.record.stream_url is not None
        with pytest.raises(DialError) as info:
            await open_stream(http, first.record.stream_url, auth_token=gw.auth_token, timeout_s=5)
        assert (info.value.stage, info.value.status) == ("stream", 503)
        assert evi_sim.connection_attempts == 1
        await first.hang_up()


async def test_healthz_reports_active_calls(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """GET /healthz answers ok with the number of calls in progress."""
    async with aiohttp.ClientSession() as http, TwilioCaller(config(gateway)) as caller:
        await live_session(caller, evi_sim)
        async with http.get(gateway.base_url + "/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["active_calls"] == 1
        await caller.hang_up()


@pytest.mark.parametrize("signed", [True, False])
async def test_stream_status_callback_is_signed(gateway: RunningGateway, signed: bool) -> None:
    """Twilio's stream statusCallback is accepted when signed (204) and refused otherwise (403)."""
    assert gateway.auth_token is not None
    url = gateway.base_url + "/twilio/stream-status"
    form = {"CallSid": "CA1", "StreamSid": "MZ1", "StreamEvent": "stream-error", "StreamError": "31920 handshake"}
    headers = {"X-Twilio-Signature": sign_request(gateway.auth_token, url, form)} if signed else {}
    async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as resp:
        assert resp.status == (204 if signed else 403)
