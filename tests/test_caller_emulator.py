"""The Twilio caller emulator against a small fake gateway written here, and recording loading."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import random
import struct
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.errors import AudioFormatError, ConfigError, DialError
from gateway.simulator.caller import (
    CallerConfig,
    CallRecord,
    MarkEcho,
    NetworkTrouble,
    SendBinary,
    SendDtmf,
    SendText,
    SpeechSegment,
    TwilioCaller,
    run_call,
)
from gateway.simulator.recording import load_recording, ulaw_to_wav_bytes, wav_to_ulaw, write_wav
from gateway.wire.twilio_media import (
    Dtmf,
    Media,
    Start,
    Stop,
    mark_message,
    media_message,
    parse_twilio_message,
)

AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
STREAM_TOKEN = "per-call-token-42"
SILENCE = 0xFF
WAIT_S = 5.0

Behaviour = Callable[["FakeGateway", web.WebSocketResponse], Awaitable[None]]


def loud_ulaw(n_bytes: int, seed: int) -> bytes:
    """Random μ-law bytes that never decode to silence (0xFF and 0x7F are ±0)."""
    rng = random.Random(seed)
    return bytes(rng.choice([b for b in range(256) if b not in (0x7F, 0xFF)]) for _ in range(n_bytes))


class FakeGateway:
    """Webhook + Media Stream socket on 127.0.0.1, checking signatures with twilio's RequestValidator."""

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        relative_stream_url: bool = False,
        close_code: int | None = None,
        twiml: str | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.relative_stream_url = relative_stream_url
        self.close_code = close_code
        self.twiml = twiml
        self.frames: list[str | bytes] = []
        self.webhook_form: dict[str, str] = {}
        self.webhook_valid: bool | None = None
        self.webhook_header_names: list[bytes] = []
        self.ws_signature: str | None = None
        self.ws_valid: bool | None = None
        self.ws_header_names: list[bytes] = []
        self.ws_done = asyncio.Event()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    def _bump(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/twilio/voice"

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/twilio/media"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twilio/voice", self._webhook)
        app.router.add_get("/twilio/media", self._media)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _webhook(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.webhook_form = {k: str(v) for k, v in form.items()}
        self.webhook_header_names = [name for name, _ in request.raw_headers]
        signature = request.headers.get("X-Twilio-Signature", "")
        self.webhook_valid = RequestValidator(AUTH_TOKEN).validate(self.webhook_url, form, signature)
        if not self.webhook_valid:
            return web.Response(status=403, text="bad signature")
        if self.twiml is not None:
            return web.Response(text=self.twiml, content_type="text/xml")
        response = VoiceResponse()
        connect = Connect()
        stream = connect.stream(url="/twilio/media" if self.relative_stream_url else self.ws_url)
        stream.parameter(name="token", value=STREAM_TOKEN)
        response.append(connect)
        response.say("Goodbye")
        return web.Response(text=str(response), content_type="text/xml")

    async def _media(self, request: web.Request) -> web.WebSocketResponse:
        self.ws_header_names = [name for name, _ in request.raw_headers]
        self.ws_signature = request.headers.get("x-twilio-signature")
        self.ws_valid = RequestValidator(AUTH_TOKEN).validate(self.ws_url, {}, self.ws_signature or "")
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        reader = asyncio.create_task(self._read(ws))
        try:
            if self.behaviour is not None:
                await self.behaviour(self, ws)
            if self.close_code is not None:
                await ws.close(code=self.close_code)
            await reader
        finally:
            reader.cancel()
            self.ws_done.set()
            self._bump()
        return ws

    async def _read(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.frames.append(msg.data)
                self._bump()

    def events(self) -> list[dict[str, Any]]:
        """Every JSON text frame received, parsed."""
        out = []
        for frame in self.frames:
            if isinstance(frame, str):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(frame))
        return out

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    async def stream_sid(self) -> str:
        await self.wait_until(lambda: self.count("start") > 0)
        return str(next(e for e in self.events() if e.get("event") == "start")["streamSid"])


@contextlib.asynccontextmanager
async def fake_gateway(behaviour: Behaviour | None = None, **kwargs: Any) -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway(behaviour, **kwargs)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def config_for(gateway: FakeGateway, **kwargs: Any) -> CallerConfig:
    kwargs.setdefault("auth_token", AUTH_TOKEN)
    return CallerConfig(webhook_url=gateway.webhook_url, **kwargs)


def assert_silent(data: bytes | bytearray) -> None:
    assert set(data) <= {SILENCE}, "expected only μ-law silence"


# ---------------------------------------------------------------------------------------------------
# Call set-up and signatures
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", [False, True])
async def test_webhook_and_upgrade_are_signed_like_twilio(relative: bool) -> None:
    """The webhook POST and the ws upgrade carry signatures RequestValidator accepts, over the ws URL."""
    async with fake_gateway(relative_stream_url=relative) as gw:
        config = config_for(gw, hangup_after_ms=60)
        record = await run_call(config)
    assert gw.webhook_valid is True
    assert gw.ws_valid is True
    assert record.stream_url == gw.ws_url
    # The upgrade signs the ws:// URL with no params; the http:// spelling the server sees must not match.
    validator = RequestValidator(AUTH_TOKEN)
    assert gw.ws_signature == validator.compute_signature(gw.ws_url, {})
    assert not validator.validate(gw.ws_url.replace("ws://", "http://"), {}, gw.ws_signature)
    assert b"X-Twilio-Signature" in gw.webhook_header_names
    assert b"x-twilio-signature" in gw.ws_header_names
    assert gw.webhook_form == {
        "AccountSid": config.account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": config.call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15550100001",
        "To": config.to_number,
    }
    assert record.webhook_status == 200
    assert record.custom_parameters == {"token": STREAM_TOKEN}
    assert record.twiml_after_connect == ["<Say>Goodbye</Say>"]
    assert record.protocol_violations == []


def test_generated_sids_look_like_twilio_sids() -> None:
    """Unset SIDs are generated as AC/CA/MZ plus 32 hex digits, distinct per call."""
    a, b = CallerConfig(webhook_url="http://x/"), CallerConfig(webhook_url="http://x/")
    for sid, prefix in ((a.account_sid, "AC"), (a.call_sid, "CA"), (a.stream_sid, "MZ")):
        assert len(sid) == 34 and sid.startswith(prefix)
        int(sid[2:], 16)
    assert a.call_sid != b.call_sid


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: CallerConfig(webhook_url="http://x/", frame_ms=0), "frame_ms"),
        (lambda: CallerConfig(webhook_url="http://x/", hangup_after_ms=-1), "hangup_after_ms"),
        (lambda: CallerConfig(webhook_url="http://x/", scripted=[(-20, SendText("x"))]), "negative"),
        (lambda: SendDtmf("12"), "not a telephone key"),
        (lambda: SendDtmf("x"), "not a telephone key"),
    ],
)
def test_bad_caller_settings_raise_config_error(make: Callable[[], object], problem: str) -> None:
    """Impossible caller settings and DTMF digits are refused with a ConfigError saying which."""
    with pytest.raises(ConfigError, match=problem):
        make()


