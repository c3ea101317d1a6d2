"""Transcript tests of the sans-I/O call core: Twilio text, upstream text and time in, actions out."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.core.actions import CloseTwilio, CloseUpstream, OpenUpstream
from gateway.core.call import QUIET_TICK_FRAMES
from gateway.core.params import CallParams
from gateway.core.states import CallState
from gateway.testing import CallDriver
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw
from gateway.wire.stream_token import StreamTokens

RNG = np.random.default_rng(7)


def speech_ulaw(duration_ms: int) -> bytes:
    """Noise-like caller audio as μ-law at 8 kHz."""
    pcm = (RNG.standard_normal(duration_ms * 8) * 3000).astype("<i2").tobytes()
    return pcm16_to_ulaw(pcm)


def tone_pcm(duration_ms: int, rate_hz: int, freq_hz: float = 440.0) -> bytes:
    """A sine at ``rate_hz`` as linear16."""
    t = np.arange(duration_ms * rate_hz // 1000) / rate_hz
    return (np.sin(2 * np.pi * freq_hz * t) * 8000).astype("<i2").tobytes()


def active_driver(**params: object) -> CallDriver:
    """A call that has started and whose upstream is ready."""
    d = CallDriver(CallParams(**params))  # type: ignore[arg-type]
    d.start({"caller_number": "+15550001111"})
    d.ready()
    return d


def test_start_opens_the_upstream_with_the_calls_variables() -> None:
    """A valid start asks for one upstream session carrying the caller number and call SID."""
    d = CallDriver()
    actions = d.start({"caller_number": "+15550001111", "token": "x"})
    opens = [a for a in actions if isinstance(a, OpenUpstream)]
    assert len(opens) == 1
    assert dict(opens[0].session.variables) == {"caller_number": "+15550001111", "call_sid": d.call_sid}
    assert opens[0].session.custom_session_id == d.call_sid
    assert d.call.state is CallState.CONNECTING_UPSTREAM


def test_session_settings_precede_all_audio_and_preroll_is_forwarded_in_order() -> None:
    """Caller audio from before the upstream was ready follows session_settings, bit-exact and in order."""
    d = CallDriver()
    d.start()
    frames = [speech_ulaw(20) for _ in range(5)]
    for frame in frames:
        assert d.kinds(d.media(frame)) == []
    sent = d.to_upstream(d.ready())
    assert sent[0] == {
        "type": "session_settings",
        "audio": {"encoding": "linear16", "sample_rate": 8000, "channels": 1},
        "variables": {"call_sid": d.call_sid},
        "custom_session_id": d.call_sid,
    }
    audio = b"".join(base64.b64decode(m["data"]) for m in sent[1:])
    assert [m["type"] for m in sent[1:]] == ["audio_input"] * 5
    assert audio == ulaw_to_pcm16(b"".join(frames))


def test_preroll_is_bounded_keeping_the_newest_audio() -> None:
    """While the upstream connects, only the newest preroll_ms of caller audio is kept."""
    d = CallDriver(CallParams(preroll_ms=100))
    d.start()
    frames = [speech_ulaw(20) for _ in range(10)]
    for frame in frames:
        d.media(frame)
    audio = b"".join(base64.b64decode(m["data"]) for m in d.to_upstream(d.ready())[1:])
    assert audio == ulaw_to_pcm16(b"".join(frames[-5:]))


def test_active_caller_audio_is_forwarded_at_once_bit_exact() -> None:
    """Each caller frame becomes one audio_input right away, as linear16 at 8 kHz."""
    d = active_driver()
    frame = speech_ulaw(20)
    sent = d.to_upstream(d.media(frame))
    assert len(sent) == 1 and base64.b64decode(sent[0]["data"]) == ulaw_to_pcm16(frame)


def test_gap_in_twilio_timestamps_is_filled_with_silence() -> None:
    """A 60 ms hole in media.timestamp is forwarded as 60 ms of silence before the next frame."""
    d = active_driver()
    d.media(speech_ulaw(20), timestamp_ms=0)
    frame = speech_ulaw(20)
    sent = d.to_upstream(d.media(frame, timestamp_ms=80))
    pcm = base64.b64decode(sent[0]["data"])
    assert pcm == bytes(60 * 16) + ulaw_to_pcm16(frame)


@pytest.mark.parametrize(
    "media_format",
    [{"encoding": "audio/x-l16"}, {"sample_rate_hz": 16000}, {"channels": 2}],
)
def test_unsupported_media_format_closes_without_an_upstream(media_format: dict[str, Any]) -> None:
    """Anything but μ-law/8000/1 is refused before any upstream session is opened."""
    d = CallDriver()
    actions = d.start(**media_format)
    assert not any(isinstance(a, OpenUpstream) for a in actions)
    assert [a.code for a in actions if isinstance(a, CloseTwilio)] == [1008]
    assert d.call.state is CallState.CLOSED


def test_stream_token_is_checked_before_the_upstream_opens() -> None:
    """With token checking on, a missing, forged or reused token closes the stream; a fresh one opens EVI."""
    tokens = StreamTokens(b"k" * 32, ttl_s=30)
    good = CallDriver(tokens=tokens)
    token = tokens.mint(good.call_sid, good.now)
    assert any(isinstance(a, OpenUpstream) for a in good.start({"token": token}))
    for params in ({}, {"token": token}, {"token": token[:-2] + "xx"}):
        d = CallDriver(tokens=tokens)
        actions = d.start(params)
        assert not any(isinstance(a, OpenUpstream) for a in actions), params
        assert d.call.end_reason is not None and d.call.end_reason.value == "start_rejected"


def test_media_before_start_closes_the_stream() -> None:
    """Media before start is a protocol error: the stream closes and no upstream is opened."""
    d = CallDriver()
    actions = d.media(speech_ulaw(20))
    assert d.kinds(actions) == ["close_twilio"]
    assert d.call.end_reason is not None and d.call.end_reason.value == "twilio_protocol_error"


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        '{"event": "media", "streamSid": "MZx"}',
        '{"event": "media", "sequenceNumber": "3", "streamSid": "MZx",'
        ' "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "***"}}',
        '{"event": "surprise"}',
        "[]",
    ],
)
def test_bad_twilio_frames_during_a_call_are_ignored(bad: str) -> None:
    """Malformed or unknown frames mid-call are logged and dropped; the call goes on."""
    d = active_driver()
    assert d.twilio(bad) == []
    assert d.call.state is CallState.ACTIVE
    assert len(d.to_upstream(d.media(speech_ulaw(20)))) == 1


def test_media_for_another_stream_is_dropped() -> None:
    """Frames carrying a different streamSid are not forwarded (twilio-media-streams.md P10)."""
    d = active_driver()
    assert d.to_upstream(d.media(speech_ulaw(20), stream_sid="MZ" + "9" * 32)) == []
    assert d.call.statistics(d.now).counts["twilio_wrong_stream_sid"] == 1


@pytest.mark.parametrize("rate_hz", [24000, 48000])
def test_upstream_audio_reaches_the_caller_whole_after_turn_end(rate_hz: int) -> None:
    """A response's audio plays out completely: its duration at 8 kHz matches within one frame."""
    d = active_driver()
    for i in range(5):
        d.say("r1", tone_pcm(200, rate_hz), rate_hz, index=i)
    d.upstream(evi.AssistantEnd())
    d.advance(2000)
    heard = d.heard_ulaw()
    assert abs(len(heard) - 1000 * 8) <= 160
    names = [m.mark.name for m in d.to_twilio() if isinstance(m, tw.OutboundMark)]
    assert len(names) == len(set(names)) > 0


