"""The EVI-compatible simulator and its test audio, checked with a plain WebSocket client and the hume SDK."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from hume.core.pydantic_utilities import parse_obj_as
from hume.empathic_voice import types as sdk
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from gateway.errors import AudioFormatError, SessionClosedError
from gateway.simulator.evi import MAX_MESSAGE_BYTES, EviSession, EviSimulator
from gateway.simulator.evi_rest_store import RestError
from gateway.simulator.wavgen import speechlike_pcm16, tone_pcm16, wav_bytes
from gateway.wire.evi_messages import UnknownMessage, UserInput

KEY = "test-key"
HEADERS = {"X-Hume-Api-Key": KEY}
SDK_CLASS: dict[str, type[Any]] = {
    "chat_metadata": sdk.ChatMetadata,
    "assistant_message": sdk.AssistantMessage,
    "audio_output": sdk.AudioOutput,
    "assistant_prosody": sdk.AssistantProsody,
    "assistant_end": sdk.AssistantEnd,
    "user_interruption": sdk.UserInterruption,
    "error": sdk.WebSocketError,
}


@pytest.fixture
async def sim() -> AsyncIterator[EviSimulator]:
    async with EviSimulator(api_key=KEY) as simulator:
        yield simulator


async def recv_json(ws: ClientConnection, timeout_s: float = 5.0) -> dict[str, Any]:
    """Receive one frame, check it parses with the SDK to the class its type names, return the object."""
    async with asyncio.timeout(timeout_s):
        frame = await ws.recv()
    obj = json.loads(frame)
    assert isinstance(obj, dict)
    parsed: object = parse_obj_as(sdk.SubscribeEvent, obj)  # type: ignore[arg-type]
    assert isinstance(parsed, SDK_CLASS[obj["type"]]), (obj["type"], type(parsed))
    return obj


async def open_chat(sim: EviSimulator, query: str = "") -> tuple[ClientConnection, EviSession]:
    ws = await connect(sim.url + query, additional_headers=HEADERS, max_size=MAX_MESSAGE_BYTES)
    assert (await recv_json(ws))["type"] == "chat_metadata"
    return ws, sim.sessions[-1]  # appended before chat_metadata is sent


async def read_turn(ws: ClientConnection) -> list[dict[str, Any]]:
    """Messages up to and including the next assistant_end."""
    out: list[dict[str, Any]] = []
    while not out or out[-1]["type"] != "assistant_end":
        out.append(await recv_json(ws))
    return out


def wav_pcm(data_b64: str) -> tuple[bytes, int, int]:
    with wave.open(io.BytesIO(base64.b64decode(data_b64)), "rb") as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate(), wav.getnchannels()


def audio_input(pcm: bytes) -> str:
    return json.dumps({"type": "audio_input", "data": base64.b64encode(pcm).decode()})


SETTINGS_8K = json.dumps(
    {"type": "session_settings", "audio": {"encoding": "linear16", "sample_rate": 8000, "channels": 1}}
)

# --- handshake (evi-protocol.md §1) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers"),
    [("", {}), ("", {"X-Hume-Api-Key": "wrong"}), ("?api_key=wrong", {}), ("?access_token=not-minted", {})],
)
async def test_bad_credentials_get_401(sim: EviSimulator, query: str, headers: dict[str, str]) -> None:
    """A handshake without the right key or a minted token fails with HTTP 401 before the upgrade."""
    with pytest.raises(InvalidStatus) as info:
        await connect(sim.url + query, additional_headers=headers)
    assert info.value.response.status_code == 401
    assert (sim.connection_attempts, sim.rejected_attempts, sim.sessions) == (1, 1, [])


@pytest.mark.parametrize("method", ["header", "query", "token"])
async def test_good_credentials_open_a_session(sim: EviSimulator, method: str) -> None:
    """The API key in the header or query, or a minted access token, opens a session recording how."""
    query = {"header": "", "query": f"?api_key={KEY}", "token": f"?access_token={sim.mint_access_token()}"}
    headers = HEADERS if method == "header" else {}
    async with connect(sim.url + query[method], additional_headers=headers) as ws:
        assert (await recv_json(ws))["type"] == "chat_metadata"
        session = await sim.wait_session(0)
    assert session.auth == method
    assert (sim.connection_attempts, sim.rejected_attempts) == (1, 0)


async def test_other_paths_get_404(sim: EviSimulator) -> None:
    """Only /v0/evi/chat is served; other paths fail with HTTP 404 even with a valid key."""
    with pytest.raises(InvalidStatus) as info:
        await connect(sim.url.replace("/v0/evi/chat", "/v0/assistant/chat"), additional_headers=HEADERS)
    assert info.value.response.status_code == 404
    assert sim.rejected_attempts == 1


async def test_no_api_key_means_no_auth() -> None:
    """With api_key=None any client is accepted."""
    async with EviSimulator(api_key=None) as sim, connect(sim.url) as ws:
        assert (await recv_json(ws))["type"] == "chat_metadata"
        assert (await sim.wait_session()).auth == "none"


async def test_chat_metadata_first_and_query_recorded(sim: EviSimulator) -> None:
    """chat_metadata comes first; config, resume id, bracketed session settings and headers are recorded."""
    earlier, _ = await open_chat(sim)
    await earlier.close()
    group = sim.sessions[0].chat_group_id
    config = sim.store.configs.create({"name": "phone", "evi_version": "3"}, now_s=time.time())
    assert not isinstance(config, RestError)
    query = (
        f"?config_id={config.id}&resumed_chat_group_id={group}&session_settings%5Baudio%5D%5Bencoding%5D=linear16"
        "&session_settings%5Baudio%5D%5Bsample_rate%5D=16000&session_settings%5Baudio%5D%5Bchannels%5D=1"
        "&session_settings%5Bvariables%5D%5Bname%5D=Jo"
    )
    async with connect(sim.url + query, additional_headers=HEADERS) as ws:
        first = await recv_json(ws)
        session = await sim.wait_session(1)
    assert first["type"] == "chat_metadata"
    assert first["chat_group_id"] == group == session.chat_group_id
    assert first["chat_id"] == session.chat_id and first["request_id"] == session.request_id
    assert session.config_id == config.id and session.evi_config == config
    assert session.session_settings_query == {
        "audio": {"encoding": "linear16", "sample_rate": "16000", "channels": "1"},
        "variables": {"name": "Jo"},
    }
    assert session.declared_audio is not None and session.declared_audio.rate_hz == 16000
    assert session.headers["X-Hume-Api-Key"] == KEY


async def test_an_unknown_config_is_refused(sim: EviSimulator) -> None:
    """A config_id the simulator's REST store does not hold gets config_not_found, then a 1008 close."""
    async with connect(sim.url + "?config_id=cfg-nope", additional_headers=HEADERS) as ws:
        error = await recv_json(ws)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert (error["type"], error["slug"]) == ("error", "config_not_found") and "cfg-nope" in error["message"]
    assert ws.close_code == 1008


