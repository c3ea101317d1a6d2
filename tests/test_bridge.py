"""A phone call through the real gateway over loopback sockets: caller emulator ⇄ gateway ⇄ EVI simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import soxr

from gateway.codecs.framing import FRAME_MS
from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.harness import RunningGateway
from gateway.simulator.wavgen import speechlike_pcm16

MIN_SNR_DB = 30.0  # μ-law alone limits speech to ~38 dB (docs/audio-path.md "Quality"); 30 leaves room for alignment


def caller_config(gw: RunningGateway, audio_ms: int = 1000, **kw: Any) -> CallerConfig:
    """A caller saying ``audio_ms`` of speech-like audio, then staying on the line."""
    audio = pcm16_to_ulaw(speechlike_pcm16(audio_ms, 8000, seed=3))
    return CallerConfig(
        webhook_url=gw.webhook_url, auth_token=gw.auth_token, audio_ulaw=audio, hangup_after_ms=60_000, **kw
    )


async def connected(caller: TwilioCaller, sim: EviSimulator) -> EviSession:
    """Dial and wait for the gateway's EVI session to have its audio settings."""
    await caller.dial()
    session = await sim.wait_session()
    await session.wait_message("session_settings")
    return session


def snr_db(reference: np.ndarray, heard: np.ndarray) -> float:
    """SNR of ``heard`` against ``reference`` after aligning them by cross-correlation (±40 samples)."""
    best = -np.inf
    for lag in range(-40, 41):
        a = reference[max(0, -lag) : len(reference) - max(0, lag)]
        b = heard[max(0, lag) : max(0, lag) + len(a)]
        n = min(len(a), len(b))
        a, b = a[40 : n - 40], b[40 : n - 40]
        noise = np.sum((a - b) ** 2)
        best = max(best, 10 * np.log10(np.sum(a**2) / max(noise, 1e-9)))
    return float(best)


async def test_caller_audio_reaches_evi_bit_exact(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """What the caller says arrives at EVI as linear16/8000/1, sample for sample, after session_settings."""
    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        await session.wait_audio_ms(1500)
        sent = ulaw_to_pcm16(bytes(caller.record.sent_ulaw))
        received = bytes(session.audio_pcm)
        assert received == sent[: len(received)]
        assert session.declared_audio is not None
        assert (session.declared_audio.rate_hz, session.declared_audio.channels) == (8000, 1)
        assert session.received[0].type == "session_settings"
        await caller.hang_up()


@pytest.mark.parametrize("rate_hz", [24000, 48000])
async def test_evi_audio_reaches_the_caller_resampled(
    gateway: RunningGateway, evi_sim: EviSimulator, rate_hz: int
) -> None:
    """EVI's WAV audio is heard as 8 kHz μ-law of the same duration (±1 frame) and content (SNR ≥ 30 dB)."""
    source = speechlike_pcm16(1500, rate_hz, seed=11)
    async with TwilioCaller(caller_config(gateway, audio_ms=200)) as caller:
        session = await connected(caller, evi_sim)
        start_ms = caller.media_time_ms
        await session.wait_said(await session.say(source, rate_hz))
        assert await caller.wait_for(lambda r: r.heard_audio_ms >= 1500 - FRAME_MS, 10)
        await asyncio.sleep(0.3)
        assert abs(caller.record.heard_audio_ms - 1500) <= FRAME_MS
        first = caller.record.first_heard_ms_after(start_ms)
        assert first is not None
        heard = np.frombuffer(ulaw_to_pcm16(caller.record.heard_between(first, first + 1500)), "<i2")
        reference = soxr.resample(np.frombuffer(source, "<i2").astype(np.float32), rate_hz, 8000, quality="HQ")
        assert snr_db(reference.astype(np.float64), heard.astype(np.float64)) >= MIN_SNR_DB
        assert caller.record.protocol_violations == []
        await caller.hang_up()


async def test_barge_in_stops_evi_voice_at_once(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """After user_interruption the caller gets a clear and hears nothing more of that response."""
    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        response = await session.say(speechlike_pcm16(5000, 24000, seed=5), 24000)
        assert await caller.wait_for(lambda r: r.heard_audio_ms >= 500, 10)
        await session.interrupt()
        assert await caller.wait_for(lambda r: len(r.clears) == 1, 5)
        heard_at_clear = caller.record.heard_audio_ms
        await caller.wait_media_ms(caller.media_time_ms + 500, 5)
        assert caller.record.heard_audio_ms == heard_at_clear
        assert heard_at_clear < 5000 - 500
        # EVI generated the whole reply long before it played: the rest was queued and is never heard.
        assert (await session.wait_said(response)).chunks_sent == 25
        # The line is still up: a new response plays.
        await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=6), 24000))
        assert await caller.wait_for(lambda r: r.heard_audio_ms >= heard_at_clear + 280, 5)
        await caller.hang_up()