async def test_non_200_webhook_raises_dial_error_with_status() -> None:
    """A webhook that refuses the call (403 for a bad signature) raises DialError carrying the status."""
    async with fake_gateway() as gw:
        with pytest.raises(DialError) as info:
            await run_call(config_for(gw, auth_token="wrong-token"))
    assert info.value.status == 403
    assert info.value.stage == "webhook"
    assert "403" in str(info.value)
    assert gw.webhook_valid is False


async def test_twiml_without_connect_stream_raises_dial_error() -> None:
    """TwiML without <Connect><Stream> is refused with a message naming what was found."""
    async with fake_gateway(twiml="<Response><Say>hi</Say><Hangup/></Response>") as gw:
        with pytest.raises(DialError, match=r"no <Connect> \(found <Say>, <Hangup>\)") as info:
            await run_call(config_for(gw))
    assert info.value.stage == "twiml"


# ---------------------------------------------------------------------------------------------------
# What the caller sends
# ---------------------------------------------------------------------------------------------------


async def test_stream_sends_connected_start_then_media_and_stop() -> None:
    """connected, start, then 20 ms media frames with string counters, recording then silence, then stop."""
    speech = loud_ulaw(1200, seed=1)  # 150 ms: 7.5 frames
    async with fake_gateway() as gw:
        config = config_for(gw, audio_ulaw=speech, hangup_after_ms=300)
        record = await run_call(config)
        await gw.wait_until(gw.ws_done.is_set)
    events = [parse_twilio_message(f) for f in gw.frames if isinstance(f, str)]
    raw = gw.events()
    assert raw[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = events[1]
    assert isinstance(start, Start)
    assert raw[1]["sequenceNumber"] == "1"
    assert start.stream_sid == config.stream_sid and start.call_sid == config.call_sid
    assert dict(start.custom_parameters) == {"token": STREAM_TOKEN}
    assert (start.media_format.encoding, start.media_format.sample_rate_hz, start.media_format.channels) == (
        "audio/x-mulaw",
        8000,
        1,
    )
    assert start.tracks == ("inbound",)
    media_raw = raw[2:-1]
    assert len(media_raw) == 15
    for i, frame in enumerate(media_raw):
        assert frame["event"] == "media"
        assert frame["sequenceNumber"] == str(i + 2)
        assert frame["media"]["chunk"] == str(i + 1)
        assert frame["media"]["timestamp"] == str(i * 20)
        assert frame["media"]["track"] == "inbound"
    payload = b"".join(e.payload for e in events[2:-1] if isinstance(e, Media))
    assert payload == bytes(record.sent_ulaw)
    assert payload[: len(speech)] == speech
    assert_silent(payload[len(speech) :])
    assert len(payload) == 300 * 8
    stop = events[-1]
    assert isinstance(stop, Stop)
    assert raw[-1]["sequenceNumber"] == "17"
    assert (stop.account_sid, stop.call_sid) == (config.account_sid, config.call_sid)
    assert record.closed_by == "caller"
    assert len(record.heard_ulaw) == len(record.sent_ulaw)


async def test_scripted_dtmf_text_and_binary_go_out_at_their_media_time() -> None:
    """Scripted DTMF, raw text and binary frames are sent before the media frame of their time."""
    async with fake_gateway() as gw:
        script = [(40, SendDtmf("5")), (60, SendText("not json")), (60, SendBinary(b"\x00\x01"))]
        await run_call(config_for(gw, hangup_after_ms=100, scripted=script))
        await gw.wait_until(gw.ws_done.is_set)
    texts = [f if isinstance(f, str) else f"<binary {f!r}>" for f in gw.frames]
    dtmf_at = next(i for i, t in enumerate(texts) if '"dtmf"' in t)
    dtmf = parse_twilio_message(texts[dtmf_at])
    assert isinstance(dtmf, Dtmf) and dtmf.digit == "5" and dtmf.track == "inbound_track"
    after_dtmf = parse_twilio_message(texts[dtmf_at + 1])
    assert isinstance(after_dtmf, Media) and after_dtmf.timestamp_ms == 40
    assert after_dtmf.sequence_number == dtmf.sequence_number + 1
    text_at = texts.index("not json")
    assert texts[text_at + 1] == "<binary b'\\x00\\x01'>"
    after_raw = parse_twilio_message(texts[text_at + 2])
    assert isinstance(after_raw, Media) and after_raw.timestamp_ms == 60


# ---------------------------------------------------------------------------------------------------
# Playback: audio, marks, clear
# ---------------------------------------------------------------------------------------------------


async def test_gateway_audio_is_heard_in_order_and_marks_echo_after_playback() -> None:
    """Two media messages play back to back; a mark after them is echoed when their playback ends."""
    part_a, part_b = loud_ulaw(800, seed=2), loud_ulaw(480, seed=3)

    async def behaviour(gw: FakeGateway, ws: web.WebSocketResponse) -> None:
        sid = await gw.stream_sid()
        await ws.send_str(media_message(sid, part_a))
        await ws.send_str(media_message(sid, part_b))
        await ws.send_str(mark_message(sid, "after-audio"))

    async with fake_gateway(behaviour) as gw:
        async with TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller:
            await caller.dial()
            assert await caller.wait_for(lambda r: bool(r.marks_echoed), WAIT_S)
            assert await caller.wait_media_ms(caller.media_time_ms + 60, WAIT_S)
            await caller.hang_up()
        await gw.wait_until(gw.ws_done.is_set)
    record = caller.record
    heard = bytes(record.heard_ulaw)
    offset = heard.find(part_a + part_b)
    assert offset >= 0
    end = offset + len(part_a) + len(part_b)
    assert_silent(heard[:offset])
    assert_silent(heard[end:])
    assert offset / 8 >= record.received[0].media_time_ms  # nothing plays before it arrives
    assert record.heard_audio_ms == 160
    assert record.first_heard_ms_after(0) == offset / 8
    assert record.last_heard_ms() == end / 8
    assert record.marks_echoed == [MarkEcho("after-audio", end / 8, False)]
    assert [(r.kind, r.detail) for r in record.received] == [
        ("media", 800),
        ("media", 480),
        ("mark", "after-audio"),
    ]
    echoes = [e for e in gw.events() if e["event"] == "mark"]
    assert [e["mark"]["name"] for e in echoes] == ["after-audio"]
    assert echoes[0]["streamSid"] == caller.config.stream_sid
    assert record.protocol_violations == []


async def test_mark_with_nothing_queued_is_echoed_at_once() -> None:
    """A mark sent while no audio is buffered is echoed immediately, at the media time it arrived."""

    async def behaviour(gw: FakeGateway, ws: web.WebSocketResponse) -> None:
        await ws.send_str(mark_message(await gw.stream_sid(), "early"))

    async with fake_gateway(behaviour) as gw, TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller:
        await caller.dial()
        assert await caller.wait_for(lambda r: bool(r.marks_echoed), WAIT_S)
        await gw.wait_until(lambda: gw.count("mark") == 1)
    record = caller.record
    assert record.marks_echoed == [MarkEcho("early", record.received[0].media_time_ms, False)]
    echo = next(e for e in gw.events() if e["event"] == "mark")
    assert echo["mark"] == {"name": "early"} and isinstance(echo["sequenceNumber"], str)


async def test_clear_drops_queued_audio_and_echoes_pending_marks_as_cleared() -> None:
    """After clear, only audio played before it was heard, and the pending mark is echoed as cleared."""
    long_audio = loud_ulaw(16_000, seed=4)  # 2 s, far longer than the wait below

    async def behaviour(gw: FakeGateway, ws: web.WebSocketResponse) -> None:
        sid = await gw.stream_sid()
        await ws.send_str(media_message(sid, long_audio))
        await ws.send_str(mark_message(sid, "tail"))
        sent_at = gw.count("media")
        await gw.wait_until(lambda: gw.count("media") >= sent_at + 10)
        await ws.send_str(json.dumps({"event": "clear", "streamSid": sid}))

    async with fake_gateway(behaviour) as gw, TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller:
        await caller.dial()
        assert await caller.wait_for(lambda r: bool(r.clears), WAIT_S)
        assert await caller.wait_media_ms(caller.media_time_ms + 60, WAIT_S)
        await gw.wait_until(lambda: gw.count("mark") == 1)
    record = caller.record
    heard = bytes(record.heard_ulaw)
    played = record.heard_audio_samples
    assert 0 < played < len(long_audio)
    assert played + record.cleared_audio_samples == len(long_audio)
    offset = heard.find(long_audio[:played])
    assert offset >= 0
    assert_silent(heard[:offset])
    assert_silent(heard[offset + played :])
    assert record.clears == [record.received[-1].media_time_ms]
    assert record.marks_echoed == [MarkEcho("tail", record.clears[0], True)]
    assert offset + played <= record.clears[0] * 8  # nothing heard after the clear
    assert record.playout_gaps == []


async def test_silence_between_two_pieces_of_audio_is_recorded_as_a_gap() -> None:
    """Dry playout between two media messages is a playout gap, counted as underrun when short."""
    part_a, part_b = loud_ulaw(480, seed=5), loud_ulaw(480, seed=6)

    async def behaviour(gw: FakeGateway, ws: web.WebSocketResponse) -> None:
        sid = await gw.stream_sid()
        await ws.send_str(media_message(sid, part_a))
        sent_at = gw.count("media")
        await gw.wait_until(lambda: gw.count("media") >= sent_at + 8)
        await ws.send_str(media_message(sid, part_b))

    async with fake_gateway(behaviour) as gw:
        config = config_for(gw, hangup_after_ms=10_000, underrun_gap_max_ms=60_000)
        async with TwilioCaller(config) as caller:
            await caller.dial()
            assert await caller.wait_for(lambda r: r.heard_audio_samples == 960, WAIT_S)
    record = caller.record
    heard = bytes(record.heard_ulaw)
    start_a, start_b = heard.find(part_a), heard.find(part_b)
    assert start_a >= 0
    assert start_a + len(part_a) < start_b
    assert_silent(heard[start_a + len(part_a) : start_b])
    assert len(record.playout_gaps) == 1
    gap = record.playout_gaps[0]
    assert gap.start_ms == (start_a + len(part_a)) / 8
    assert gap.start_ms + gap.duration_ms == start_b / 8
    assert record.underrun_ms == gap.duration_ms


# ---------------------------------------------------------------------------------------------------
# Ending the call, and bad gateway behaviour
# ---------------------------------------------------------------------------------------------------


async def test_hang_up_sends_stop_and_closes_the_socket() -> None:
    """hang_up() sends stop as the last message and closes; the gateway's socket ends."""
    async with fake_gateway() as gw, TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller:
        await caller.dial()
        assert await caller.wait_media_ms(100, WAIT_S)
        await caller.hang_up()
        assert caller.is_closed
        await gw.wait_until(gw.ws_done.is_set)
    assert gw.events()[-1]["event"] == "stop"
    assert caller.record.closed_by == "caller"
    assert caller.record.sent_events[-1] == "stop"


async def test_gateway_close_is_recorded_and_streaming_stops() -> None:
    """A gateway close is recorded as closed_by='gateway' with its code; the caller sends no stop."""

    async def behaviour(gw: FakeGateway, ws: web.WebSocketResponse) -> None:
        await gw.stream_sid()

    async with (
        fake_gateway(behaviour, close_code=4001) as gw,
        TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller,
    ):
        await caller.dial()
        assert await caller.wait_closed(WAIT_S)
        frames_at_close = len(caller.record.sent_ulaw)
        await asyncio.sleep(0.06)
        assert len(caller.record.sent_ulaw) == frames_at_close
    assert caller.record.closed_by == "gateway"
    assert caller.record.close_code == 4001
    assert "stop" not in caller.record.sent_events


async def test_invalid_gateway_messages_are_recorded_not_fatal() -> None:
    """Malformed, unknown, wrong-stream and binary frames become protocol violations; the call goes on."""

    async def behaviour(gw: FakeGateway, ws: web.WebSocketResponse) -> None:
        sid = await gw.stream_sid()
        await ws.send_str("not json at all")
        await ws.send_str(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "AAAA", "x": 1}}))
        await ws.send_str(json.dumps({"event": "clear", "streamSid": "MZ" + "0" * 32}))
        await ws.send_str(json.dumps({"event": "hello", "streamSid": sid}))
        await ws.send_bytes(b"\x01\x02\x03")
        await ws.send_str(mark_message(sid, "still-alive"))

    async with fake_gateway(behaviour) as gw, TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller:
        await caller.dial()
        assert await caller.wait_for(lambda r: bool(r.marks_echoed), WAIT_S)
    record = caller.record
    assert len(record.protocol_violations) == 5
    assert "not JSON" in record.protocol_violations[0]
    assert "streamSid" in record.protocol_violations[2]
    assert "binary" in record.protocol_violations[4]
    assert [r.kind for r in record.received] == ["invalid"] * 5 + ["mark"]
    assert record.clears == []
    assert record.marks_echoed[0].name == "still-alive"