async def test_resuming_an_unknown_chat_group_is_refused(sim: EviSimulator) -> None:
    """A resumed_chat_group_id the server never issued gets an error, then a 1008 close."""
    async with connect(sim.url + "?resumed_chat_group_id=grp-9", additional_headers=HEADERS) as ws:
        error = await recv_json(ws)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert (error["type"], error["slug"]) == ("error", "chat_group_not_found")
    assert ws.close_code == 1008


async def test_wait_session_times_out_clearly(sim: EviSimulator) -> None:
    """Waiting for a session nobody opens raises TimeoutError naming the session index."""
    with pytest.raises(TimeoutError, match="#0"):
        await sim.wait_session(0, timeout_s=0.05)


# --- scripted speech (§3, §4.2, §5) --------------------------------------------------------------------


@pytest.mark.parametrize(("rate_hz", "extra_chunks"), [(24000, False), (48000, True)])
async def test_say_sends_a_valid_turn_with_exact_audio(rate_hz: int, extra_chunks: bool) -> None:
    """A turn is assistant_message, audio_output 0..n (WAVs at the asked rate, exact PCM), prosody, end."""
    pcm = speechlike_pcm16(1030, rate_hz, seed=7)
    async with EviSimulator(api_key=KEY, output_rate_hz=rate_hz, chunk_ms=200) as sim:
        ws, session = await open_chat(sim)
        rid = await session.say(pcm, text="Hello there.", extra_wav_chunks=extra_chunks)
        turn = await read_turn(ws)
        result = await session.wait_said(rid)
        await ws.close()
    types = [m["type"] for m in turn]
    assert types == ["assistant_message"] + ["audio_output"] * 6 + ["assistant_prosody", "assistant_end"]
    assert turn[0]["id"] == rid and turn[0]["message"] == {"role": "assistant", "content": "Hello there."}
    audio = [m for m in turn if m["type"] == "audio_output"]
    assert [m["index"] for m in audio] == list(range(6)) and {m["id"] for m in audio} == {rid}
    assert turn[-2]["id"] == rid
    decoded = [wav_pcm(m["data"]) for m in audio]
    assert {(r, c) for _, r, c in decoded} == {(rate_hz, 1)}
    assert b"".join(p for p, _, _ in decoded) == pcm
    assert all(len(p) == rate_hz * 2 // 5 for p, _, _ in decoded[:-1])
    assert (b"LIST" in base64.b64decode(audio[0]["data"])) is extra_chunks
    assert (result.outcome, result.chunks_sent) == ("completed", 6)


async def test_responses_are_sent_in_call_order(sim: EviSimulator) -> None:
    """Two responses started back to back do not interleave; the second starts after the first ends."""
    ws, session = await open_chat(sim)
    first = await session.say(tone_pcm16(440, 600, 24000), end_turn=False)
    second = await session.say(tone_pcm16(660, 400, 24000))
    turn = await read_turn(ws)
    await ws.close()
    ids = [m.get("id") for m in turn if m["type"] != "assistant_end"]
    assert ids == [first] * 5 + [second] * 4  # message + 3 chunks + prosody, then message + 2 + prosody


async def test_interrupt_stops_audio_and_sends_user_interruption() -> None:
    """After interrupt() no audio_output of the stopped response arrives, and user_interruption is sent."""
    async with EviSimulator(api_key=KEY, chunk_ms=20, realtime_factor=1.0) as sim:
        ws, session = await open_chat(sim)
        rid = await session.say(speechlike_pcm16(3000, 24000, seed=1))
        assert (await recv_json(ws))["type"] == "assistant_message"
        assert (await recv_json(ws))["type"] == "audio_output"
        await session.interrupt()
        result = await session.wait_said(rid)
        after = await session.say(tone_pcm16(500, 100, 24000))
        rest = await read_turn(ws)
        await ws.close()
    cut = [m["type"] for m in rest].index("user_interruption")
    assert all(m["type"] == "audio_output" and m["id"] == rid for m in rest[:cut])
    assert all(m.get("id") != rid for m in rest[cut:])
    assert rest[cut + 1]["type"] == "assistant_message" and rest[cut + 1]["id"] == after
    assert isinstance(rest[cut]["time"], int) and rest[cut]["time"] >= 0
    assert result.outcome == "interrupted" and 1 <= result.chunks_sent < 150


async def test_interrupt_can_end_the_turn(sim: EviSimulator) -> None:
    """interrupt(then_assistant_end=True) follows user_interruption with assistant_end."""
    ws, session = await open_chat(sim)
    await session.interrupt(then_assistant_end=True)
    assert [m["type"] for m in await read_turn(ws)] == ["user_interruption", "assistant_end"]
    await ws.close()


async def test_stall_stops_mid_response(sim: EviSimulator) -> None:
    """stall_after_chunks=n sends n chunks and then nothing more of that response."""
    ws, session = await open_chat(sim)
    rid = await session.say(tone_pcm16(440, 1000, 24000), stall_after_chunks=2)
    result = await session.wait_said(rid)
    await session.send_raw('{"type":"assistant_end"}')
    types = [m["type"] for m in await read_turn(ws)]
    await ws.close()
    assert types == ["assistant_message", "audio_output", "audio_output", "assistant_end"]
    assert (result.outcome, result.chunks_sent) == ("stalled", 2)


async def test_delay_first_audio(sim: EviSimulator) -> None:
    """delay_first_audio_ms holds the first audio_output back by at least that long after the text."""
    ws, session = await open_chat(sim)
    await session.say(tone_pcm16(440, 200, 24000), delay_first_audio_ms=150)
    assert (await recv_json(ws))["type"] == "assistant_message"
    loop = asyncio.get_running_loop()
    start_s = loop.time()
    assert (await recv_json(ws))["type"] == "audio_output"
    assert loop.time() - start_s >= 0.1
    await ws.close()


async def test_say_rejects_partial_frames(sim: EviSimulator) -> None:
    """say() with PCM that is not whole 16-bit frames raises AudioFormatError at once."""
    ws, session = await open_chat(sim)
    with pytest.raises(AudioFormatError, match="3 bytes"):
        await session.say(b"\x00\x01\x02")
    await ws.close()


# --- what the client sends (§2, §8) ------------------------------------------------------------------


async def test_session_settings_then_audio_is_recorded_exactly(sim: EviSimulator) -> None:
    """After session_settings declares audio, audio_input bytes are appended exactly and counted in ms."""
    ws, session = await open_chat(sim)
    pcm = speechlike_pcm16(500, 8000, seed=3)
    await ws.send(SETTINGS_8K)
    for i in range(0, len(pcm), 320):
        await ws.send(audio_input(pcm[i : i + 320]))
    await session.wait_audio_ms(500)
    await ws.close()
    assert bytes(session.audio_pcm) == pcm
    assert session.audio_ms == pytest.approx(500)
    assert session.declared_audio is not None and session.declared_audio.source == "session_settings"
    assert [m.type for m in session.received] == ["session_settings"] + ["audio_input"] * 25
    assert session.errors_sent == []


async def test_audio_declared_in_query_and_binary_frames(sim: EviSimulator) -> None:
    """Audio declared in the query is accepted, and binary frames count as raw audio."""
    query = "?session_settings%5Baudio%5D%5Bsample_rate%5D=16000&session_settings%5Baudio%5D%5Bchannels%5D=1"
    ws, session = await open_chat(sim, query)
    await ws.send(audio_input(b"\x01\x00" * 160))
    await ws.send(b"\x02\x00" * 160)
    await session.wait_audio_ms(20)
    await ws.close()
    assert bytes(session.audio_pcm) == b"\x01\x00" * 160 + b"\x02\x00" * 160
    assert session.binary_frames == 1


async def test_audio_before_declaring_is_an_error(sim: EviSimulator) -> None:
    """audio_input before any audio declaration gets an E0200 error and is not kept."""
    ws, session = await open_chat(sim)
    await ws.send(audio_input(b"\x00\x00" * 80))
    error = await recv_json(ws)
    await ws.close()
    assert (error["type"], error["code"]) == ("error", "E0200")
    assert error["request_id"] == session.request_id
    assert session.undeclared_audio_chunks == 1 and session.audio_pcm == bytearray()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "E0100"),
        ('{"type": "audio_input", "data": "@@not base64@@"}', "E0201"),
        ('{"type": "audio_input"}', "E0101"),
        ('{"type": 3}', "E0101"),
        ("[1, 2]", "E0101"),
    ],
)
async def test_bad_frames_get_errors(sim: EviSimulator, frame: str, code: str) -> None:
    """Non-JSON gets E0100, bad base64 E0201, and a malformed message E0101; the session stays open."""
    ws, session = await open_chat(sim)
    await ws.send(frame)
    error = await recv_json(ws)
    await ws.send('{"type": "user_input", "text": "still here"}')
    await session.wait_message("user_input")
    await ws.close()
    assert (error["type"], error["code"]) == ("error", code)
    assert [e.code for e in session.errors_sent] == [code]


