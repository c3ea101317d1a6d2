"""The pure call recording (gateway.core.recording): clock mapping, Twilio's playback model, transcript."""

from __future__ import annotations

import json

import numpy as np

from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_silence, ulaw_to_pcm16
from gateway.core.recording import CallRecording
from gateway.wire import evi_messages as evi
from gateway.wire.evi_codec import EviCodec
from gateway.wire.twilio_media import clear_message, inbound_media_message, mark_message, media_message

FRAME = 160  # 20 ms of 8 kHz μ-law
T0 = 100.0  # the gateway's clock when the caller's media clock read 0


def tone(n: int, level: int = 8000) -> bytes:
    """``n`` samples of a square wave, as μ-law."""
    pcm = np.where(np.arange(n) % 16 < 8, level, -level).astype("<i2")
    return pcm16_to_ulaw(pcm.tobytes())


def channels(pcm: bytes) -> tuple[np.ndarray, np.ndarray]:
    both = np.frombuffer(pcm, "<i2").reshape(-1, 2)
    return both[:, 0], both[:, 1]


def caller_frames(rec: CallRecording, n_frames: int, audio: bytes | None = None, jitter_s: float = 0.0) -> None:
    for n in range(n_frames):
        frame = audio[n * FRAME : (n + 1) * FRAME] if audio else ulaw_silence(FRAME)
        rec.caller_media(n * 20, frame, T0 + n * 0.02 + (jitter_s if n % 2 else 0.0))


def test_left_channel_is_the_caller_on_its_media_clock() -> None:
    """Each caller frame lands at its media timestamp; a missing frame stays silent."""
    rec = CallRecording()
    audio = tone(FRAME * 10)
    for n in range(10):
        if n != 4:
            rec.caller_media(n * 20, audio[n * FRAME : (n + 1) * FRAME], T0 + n * 0.02)
    left, right = channels(rec.render().stereo_pcm16)
    expected = np.frombuffer(ulaw_to_pcm16(audio), "<i2").copy()
    expected[4 * FRAME : 5 * FRAME] = 0
    assert np.array_equal(left, expected)
    assert not right.any()


def test_agent_audio_plays_from_its_arrival_in_order() -> None:
    """Outbound audio is placed at its send time on the media clock, queued chunks play back to back."""
    rec = CallRecording()
    caller_frames(rec, 50, jitter_s=0.004)  # the offset is the smallest arrival − timestamp
    agent = tone(FRAME * 5)
    for i in range(5):  # all sent at once at media time 200 ms: Twilio buffers them and plays them in turn
        rec.sent_media(agent[i * FRAME : (i + 1) * FRAME], T0 + 0.2)
    rendered = rec.render()
    _, right = channels(rendered.stereo_pcm16)
    start = 200 * 8
    assert np.array_equal(right[start : start + 5 * FRAME], np.frombuffer(ulaw_to_pcm16(agent), "<i2"))
    assert not right[:start].any() and not right[start + 5 * FRAME :].any()
    assert rendered.heard_ms == 100 and rendered.cut_ms == 0


def test_clear_drops_what_has_not_played_and_marks_the_response_cut() -> None:
    """After ``clear`` the rest of the buffered audio is absent and the agent turn is marked cut."""
    rec = CallRecording()
    caller_frames(rec, 100)
    rec.agent_text("r1", "A long answer.", T0 + 0.1)
    rec.agent_audio("r1", T0 + 0.1)
    agent = tone(FRAME * 50)  # 1 s sent at 200 ms
    rec.sent_media(agent, T0 + 0.2)
    rec.interrupted(T0 + 0.5)
    rec.sent_clear(T0 + 0.5)
    rendered = rec.render()
    _, right = channels(rendered.stereo_pcm16)
    assert right[200 * 8 : 500 * 8].any()
    assert not right[500 * 8 :].any()
    assert rendered.cut_ms == 700
    agent_turn = next(e for e in rendered.transcript if e.role == "agent")
    assert (agent_turn.heard, agent_turn.heard_ms, agent_turn.text) == ("cut", 300, "A long answer.")
    assert [e.role for e in rendered.transcript] == ["agent", "event"]


def test_a_response_heard_in_full_is_marked_heard() -> None:
    """A response whose turn ended and whose audio all played before the caller spoke is heard."""
    rec = CallRecording()
    caller_frames(rec, 100)
    rec.agent_text("r1", "Hello.", T0 + 0.1)
    rec.agent_audio("r1", T0 + 0.1)
    rec.sent_media(tone(FRAME * 10), T0 + 0.1)
    rec.agent_turn_end(T0 + 0.1)
    rec.caller_text("hi there", T0 + 1.0)
    rec.sent_clear(T0 + 1.2)  # nothing left to drop
    rendered = rec.render()
    assert [(e.role, e.text, e.heard) for e in rendered.transcript] == [
        ("agent", "Hello.", "heard"),
        ("caller", "hi there", None),
    ]
    assert rendered.transcript[0].t_ms == 100 and rendered.cut_ms == 0


def test_audio_after_the_end_of_the_call_was_never_heard() -> None:
    """The right channel stops where the call ended; the unplayed rest counts as cut."""
    rec = CallRecording()
    caller_frames(rec, 10)
    rec.agent_audio("r1", T0)
    rec.sent_media(tone(FRAME * 50), T0 + 0.1)
    rendered = rec.render(end_s=T0 + 0.3)
    assert rendered.duration_ms == 300
    assert rendered.heard_ms == 200 and rendered.cut_ms == 800
    assert rendered.transcript[0].heard == "cut"


def test_raw_frames_are_parsed_like_the_call_parses_them() -> None:
    """The adapter may feed wire text: Twilio media, outbound media/mark/clear and EVI messages."""
    rec = CallRecording(EviCodec())
    for n in range(20):
        text = inbound_media_message(
            sequence_number=n + 2, stream_sid="MZ1", chunk=n + 1, timestamp_ms=n * 20, ulaw=tone(FRAME)
        )
        rec.twilio_read(text, T0 + n * 0.02)
    rec.twilio_read("not json", T0)
    said = evi.UserMessage(
        message=evi.ChatMessage(role="user", content="book a table"),
        models=evi.Inference(),
        time=evi.MillisecondInterval(begin=0, end=100),
        from_text=False,
        interim=False,
    )
    rec.upstream_read(said.to_json(), T0 + 0.1)
    rec.twilio_written(media_message("MZ1", tone(FRAME)), T0 + 0.2)
    rec.twilio_written(mark_message("MZ1", "0.1"), T0 + 0.2)
    rec.twilio_written(clear_message("MZ1"), T0 + 0.21)
    rendered = rec.render()
    _, right = channels(rendered.stereo_pcm16)
    assert right[200 * 8 : 210 * 8].any() and not right[210 * 8 :].any()
    assert (rec.marks_sent, rec.ignored_frames) == (1, 1)
    lines = [json.loads(line) for line in rendered.transcript_jsonl().splitlines()]
    assert lines == [{"t_ms": 100.0, "role": "caller", "text": "book a table"}]