async def test_caller_hang_up_closes_evi_within_a_second(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """When the caller hangs up (stop, then close), the EVI socket is closed within 1 s."""
    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        await caller.hang_up()
        await asyncio.wait_for(session.closed.wait(), 1.0)


@pytest.mark.parametrize("fault", ["close", "error"])
async def test_evi_ending_closes_the_twilio_socket(gateway: RunningGateway, evi_sim: EviSimulator, fault: str) -> None:
    """EVI closing normally, or sending an error it cannot go on from, ends the call: the stream is closed."""
    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        if fault == "close":
            await session.close(1000, "bye")
        else:
            await session.send_error("I0118", "transcription_disconnected", "Transcription socket disconnected.")
        assert await caller.wait_closed(8)
        assert caller.record.closed_by == "gateway"


async def test_evi_drop_is_resumed_in_the_same_chat_group(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """EVI's TCP connection dropping mid-call: the gateway opens one resumed chat of the same group, the
    caller's stream stays open, caller audio reaches the new chat and its audio is heard."""
    async with TwilioCaller(caller_config(gateway)) as caller:
        first = await connected(caller, evi_sim)
        first.drop()
        second = await evi_sim.wait_session(1, 5)
        await second.wait_message("session_settings")
        assert second.resumed_chat_group_id == first.chat_group_id == second.chat_group_id
        await second.wait_audio_ms(200)
        heard_ms = caller.record.heard_audio_ms
        await second.wait_said(await second.say(speechlike_pcm16(500, 24000, seed=7), 24000))
        assert await caller.wait_for(lambda r: r.heard_audio_ms >= heard_ms + 480, 5)
        assert not caller.is_closed and len(evi_sim.sessions) == 2
        await caller.hang_up()


async def test_a_non_fatal_evi_error_leaves_the_call_up(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """An EVI error about one message is logged; the call goes on and audio still plays."""
    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        await session.send_error("E0101", "invalid_message", "Unexpected field.")
        await session.wait_said(await session.say(speechlike_pcm16(400, 24000, seed=8), 24000))
        assert await caller.wait_for(lambda r: r.heard_audio_ms >= 380, 5)
        assert not caller.is_closed and not session.closed.is_set()
        await caller.hang_up()


async def test_evi_goodbye_is_heard_in_full_before_the_line_closes(
    gateway: RunningGateway, evi_sim: EviSimulator
) -> None:
    """When EVI says something and closes, the caller hears all of it before the stream ends."""
    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        await session.wait_said(await session.say(speechlike_pcm16(1200, 24000, seed=8), 24000))
        await session.close(1000, "hang_up")
        assert await caller.wait_closed(10)
        assert abs(caller.record.heard_audio_ms - 1200) <= FRAME_MS


async def test_dtmf_reaches_evi_as_text(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """A keypress on the phone arrives at EVI as a user_input message."""
    from gateway.simulator.caller import SendDtmf

    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        caller.send(SendDtmf("7"))
        message = await session.wait_message("user_input")
        assert getattr(message, "text", None) == "[keypad 7]"
        await caller.hang_up()


async def test_concurrent_calls_are_independent(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """Two calls at once each get their own EVI session and their own audio."""
    async with TwilioCaller(caller_config(gateway)) as a, TwilioCaller(caller_config(gateway)) as b:
        await a.dial()
        await b.dial()
        s0, s1 = await evi_sim.wait_session(0), await evi_sim.wait_session(1)
        await s0.wait_message("session_settings")
        await s1.wait_message("session_settings")
        await s0.wait_said(await s0.say(speechlike_pcm16(400, 24000, seed=1), 24000))
        assert await a.wait_for(lambda r: r.heard_audio_ms >= 380, 5) or await b.wait_for(
            lambda r: r.heard_audio_ms >= 380, 1
        )
        heard = sorted([a.record.heard_audio_ms, b.record.heard_audio_ms])
        assert heard[0] == 0 and heard[1] >= 380
        await a.hang_up()
        await b.hang_up()


async def test_every_message_sent_to_evi_validates_against_the_official_sdk(
    gateway: RunningGateway, evi_sim: EviSimulator
) -> None:
    """Each frame the gateway sent in a call (settings, audio, keypad text, tool reply) is a valid SDK PublishEvent
    of the expected class, with no field the SDK does not know."""
    from hume.core.pydantic_utilities import parse_obj_as
    from hume.empathic_voice.chat.types import PublishEvent

    from gateway.simulator.caller import SendDtmf
    from gateway.wire import evi_messages as evi

    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        await session.wait_audio_ms(300)
        caller.send(SendDtmf("1"))
        await session.wait_message("user_input")
        tool = evi.ToolCallMessage(
            name="hang_up", parameters="{}", tool_call_id="t1", response_required=True, tool_type="function"
        )
        await session.send_message(tool)
        await session.wait_message("tool_response")
        assert await caller.wait_closed(5)
    kinds = set()
    for message in session.received:
        assert not isinstance(message, evi.UnknownMessage)
        assert message.model_extra == {}
        wire = message.to_dict()
        parsed: Any = parse_obj_as(PublishEvent, wire)  # type: ignore[arg-type]
        assert type(parsed).__name__ == type(message).__name__
        assert (parsed.model_extra or {}) == {}
        kinds.add(message.type)
    assert kinds == {"session_settings", "audio_input", "user_input", "tool_response"}


async def test_hang_up_tool_ends_the_call_after_the_goodbye(gateway: RunningGateway, evi_sim: EviSimulator) -> None:
    """EVI's hang_up tool call after a goodbye: the caller hears the whole goodbye, then the line closes."""
    from gateway.wire import evi_messages as evi

    async with TwilioCaller(caller_config(gateway)) as caller:
        session = await connected(caller, evi_sim)
        await session.wait_said(await session.say(speechlike_pcm16(1000, 24000, seed=12), 24000))
        tool = evi.ToolCallMessage(
            name="hang_up", parameters="{}", tool_call_id="t2", response_required=False, tool_type="builtin"
        )
        await session.send_message(tool)
        assert await caller.wait_closed(10)
        assert abs(caller.record.heard_audio_ms - 1000) <= FRAME_MS
        await asyncio.wait_for(session.closed.wait(), 2)