async def test_unknown_types_are_recorded_and_ignored(sim: EviSimulator) -> None:
    """An unknown message type is recorded as UnknownMessage and answered with no error."""
    ws, session = await open_chat(sim)
    await ws.send('{"type": "brand_new_thing", "x": 1}')
    await ws.send('{"type": "user_input", "text": "hi"}')
    message = await session.wait_message("user_input")
    await ws.close()
    assert isinstance(session.received[0], UnknownMessage) and session.received[0].type == "brand_new_thing"
    assert isinstance(message, UserInput) and session.user_inputs == ["hi"]
    assert session.errors_sent == []


async def test_wait_message_counts_and_fails_on_close(sim: EviSimulator) -> None:
    """wait_message returns the count-th message of a type, and fails fast once the session closed."""
    ws, session = await open_chat(sim)
    for text in ("one", "two"):
        await ws.send(json.dumps({"type": "user_input", "text": text}))
    second = await session.wait_message("user_input", count=2)
    await ws.close()
    assert isinstance(second, UserInput) and second.text == "two"
    with pytest.raises(SessionClosedError):
        await session.wait_message("user_input", count=3)


async def test_large_messages_are_accepted(sim: EviSimulator) -> None:
    """A message above websockets' 1 MiB default but under EVI's 16 MB limit is accepted (§8)."""
    ws, session = await open_chat(sim)
    await ws.send(SETTINGS_8K)
    await ws.send(audio_input(b"\x00\x01" * 600_000))
    await session.wait_audio_ms(75_000)
    await ws.close()
    assert len(session.audio_pcm) == 1_200_000