def test_playout_keeps_a_bounded_lead_over_real_time() -> None:
    """Audio produced far faster than real time is released at about real time plus the lead."""
    d = active_driver(playout=__import__("gateway.core.playout", fromlist=["PlayoutParams"]).PlayoutParams(lead_ms=160))
    first = d.say("r1", tone_pcm(3000, 24000), 24000)
    sent_ms = len(d.heard_ulaw(first)) / 8
    assert 0 < sent_ms <= 160 + 100
    later = d.advance(1000)
    assert len(d.heard_ulaw(first + later)) / 8 <= 1000 + 160 + 100


def test_user_interruption_clears_at_once_and_drops_late_audio() -> None:
    """On user_interruption the reply to it is a clear, and no more audio of that response is sent."""
    d = active_driver()
    d.say("r1", tone_pcm(1000, 24000), 24000, index=0)
    d.advance(200)
    actions = d.upstream(evi.UserInterruption(time=123))
    assert d.kinds(actions) == ["clear"]
    late = d.say("r1", tone_pcm(1000, 24000), 24000, index=1) + d.advance(1000)
    assert d.heard_ulaw(late) == b""
    fresh = d.say("r2", tone_pcm(200, 24000), 24000) + d.advance(400)
    assert len(d.heard_ulaw(fresh)) > 0