def test_record_helpers_measure_on_the_media_clock() -> None:
    """first_heard_ms_after / last_heard_ms / heard_between read sample positions, 8 samples per ms."""
    record = CallRecord(frame_ms=20)
    tone = loud_ulaw(40, seed=7)
    record.heard_ulaw += bytes([SILENCE]) * 80 + tone + bytes([0x7F]) * 40 + tone + bytes([SILENCE]) * 40
    assert record.media_time_ms == 30
    assert record.first_heard_ms_after(0) == 10
    assert record.first_heard_ms_after(11) == 11
    assert record.first_heard_ms_after(15) == 20
    assert record.first_heard_ms_after(25) is None
    assert record.last_heard_ms() == 25
    assert record.heard_between(10, 15) == tone


# ---------------------------------------------------------------------------------------------------
# Recordings
# ---------------------------------------------------------------------------------------------------


def sine_pcm16(rate_hz: int, duration_ms: int, freq_hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(rate_hz * duration_ms // 1000) / rate_hz
    return np.rint(amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype("<i2")


def decoded(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2").astype(np.float64)


@pytest.mark.parametrize("rate_hz", [8000, 16000, 24000, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_load_recording_converts_pcm_wav_to_8k_ulaw(tmp_path: Path, rate_hz: int, channels: int) -> None:
    """16-bit WAV at any rate, mono or stereo, loads as 8 kHz μ-law matching the same tone made at 8 kHz."""
    mono = sine_pcm16(rate_hz, 300)
    frames = np.stack([mono, mono], axis=1) if channels == 2 else mono
    path = tmp_path / f"tone_{rate_hz}_{channels}.wav"
    write_wav(path, frames.tobytes(), rate_hz, channels)
    ulaw = load_recording(path)
    assert len(ulaw) == 2400
    expected = sine_pcm16(8000, 300).astype(np.float64)
    got = decoded(ulaw)
    middle = slice(400, 2000)  # away from the one-shot resampler's edges
    error = got[middle] - expected[middle]
    snr_db = 10 * np.log10(np.mean(expected[middle] ** 2) / np.mean(error**2))
    assert snr_db > 30


def test_stereo_is_mixed_or_reduced_to_the_first_channel(tmp_path: Path) -> None:
    """Stereo with a silent right channel mixes to half level, or keeps full level with stereo='first'."""
    left = sine_pcm16(8000, 200, amplitude=0.8)
    path = tmp_path / "left_only.wav"
    write_wav(path, np.stack([left, np.zeros_like(left)], axis=1).tobytes(), 8000, 2)
    mixed_rms = np.sqrt(np.mean(decoded(load_recording(path)) ** 2))
    first_rms = np.sqrt(np.mean(decoded(load_recording(path, stereo="first")) ** 2))
    assert first_rms == pytest.approx(2 * mixed_rms, rel=0.05)
    assert load_recording(path, stereo="first") == pcm16_to_ulaw(left.tobytes())


def test_ulaw_wav_and_raw_ulaw_load_unchanged(tmp_path: Path) -> None:
    """A μ-law WAV (format tag 7, 8 kHz) and raw .ulaw/.mulaw files load byte for byte."""
    speech = loud_ulaw(801, seed=8)
    wav_path = tmp_path / "speech.wav"
    wav_path.write_bytes(ulaw_to_wav_bytes(speech, keep_ulaw=True))
    assert struct.unpack_from("<H", wav_path.read_bytes(), 20)[0] == 7
    assert load_recording(wav_path) == speech
    for suffix in (".ulaw", ".mulaw"):
        raw = tmp_path / f"speech{suffix}"
        raw.write_bytes(speech)
        assert load_recording(raw) == speech


def test_pcm_wav_of_heard_audio_plays_back_as_the_same_samples() -> None:
    """ulaw_to_wav_bytes writes 8 kHz 16-bit PCM that decodes to the μ-law's samples."""
    speech = loud_ulaw(400, seed=9)
    with wave.open(io.BytesIO(ulaw_to_wav_bytes(speech)), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.readframes(w.getnframes()) == ulaw_to_pcm16(speech)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_ulaw_wav_round_trips_any_bytes(ulaw: bytes) -> None:
    """Any μ-law bytes written as a tag-7 WAV read back unchanged."""
    assert wav_to_ulaw(ulaw_to_wav_bytes(ulaw, keep_ulaw=True)) == ulaw


def _wav_with(tag: int, bits: int, rate_hz: int = 8000, data: bytes = b"\x00\x00" * 8) -> bytes:
    block = bits // 8 or 1
    fmt = struct.pack("<HHIIHH", tag, 1, rate_hz, rate_hz * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("short.wav", b"RIFF\x00\x00", "WAV too short"),
        ("noriff.wav", b"ID3\x03junkjunkjunk", "not a RIFF/WAVE"),
        ("float.wav", _wav_with(3, 32), "format tag 0x0003"),
        ("eightbit.wav", _wav_with(1, 8), "8 bits"),
        ("odd.wav", _wav_with(1, 16, data=b"\x00\x00\x00"), "whole number"),
        ("nodata.wav", _wav_with(1, 16)[:36], "no 'data' chunk"),
        ("song.mp3", b"\xff\xfb\x90\x00", "unsupported recording type '.mp3'"),
        ("empty.ulaw", b"", "empty"),
    ],
)
def test_malformed_recordings_raise_audio_format_error(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    """Files that are not usable audio raise AudioFormatError naming the file and the problem."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioFormatError) as info:
        load_recording(path)
    assert name in str(info.value)
    assert problem in str(info.value)


def test_missing_recording_raises_audio_format_error(tmp_path: Path) -> None:
    """A path that does not exist raises AudioFormatError naming it."""
    with pytest.raises(AudioFormatError, match="missing.wav"):
        load_recording(tmp_path / "missing.wav")


# ---------------------------------------------------------------------------------------------------
# Talking back, hearing the agent, and network trouble
# ---------------------------------------------------------------------------------------------------


def steady_ulaw(n_bytes: int, level: int = 4000) -> bytes:
    """μ-law of a constant level: every sample is loud, so speech edges are sample-exact."""
    return pcm16_to_ulaw(np.full(n_bytes, level, "<i2").tobytes())


def media_events(gw: FakeGateway) -> list[dict[str, Any]]:
    return [e for e in gw.events() if e.get("event") == "media"]


async def test_spoken_audio_goes_out_from_the_next_tick_and_is_recorded() -> None:
    """speak() audio is sent from the next tick on, at the media time recorded in caller_utterances."""
    speech = loud_ulaw(800, seed=11)  # 100 ms
    async with fake_gateway() as gw, TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller:
        await caller.dial()
        assert await caller.wait_media_ms(100, WAIT_S)
        spoken_at = caller.media_time_ms
        caller.speak(speech)
        assert caller.speaking
        assert await caller.wait_spoken(WAIT_S)
        assert await caller.wait_media_ms(spoken_at + 200, WAIT_S)
        await caller.hang_up()
        await gw.wait_until(gw.ws_done.is_set)
    assert caller.record.caller_utterances == [SpeechSegment(spoken_at, spoken_at + 100)]
    by_time = {int(e["media"]["timestamp"]): base64.b64decode(e["media"]["payload"]) for e in media_events(gw)}
    start = int(spoken_at)
    assert b"".join(by_time[t] for t in range(start, start + 100, 20)) == speech
    assert_silent(by_time[start - 20] + by_time[start + 100])


async def test_speaking_over_the_configured_recording_mixes_the_two() -> None:
    """Speech queued before the call starts plays mixed (summed in linear) with the configured audio."""
    a, b = steady_ulaw(320, 3000), steady_ulaw(320, -1000)
    async with fake_gateway() as gw:
        config = config_for(gw, audio_ulaw=a, hangup_after_ms=100)
        async with TwilioCaller(config) as caller:
            caller.speak(b)
            await caller.dial()
            assert await caller.wait_closed(WAIT_S)
    mixed = decoded(bytes(caller.record.sent_ulaw[:320]))
    assert np.allclose(mixed, 2000, rtol=0.05)
    assert caller.record.caller_utterances == [SpeechSegment(0, 40)]


async def test_agent_speech_segments_and_waits_follow_what_is_heard() -> None:
    """Agent audio heard becomes speech segments at its playout position; the wait helpers see them."""
    first, second = steady_ulaw(1920), steady_ulaw(1280)  # 240 ms, 160 ms

    async def behaviour(gw: FakeGateway, ws: web.WebSocketResponse) -> None:
        sid = await gw.stream_sid()
        await ws.send_str(media_message(sid, first))
        sent_at = gw.count("media")
        await gw.wait_until(lambda: gw.count("media") >= sent_at + 30)  # ≥ 360 ms of quiet after `first`
        await ws.send_str(media_message(sid, second))

    async with fake_gateway(behaviour) as gw, TwilioCaller(config_for(gw, hangup_after_ms=10_000)) as caller:
        await caller.dial()
        segment = await caller.wait_agent_speaking(WAIT_S)
        assert segment is not None
        assert await caller.wait_agent_silent(200, WAIT_S)
        assert not caller.record.agent_speaking
        later = await caller.wait_agent_speaking(WAIT_S, since_ms=segment.start_ms + 240)
        assert later is not None and later.start_ms > segment.start_ms + 240
        assert await caller.wait_agent_silent(100, WAIT_S)
    record = caller.record
    heard = bytes(record.heard_ulaw)
    at_first, at_second = heard.find(first), heard.find(second, heard.find(first) + len(first))
    assert record.agent_speech_segments == [
        SpeechSegment(at_first / 8, at_first / 8 + 240),
        SpeechSegment(at_second / 8, at_second / 8 + 160),
    ]
    assert record.agent_quiet_ms == record.media_time_ms - (at_second / 8 + 160)


@pytest.mark.parametrize("chunk_skips", [True, False])
async def test_dropped_frames_leave_timestamp_holes_and_are_counted_exactly(chunk_skips: bool) -> None:
    """Dropping 2 frames of every 5 withholds exactly those frames; later timestamps keep their media-clock
    values, sequence numbers stay contiguous, and chunk skips or not as configured."""
    trouble = NetworkTrouble(drop_every_n=5, drop_run=2, chunk_skips=chunk_skips)
    async with fake_gateway() as gw:
        record = await run_call(config_for(gw, hangup_after_ms=400, network=trouble))
        await gw.wait_until(gw.ws_done.is_set)
    dropped_ms = [n * 20 for n in range(20) if n % 5 >= 3]
    assert record.dropped_frames_ms == dropped_ms and record.frames_dropped == 8
    assert record.media_frames_sent == 12
    media = media_events(gw)
    assert [int(e["media"]["timestamp"]) for e in media] == [t for t in range(0, 400, 20) if t not in dropped_ms]
    chunks = [int(e["media"]["chunk"]) for e in media]
    assert chunks == (
        [t // 20 + 1 for t in range(0, 400, 20) if t not in dropped_ms] if chunk_skips else list(range(1, 13))
    )
    sequence = [int(e["sequenceNumber"]) for e in gw.events() if "sequenceNumber" in e]
    assert sequence == list(range(1, len(sequence) + 1))
    assert len(record.sent_ulaw) == 400 * 8  # what the caller said keeps the full media clock


async def test_jitter_and_bursts_delay_frames_but_never_drop_or_reorder_them() -> None:
    """With jitter and bursts every frame still arrives, in order; the largest injected delay is bounded."""
    trouble = NetworkTrouble(extra_jitter_ms=40, burst_every_ms=200, burst_hold_ms=100, seed=3)
    async with fake_gateway() as gw:
        record = await run_call(config_for(gw, hangup_after_ms=600, network=trouble))
        await gw.wait_until(gw.ws_done.is_set)
    assert [int(e["media"]["timestamp"]) for e in media_events(gw)] == list(range(0, 600, 20))
    assert record.frames_dropped == 0
    assert 0 < record.max_send_delay_ms <= 140
    assert gw.events()[-1]["event"] == "stop"