async def test_agent_drives_each_session() -> None:
    """An agent coroutine runs per session and can answer what the client sends."""

    async def agent(session: EviSession) -> None:
        await session.wait_message("user_input")
        await session.say(tone_pcm16(440, 200, 24000), text="pong")

    async with EviSimulator(api_key=KEY, agent=agent) as sim:
        ws, _ = await open_chat(sim)
        await ws.send('{"type": "user_input", "text": "ping"}')
        turn = await read_turn(ws)
        await ws.close()
    assert turn[0]["message"]["content"] == "pong"


# --- faults -----------------------------------------------------------------------------------------


async def test_send_error_and_raw(sim: EviSimulator) -> None:
    """send_error sends an SDK-valid error with the given code; send_raw sends the text unchanged."""
    ws, session = await open_chat(sim)
    await session.send_error("I0118", "transcription_disconnected", "Transcription socket disconnected.")
    await session.send_raw("{not json")
    error = await recv_json(ws)
    raw = await ws.recv()
    await ws.close()
    assert (error["code"], error["slug"]) == ("I0118", "transcription_disconnected")
    assert raw == "{not json"


async def test_close_with_code_is_seen_by_client(sim: EviSimulator) -> None:
    """close(code, reason) reaches the client as that close code and reason."""
    ws, session = await open_chat(sim)
    await session.close(4001, "scripted end")
    with pytest.raises(ConnectionClosed) as info:
        await ws.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "scripted end")
    assert session.close_code == 4001 and session.closed.is_set()