def test_caller_speaking_over_finished_generation_clears_playout() -> None:
    """After assistant_end, a new user_message while audio is still queued clears it (no interruption comes)."""
    d = active_driver()
    d.say("r1", tone_pcm(2000, 24000), 24000)
    d.upstream(evi.AssistantEnd())
    d.advance(300)
    message = evi.UserMessage(
        message=evi.ChatMessage(role="user", content="wait"),
        models=evi.Inference(),
        time=evi.MillisecondInterval(begin=0, end=100),
        from_text=False,
        interim=True,
    )
    assert d.kinds(d.upstream(message)) == ["clear"]
    assert d.heard_ulaw(d.advance(500)) == b""


def test_user_message_while_idle_does_not_clear() -> None:
    """A transcript when nothing is playing sends nothing to Twilio."""
    d = active_driver()
    message = evi.UserMessage(
        message=evi.ChatMessage(role="user", content="hello"),
        models=evi.Inference(),
        time=evi.MillisecondInterval(begin=0, end=100),
        from_text=False,
        interim=False,
    )
    assert d.to_twilio(d.upstream(message)) == []


def test_dtmf_reaches_the_upstream_as_text() -> None:
    """A keypress becomes a user_input message."""
    d = active_driver()
    assert d.to_upstream(d.dtmf("5")) == [{"type": "user_input", "text": "[keypad 5]"}]


def test_stop_tears_down_the_upstream_only() -> None:
    """Twilio's stop (also sent on a REST redirect) closes the upstream; nothing else is asked of Twilio."""
    d = active_driver()
    actions = d.stop()
    assert any(isinstance(a, CloseUpstream) for a in actions)
    assert d.call.state is CallState.CLOSED and d.call.end_reason is not None
    assert d.call.end_reason.value == "twilio_stop"


def test_upstream_close_lets_queued_audio_play_then_ends_the_call() -> None:
    """When the upstream closes mid-call, queued audio still plays before the stream is closed."""
    d = active_driver()
    d.say("r1", tone_pcm(600, 24000), 24000)
    d.upstream(evi.AssistantEnd())
    actions = d.call.upstream_closed(d.now, 1000, "bye")
    assert not any(isinstance(a, CloseTwilio) for a in actions)
    assert d.call.state is CallState.ENDING
    d.advance(1000)
    assert d.call.state is CallState.CLOSED
    assert len(d.heard_ulaw()) == pytest.approx(600 * 8, abs=160)
    assert any(isinstance(a, CloseTwilio) for a in d.actions)


def test_upstream_error_ends_the_call_cleanly() -> None:
    """An EVI error is logged with its code and ends the call: upstream closed, stream closed."""
    d = active_driver()
    actions = d.upstream(evi.WebSocketError(code="I0118", slug="transcription_disconnected", message="gone"))
    kinds = d.kinds(actions)
    assert "close_upstream" in kinds and "close_twilio" in kinds
    stats = d.call.statistics(d.now)
    assert stats.end_reason == "upstream_error" and stats.upstream_faults == ("I0118 transcription_disconnected",)


def test_invalid_wav_is_dropped_and_the_call_goes_on() -> None:
    """A malformed audio_output is counted and skipped; later audio still plays."""
    d = active_driver()
    junk = base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEjunk").decode()
    assert d.to_twilio(d.upstream(evi.AudioOutput(id="r1", index=0, data=junk))) == []
    assert d.call.statistics(d.now).counts["upstream_bad_audio"] == 1
    d.say("r1", tone_pcm(200, 24000), 24000, index=1)
    assert len(d.heard_ulaw(d.advance(400))) > 0


def test_unknown_and_malformed_upstream_messages_are_ignored() -> None:
    """Unknown EVI types and broken JSON are logged, never fatal."""
    d = active_driver()
    assert d.upstream('{"type": "brand_new_thing"}') == []
    assert d.upstream("{not json") == []
    assert d.call.state is CallState.ACTIVE


@pytest.mark.parametrize(
    ("setup", "wait_ms", "reason"),
    [
        ("none", 11_000, "start_timeout"),
        ("start", 11_000, "upstream_timeout"),
    ],
)
def test_deadlines_end_the_call(setup: str, wait_ms: int, reason: str) -> None:
    """No start, or an upstream that never becomes ready, ends the call after its timeout."""
    d = CallDriver()
    if setup == "start":
        d.start()
    d.advance(wait_ms)
    assert d.call.state is CallState.CLOSED
    assert d.call.end_reason is not None and d.call.end_reason.value == reason


