"""The pure call recorder (gateway.core.recording): the clock mapping, Twilio's playback, heard and cut by marks,
turn latencies, tool calls, and the wire text it is fed (docs/recordings.md)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_silence, ulaw_to_pcm16
from gateway.core.recording import CallRecorder
from gateway.errors import CallStateError
from gateway.simulator.wavgen import wav_bytes
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw
from gateway.wire.evi_codec import EviCodec

FRAME = 160  # 20 ms of 8 kHz μ-law
MS = 8  # samples per ms
T0 = 100.0  # the gateway's clock when the caller's media clock read 0
STREAM = "MZ" + "1" * 32


def tone(n: int, level: int = 8000) -> bytes:
    """``n`` samples of a square wave, as μ-law."""
    pcm = np.where(np.arange(n) % 16 < 8, level, -level).astype("<i2")
    return pcm16_to_ulaw(pcm.tobytes())


def channels(pcm: bytes) -> tuple[np.ndarray, np.ndarray]:
    both = np.frombuffer(pcm, "<i2").reshape(-1, 2)
    return both[:, 0], both[:, 1]


def caller_frames(rec: CallRecorder, n_frames: int, jitter_s: float = 0.0) -> None:
    """``n_frames`` of caller silence, read at their media time (every other one late by ``jitter_s``)."""
    for n in range(n_frames):
        rec.caller_media(n * 20, ulaw_silence(FRAME), T0 + n * 0.02 + (jitter_s if n % 2 else 0.0))


def send(rec: CallRecorder, rid: str, ms: int, at_s: float, first_mark: int) -> list[str]:
    """Send ``ms`` of ``rid``'s audio as 100 ms messages, each followed by a mark, all at ``at_s``."""
    names = []
    for i in range(ms // 100):
        rec.sent_media(tone(100 * MS), at_s, rid)
        names.append(f"m{first_mark + i}")
        rec.sent_mark(names[-1], at_s)
    return names


def agent(rec: CallRecorder, rid: str, text: str, audio_ms: float, at_s: float) -> None:
    """A response's text and its audio arriving from the upstream."""
    rec.agent_said(rid, text, at_s)
    rec.agent_audio(rid, audio_ms, at_s)


def agent_lines(rec: CallRecorder) -> list[dict[str, object]]:
    return [e.as_dict() for e in rec.render().transcript if e.role == "agent"]


def test_left_channel_is_the_caller_on_its_media_clock() -> None:
    """Each caller frame lands at its media timestamp; a frame that never came stays silent."""
    rec = CallRecorder()
    audio = tone(FRAME * 10)
    for n in range(10):
        if n != 4:
            rec.caller_media(n * 20, audio[n * FRAME : (n + 1) * FRAME], T0 + n * 0.02)
    left, right = channels(rec.render().stereo_pcm16)
    expected = np.frombuffer(ulaw_to_pcm16(audio), "<i2").copy()
    expected[4 * FRAME : 5 * FRAME] = 0
    assert np.array_equal(left, expected)
    assert not right.any()


def test_a_timestamp_far_ahead_of_the_clock_is_skipped() -> None:
    """A frame claiming to be an hour into a call that began a second ago moves neither the clock nor the WAV."""
    rec = CallRecorder()
    caller_frames(rec, 50)
    rec.caller_media(3_600_000, tone(FRAME), T0 + 1.0)
    rec.sent_media(tone(FRAME), T0 + 0.5, None)
    rendered = rec.render()
    _, right = channels(rendered.stereo_pcm16)
    assert rendered.duration_ms == 1000 and rec.ignored_frames == 1
    assert right[500 * MS : 520 * MS].all()


def test_agent_audio_plays_from_the_frame_after_it_was_sent_back_to_back() -> None:
    """Audio sent at media time 205 ms starts with the frame at 220 ms; what is queued plays without a gap, and
    late caller frames do not move the mapping (the offset is the smallest arrival − timestamp)."""
    rec = CallRecorder()
    caller_frames(rec, 50, jitter_s=0.004)
    audio = tone(FRAME * 5)
    for i in range(5):
        rec.sent_media(audio[i * FRAME : (i + 1) * FRAME], T0 + 0.205, None)
    rendered = rec.render()
    _, right = channels(rendered.stereo_pcm16)
    start = 220 * MS
    assert np.array_equal(right[start : start + 5 * FRAME], np.frombuffer(ulaw_to_pcm16(audio), "<i2"))
    assert not right[:start].any() and not right[start + 5 * FRAME :].any()
    assert rendered.heard_ms == 100 and rendered.cut_ms == 0


def test_a_barge_in_drops_what_had_not_played_and_cuts_the_response_where_the_marks_say() -> None:
    """After ``clear`` the queued rest is absent; the response is cut at the barge-in, heard as far as its marks
    were echoed before the clear (echoes the clear flushed count for nothing)."""
    rec = CallRecorder()
    caller_frames(rec, 100)
    agent(rec, "r1", "A long answer.", 1000, T0 + 0.1)
    names = send(rec, "r1", 500, T0 + 0.2, 0)  # plays 200..700 ms unless cleared
    rec.mark_echoed(names[0], T0 + 0.3)
    rec.mark_echoed(names[1], T0 + 0.4)
    rec.caller_interrupted(T0 + 0.45)
    rec.sent_clear(T0 + 0.45)  # takes effect at the next frame, 460 ms
    for name in names[2:]:
        rec.mark_echoed(name, T0 + 0.46)
    rendered = rec.render()
    _, right = channels(rendered.stereo_pcm16)
    assert np.count_nonzero(right[200 * MS : 460 * MS]) == 260 * MS
    assert not right[460 * MS :].any()
    assert rendered.heard_ms == 260 and rendered.cut_ms == 240
    assert agent_lines(rec) == [
        {
            "t_ms": 200.0,
            "role": "agent",
            "text": "A long answer.",
            "response_id": "r1",
            "heard": "cut",
            "heard_ms": 200.0,
            "cut_at_ms": 450.0,
        }
    ]
    assert [e.role for e in rendered.transcript] == ["agent", "event"]


def test_each_response_is_credited_with_its_own_audio() -> None:
    """With two responses queued, a barge-in in the first cuts both: the second, never played, is heard for 0 ms."""
    rec = CallRecorder()
    caller_frames(rec, 100)
    agent(rec, "r1", "First.", 300, T0 + 0.1)
    first = send(rec, "r1", 300, T0 + 0.1, 0)  # plays 100..400 ms
    agent(rec, "r2", "Second.", 300, T0 + 0.15)
    second = send(rec, "r2", 300, T0 + 0.35, 3)  # queued behind: 400..700 ms
    rec.mark_echoed(first[0], T0 + 0.2)
    rec.mark_echoed(first[1], T0 + 0.3)
    rec.caller_interrupted(T0 + 0.36)
    rec.sent_clear(T0 + 0.36)
    for name in first[2:] + second:
        rec.mark_echoed(name, T0 + 0.37)
    lines = {line["response_id"]: line for line in agent_lines(rec)}
    assert (lines["r1"]["heard"], lines["r1"]["heard_ms"], lines["r1"]["t_ms"]) == ("cut", 200.0, 100.0)
    assert (lines["r2"]["heard"], lines["r2"]["heard_ms"], lines["r2"]["t_ms"]) == ("cut", 0.0, 360.0)
    _, right = channels(rec.render().stereo_pcm16)
    assert np.count_nonzero(right) == 260 * MS  # 100..360 ms (the clear at 360 ms): r1 only


def test_a_response_played_in_full_is_heard_and_a_later_barge_in_leaves_it_so() -> None:
    """All marks echoed and the turn ended: heard; a clear afterwards (the caller talking) does not change it."""
    rec = CallRecorder()
    caller_frames(rec, 100)
    agent(rec, "r1", "Hello.", 200, T0 + 0.1)
    names = send(rec, "r1", 200, T0 + 0.1, 0)
    rec.agent_turn_end(T0 + 0.1)
    rec.mark_echoed(names[0], T0 + 0.2)
    rec.mark_echoed(names[1], T0 + 0.3)
    rec.caller_said("hi there", T0 + 1.0)
    rec.sent_clear(T0 + 1.2)
    entries = [(e.role, e.text, e.heard, e.t_ms) for e in rec.render().transcript]
    assert entries == [("agent", "Hello.", "heard", 100.0), ("caller", "hi there", None, 1000.0)]


def test_audio_the_gateway_still_held_at_the_barge_in_makes_the_response_cut() -> None:
    """Every mark sent was echoed, but the upstream had sent more audio than went out: the response is cut."""
    rec = CallRecorder()
    caller_frames(rec, 100)
    agent(rec, "r1", "A long answer.", 1000, T0 + 0.1)
    rec.agent_turn_end(T0 + 0.1)
    for name in send(rec, "r1", 200, T0 + 0.1, 0):
        rec.mark_echoed(name, T0 + 0.3)
    rec.caller_said("stop", T0 + 0.5)
    rec.sent_clear(T0 + 0.5)
    assert [(line["heard"], line["heard_ms"], line["cut_at_ms"]) for line in agent_lines(rec)] == [
        ("cut", 200.0, 500.0)
    ]


def test_text_interrupted_before_its_audio_is_cut() -> None:
    """A response whose audio never came before the barge-in was not heard."""
    rec = CallRecorder()
    caller_frames(rec, 50)
    rec.agent_said("r1", "Let me think.", T0 + 0.1)
    rec.caller_interrupted(T0 + 0.2)
    assert [(line["heard"], line["heard_ms"]) for line in agent_lines(rec)] == [("cut", 0.0)]


def test_audio_still_queued_when_the_call_ended_was_never_heard() -> None:
    """The right channel stops where the Twilio socket closed; the unplayed rest counts as cut."""
    rec = CallRecorder()
    caller_frames(rec, 10)
    agent(rec, "r1", "Goodbye.", 1000, T0)
    send(rec, "r1", 1000, T0 + 0.1, 0)
    rec.twilio_ended(T0 + 0.3)
    rendered = rec.render()
    assert rendered.duration_ms == 300
    assert rendered.heard_ms == 200 and rendered.cut_ms == 800
    assert [(e.heard, e.cut_at_ms) for e in rendered.transcript] == [("cut", 300.0)]


def test_response_latency_runs_from_the_final_transcript_to_the_reply_first_audio() -> None:
    """Audio of an older response does not end the wait; the first audio of a response begun after does."""
    rec = CallRecorder(keep_audio=False)
    agent(rec, "r1", "Hello.", 3000, T0)
    rec.caller_said("what time is it", T0 + 1.0)
    rec.sent_media(b"", T0 + 1.1, "r1")
    agent(rec, "r2", "Noon.", 500, T0 + 1.3)
    rec.sent_media(b"", T0 + 1.5, "r2")
    rec.sent_media(b"", T0 + 1.6, "r2")
    assert rec.response_latencies_ms == [500.0]


def test_tool_calls_are_kept_with_the_outcome_of_those_the_gateway_ran() -> None:
    """Parameters are parsed as JSON (kept raw when they are not); the HTTP outcome is attached by id."""
    rec = CallRecorder(keep_audio=False)
    rec.tool_call("lookup_order", "t1", '{"order": 7}', T0)
    rec.tool_call("hang_up", "t2", "not json", T0 + 1)
    rec.tool_finished("t1", "http_500")
    assert [(t.name, t.parameters, t.outcome) for t in rec.tool_calls] == [
        ("lookup_order", {"order": 7}, "http_500"),
        ("hang_up", "not json", None),
    ]


def test_without_audio_nothing_is_parsed_and_render_refuses() -> None:
    """``keep_audio=False`` is for the summary alone: Twilio frames are not even parsed."""
    rec = CallRecorder(keep_audio=False)
    rec.twilio_read("not json", T0)
    rec.twilio_sent("not json", T0, kind="mark")
    assert rec.ignored_frames == 0
    with pytest.raises(CallStateError):
        rec.render()


def test_wire_text_is_read_like_the_call_reads_it() -> None:
    """Twilio's start, media and mark echoes, the gateway's media, marks and clear, and EVI's messages fed as
    text give the same recording as the typed facts; frames of another stream and junk are skipped."""
    rec = CallRecorder(EviCodec())
    start = tw.start_message(
        sequence_number=1,
        stream_sid=STREAM,
        account_sid="AC" + "0" * 32,
        call_sid="CA" + "0" * 32,
        custom_parameters={},
    )
    rec.twilio_read(start, T0)
    for n in range(40):
        media = tw.inbound_media_message(
            sequence_number=n + 2, stream_sid=STREAM, chunk=n + 1, timestamp_ms=n * 20, ulaw=tone(FRAME)
        )
        rec.twilio_read(media, T0 + n * 0.02)
    other = tw.inbound_media_message(sequence_number=99, stream_sid="MZ" + "9" * 32, chunk=1, timestamp_ms=0, ulaw=b"")
    rec.twilio_read(other, T0)
    rec.twilio_read("not json", T0)
    said = evi.UserMessage(
        message=evi.ChatMessage(role="user", content="book a table"),
        models=evi.Inference(),
        time=evi.MillisecondInterval(begin=0, end=100),
        from_text=False,
        interim=False,
    )
    rec.upstream_read(said.to_json(), T0 + 0.1)
    reply = evi.AssistantMessage(
        id="r1",
        message=evi.ChatMessage(role="assistant", content="For how many?"),
        models=evi.Inference(),
        from_text=False,
        is_quick_response=False,
    )
    rec.upstream_read(reply.to_json(), T0 + 0.15)
    wav = wav_bytes(bytes(2 * 2400), 24000)  # 100 ms at 24 kHz
    rec.upstream_read(evi.AudioOutput(id="r1", index=0, data=base64.b64encode(wav).decode()).to_json(), T0 + 0.15)
    rec.upstream_read(evi.AssistantEnd().to_json(), T0 + 0.15)
    rec.twilio_sent(tw.media_message(STREAM, tone(800)), T0 + 0.2, kind="media", response_id="r1")
    rec.twilio_sent(tw.mark_message(STREAM, "0.0"), T0 + 0.2, kind="mark")
    rec.twilio_read(tw.mark_echo_message(sequence_number=50, stream_sid=STREAM, name="0.0"), T0 + 0.3)
    rec.twilio_sent(tw.clear_message(STREAM), T0 + 0.31, kind="clear")
    rendered = rec.render()
    _, right = channels(rendered.stereo_pcm16)
    assert right[200 * MS : 300 * MS].all() and not right[300 * MS :].any()
    assert rec.ignored_frames == 1
    assert [json.loads(line) for line in rendered.transcript_jsonl().splitlines()] == [
        {"t_ms": 100.0, "role": "caller", "text": "book a table", "response_latency_ms": 100.0},
        {
            "t_ms": 200.0,
            "role": "agent",
            "text": "For how many?",
            "response_id": "r1",
            "heard": "heard",
            "heard_ms": 100.0,
        },
    ]