async def test_drop_is_an_abnormal_close(sim: EviSimulator) -> None:
    """drop() cuts TCP without a close frame: the client sees an abnormal closure (1006)."""
    ws, session = await open_chat(sim)
    session.drop()
    with pytest.raises(ConnectionClosedError) as info:
        await ws.recv()
    assert info.value.rcvd is None
    await asyncio.wait_for(session.closed.wait(), 5)
    assert session.close_code == 1006


async def test_simulator_close_ends_open_sessions() -> None:
    """Closing the simulator closes open sessions with 1001 (going away)."""
    sim = EviSimulator(api_key=KEY)
    await sim.start()
    ws, session = await open_chat(sim)
    await sim.close()
    with pytest.raises(ConnectionClosed) as info:
        await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert session.closed.is_set()


# --- wavgen ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    frames=st.binary(max_size=400),
    rate_hz=st.sampled_from([8000, 16000, 24000, 44100, 48000]),
    channels=st.integers(1, 2),
    extra=st.booleans(),
)
def test_wav_bytes_round_trips_through_stdlib_wave(frames: bytes, rate_hz: int, channels: int, extra: bool) -> None:
    """Any whole-frame PCM wrapped by wav_bytes reads back unchanged, with its rate and channels."""
    pcm = frames[: len(frames) - len(frames) % (2 * channels)]
    data = wav_bytes(pcm, rate_hz, channels, extra_chunks=extra)
    with wave.open(io.BytesIO(data), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (rate_hz, channels, 2)
        assert wav.readframes(wav.getnframes()) == pcm
    assert (b"LIST" in data[: data.index(b"data")]) is extra


def test_wav_bytes_looks_like_evi_output_to_the_sdk() -> None:
    """The SDK's own WAV reader gets the same PCM, rate and channel count back."""
    try:  # the SDK's audio helpers import sounddevice, which needs the PortAudio C library
        from hume.empathic_voice.chat.audio.audio_utilities import _wav_info
    except OSError as exc:
        pytest.skip(f"hume's audio helpers cannot load here: {exc}")
    pcm = tone_pcm16(300, 50, 24000)
    frames, rate_hz, channels = _wav_info(wav_bytes(pcm, 24000, extra_chunks=True))
    assert (bytes(frames), rate_hz, channels) == (pcm, 24000, 1)


@pytest.mark.parametrize(("pcm", "rate_hz", "channels"), [(b"\x00", 8000, 1), (b"\x00" * 6, 8000, 2)])
def test_wav_bytes_rejects_partial_frames(pcm: bytes, rate_hz: int, channels: int) -> None:
    """PCM that is not whole frames for the channel count raises AudioFormatError."""
    with pytest.raises(AudioFormatError, match="frames"):
        wav_bytes(pcm, rate_hz, channels)


def test_tone_has_the_asked_frequency_and_length() -> None:
    """tone_pcm16 has the asked duration, peak level and spectral peak."""
    samples = np.frombuffer(tone_pcm16(1000, 250, 16000, amplitude=0.5), "<i2")
    spectrum = np.abs(np.fft.rfft(samples))
    assert len(samples) == 4000
    assert np.fft.rfftfreq(len(samples), 1 / 16000)[int(np.argmax(spectrum))] == 1000
    assert 16000 <= np.max(np.abs(samples)) <= 16384


@pytest.mark.parametrize("rate_hz", [8000, 24000, 48000])
def test_speechlike_is_band_limited_and_deterministic(rate_hz: int) -> None:
    """speechlike_pcm16 keeps its energy in 300-3400 Hz and depends only on its seed."""
    pcm = speechlike_pcm16(400, rate_hz, seed=11)
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate_hz)
    assert len(samples) == rate_hz * 2 // 5
    assert power[(freqs >= 290) & (freqs <= 3410)].sum() / power.sum() > 0.999
    assert pcm == speechlike_pcm16(400, rate_hz, seed=11) != speechlike_pcm16(400, rate_hz, seed=12)
    assert np.std(samples) > 1000


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # hume 0.14.1 uses websockets.legacy
async def test_official_sdk_client_talks_to_the_simulator(sim: EviSimulator) -> None:
    """The hume SDK connects with header auth and query settings, sends audio and reads a whole turn."""
    from hume import AsyncHumeClient
    from hume.environment import HumeClientEnvironment

    evi_base = sim.url.removesuffix("/chat")
    env = HumeClientEnvironment(base="http://unused", evi=evi_base, tts="http://unused", stream=evi_base)
    client = AsyncHumeClient(api_key=KEY, environment=env)
    settings_query = sdk.ConnectSessionSettings(
        audio=sdk.ConnectSessionSettingsAudio(encoding="linear16", sample_rate=8000, channels=1)
    )
    received: list[str] = []
    config = sim.store.configs.create({"name": "sdk", "evi_version": "3"}, now_s=time.time())
    assert not isinstance(config, RestError)
    async with client.empathic_voice.chat.connect(config_id=config.id, session_settings=settings_query) as sock:
        session = await sim.wait_session()
        await sock.send_publish(sdk.AudioInput(data=base64.b64encode(b"\x05\x00" * 160).decode()))
        await session.wait_audio_ms(20)
        await session.say(tone_pcm16(440, 300, 24000))
        async for message in sock:
            received.append(type(message).__name__)
            if received[-1] == "AssistantEnd":
                break
    assert (session.auth, session.config_id) == ("header", config.id)
    assert bytes(session.audio_pcm) == b"\x05\x00" * 160
    assert received == [
        "ChatMetadata",
        "AssistantMessage",
        "AudioOutput",
        "AudioOutput",
        "AssistantProsody",
        "AssistantEnd",
    ]