def test_max_duration_speaks_a_goodbye_then_ends_the_call() -> None:
    """At max_duration_s (counted from the session start) the agent is asked to say the line's goodbye; once it
    has been heard, the call ends."""
    d = active_driver(max_duration_s=2.0)
    actions = d.advance(2000 + QUIET_TICK_FRAMES * 20)  # a quiet call's deadline is checked every 10 frames
    assert d.call.state is CallState.SAYING_GOODBYE
    assert {"type": "assistant_input", "text": d.call.line.max_duration_message} in d.to_upstream(actions)
    d.say("bye", tone_pcm(600, 24000), 24000)
    d.upstream(evi.AssistantEnd())
    assert d.call.state is CallState.ENDING
    d.advance(1000)
    assert d.call.state is CallState.CLOSED
    assert d.call.end_reason is not None and d.call.end_reason.value == "max_duration"
    assert d.playback.heard_audio_bytes == pytest.approx(600 * 8, abs=160)


def test_caller_hangup_closes_upstream_once() -> None:
    """When the Twilio socket closes, exactly one CloseUpstream is asked for, and nothing after."""
    d = active_driver()
    actions = d.call.twilio_closed(d.now)
    assert [type(a) for a in actions] == [CloseUpstream]
    assert d.call.twilio_closed(d.now) == [] and d.advance(100) == []


def _hang_up_tool(builtin: bool = True) -> evi.ToolCallMessage:
    return evi.ToolCallMessage(
        name="hang_up",
        parameters="{}",
        tool_call_id="tc-1",
        response_required=not builtin,
        tool_type="builtin" if builtin else "function",
    )


def test_hang_up_tool_ends_the_call_after_the_goodbye_is_heard() -> None:
    """A hang_up tool call lets the goodbye play out completely, then closes the stream (ending the call)."""
    d = active_driver()
    d.say("bye", tone_pcm(800, 24000), 24000)
    d.upstream(_hang_up_tool())
    assert d.call.state is CallState.SAYING_GOODBYE  # the turn has not ended yet
    actions = d.upstream(evi.AssistantEnd())
    assert "close_upstream" in d.kinds(actions) and "close_twilio" not in d.kinds(actions)
    for _ in range(10):
        d.advance(200)
    assert d.call.state is CallState.CLOSED and d.call.end_reason is not None
    assert d.call.end_reason.value == "hang_up"
    assert len(d.heard_ulaw()) == pytest.approx(800 * 8, abs=160)


def test_function_hang_up_tool_gets_a_tool_response() -> None:
    """A hang_up declared as a function tool that wants a reply gets a tool_response."""
    d = active_driver()
    sent = d.to_upstream(d.upstream(_hang_up_tool(builtin=False)))
    assert sent == [{"type": "tool_response", "tool_call_id": "tc-1", "content": "ok"}]
    d.advance(1400)
    assert d.call.state is CallState.SAYING_GOODBYE  # waiting for a goodbye that may still come
    d.advance(200)
    assert d.call.state is CallState.CLOSED  # none came within agent_silence_grace_s


def test_resampler_tail_is_flushed_when_upstream_audio_pauses() -> None:
    """Without assistant_end, a pause longer than the lead still releases every sample held by the resampler."""
    d = active_driver()
    d.say("r1", tone_pcm(500, 48000), 48000)
    d.advance(1500)
    assert len(d.heard_ulaw()) == pytest.approx(500 * 8, abs=8)


def test_an_input_the_table_refuses_changes_nothing() -> None:
    """A repeated chat_metadata mid-call is refused: no action, the playout and session untouched, one count."""
    d = active_driver()
    d.say("r1", tone_pcm(600, 24000), 24000)
    before = d.call.statistics(d.now)
    again = evi.ChatMetadata(chat_id="chat-2", chat_group_id="group-2", request_id="req-2")
    assert d.upstream(again) == []
    after = d.call.statistics(d.now)
    assert after.counts.pop("out_of_order_inputs") == 1
    assert after == before
    assert d.call.upstream_session_id == "chat-1" and d.call.state is CallState.ACTIVE


def test_goodbye_that_never_ends_is_bounded() -> None:
    """After hang_up, a goodbye whose turn never ends still ends the call after goodbye_timeout_s."""
    d = active_driver(goodbye_timeout_s=2.0)
    d.say("bye", tone_pcm(400, 24000), 24000)
    d.upstream(_hang_up_tool())
    d.advance(1900)
    assert d.call.state is CallState.SAYING_GOODBYE
    d.advance(200)
    d.advance(100)
    assert d.call.state is CallState.CLOSED
    stats = d.call.statistics(d.now)
    assert stats.end_reason == "hang_up" and "goodbye not received within 2 s" in stats.end_detail
    assert len(d.heard_ulaw()) == pytest.approx(400 * 8, abs=160)


def test_caller_interrupting_the_goodbye_ends_the_call() -> None:
    """A caller talking over the goodbye cuts it off; the agent's turn is over, so the call ends."""
    d = active_driver()
    d.say("bye", tone_pcm(2000, 24000), 24000)
    d.upstream(_hang_up_tool())
    d.advance(200)
    actions = d.upstream(evi.UserInterruption(time=100))
    assert "clear" in d.kinds(actions) and "close_upstream" in d.kinds(actions)
    d.advance(40)
    assert d.call.state is CallState.CLOSED and d.call.end_reason is not None
    assert d.call.end_reason.value == "hang_up"


def test_end_reason_is_the_first_cause() -> None:
    """When EVI closes and the caller then hangs up during the drain, the call ended because EVI closed."""
    d = active_driver()
    d.say("r1", tone_pcm(600, 24000), 24000)
    d.call.upstream_closed(d.now, 1000, "bye")
    assert d.call.state is CallState.ENDING
    assert d.call.twilio_closed(d.now) == []
    assert d.call.end_reason is not None and d.call.end_reason.value == "upstream_closed"


def test_the_drain_waits_for_the_caller_to_hear_the_audio() -> None:
    """Marks come back as Twilio's playback reaches them, so the call closes only once 1 s of audio was heard."""
    d = active_driver()
    d.say("r1", tone_pcm(1000, 24000), 24000)
    d.upstream(evi.AssistantEnd())
    d.call.upstream_closed(d.now, 1000, "bye")
    d.advance(700)
    assert d.call.state is CallState.ENDING
    d.advance(500)
    assert d.call.state is CallState.CLOSED
    assert d.playback.heard_audio_bytes == pytest.approx(1000 * 8, abs=160)


def test_an_active_call_is_ticked_every_10th_round_and_when_its_playout_is_due() -> None:
    """With nothing of the agent to pace, an active call needs every 10th round only. While 2 s of agent audio
    plays in 200 ms messages it needs the rounds in which a message is due, about one in ten, not every round, and
    still plays all of it without an underrun; outside ``active`` every round ticks."""
    d = active_driver()
    assert [r for r in range(1, 21) if d.call.tick_due(r, d.now)] == [QUIET_TICK_FRAMES, 2 * QUIET_TICK_FRAMES]
    d.say("r1", tone_pcm(2000, 24000), 24000)
    d.upstream(evi.AssistantEnd())
    extra = 0
    for _ in range(150):
        if (d.rounds + 1) % QUIET_TICK_FRAMES and d.call.tick_due(d.rounds + 1, d.now + 0.02):
            extra += 1
        d.advance(20)
    assert 5 <= extra <= 15
    assert abs(len(d.heard_ulaw()) - 2000 * 8) <= 160
    playout = d.call.statistics(d.now).playout
    assert playout is not None and playout.underruns == 0
    assert [r for r in range(1, 21) if d.call.tick_due(r, d.now)] == [QUIET_TICK_FRAMES, 2 * QUIET_TICK_FRAMES]
    d.call.upstream_closed(d.now, 1000, "bye")
    assert d.call.state is not CallState.ACTIVE
    assert all(d.call.tick_due(r, d.now) for r in range(1, 21))


def test_late_audio_of_an_earlier_response_cut_by_a_barge_in_is_dropped() -> None:
    """Audio of response A, then of B (no assistant_end between), a user_interruption, then late audio of A:
    the clear cut both, so A's late chunk is dropped as late audio and the call goes on."""
    d = active_driver()
    d.say("A", tone_pcm(300, 24000), 24000, index=0)
    d.say("B", tone_pcm(300, 24000), 24000, index=0)
    assert d.kinds(d.upstream(evi.UserInterruption(time=1))) == ["clear"]
    late = d.say("A", tone_pcm(300, 24000), 24000, index=1) + d.advance(600)
    assert d.heard_ulaw(late) == b""
    assert d.call.state is CallState.ACTIVE
    fresh = d.say("C", tone_pcm(200, 24000), 24000) + d.advance(400)
    assert len(d.heard_ulaw(fresh)) > 0
