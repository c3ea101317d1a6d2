"""Twilio's playback buffer, modelled sans-I/O: what the caller hears, when marks come back, what a gap is."""

from __future__ import annotations

import pytest

from gateway.codecs.g711 import ULAW_SILENCE_BYTE
from gateway.errors import CallStateError, ConfigError
from gateway.simulator.twilio_playback import MarkEcho, PlayoutGap, TwilioPlayback
from gateway.wire import twilio_media as tw

STREAM = "MZ" + "0" * 32


def tone(n_bytes: int) -> bytes:
    """Non-silent μ-law bytes."""
    return bytes([0x10]) * n_bytes


def test_a_mark_with_nothing_queued_is_echoed_at_once() -> None:
    """docs/twilio-media-streams.md §1.5: a mark behind no audio comes straight back, at the current media time."""
    playback = TwilioPlayback()
    playback.play()
    assert playback.mark("m0") == [MarkEcho("m0", 20.0, False)]


def test_a_mark_is_echoed_when_playback_reaches_it() -> None:
    """A mark after 50 ms of audio is echoed in the third frame, at 50 ms on the media clock."""
    playback = TwilioPlayback()
    playback.media(tone(400))
    assert playback.mark("m1") == []
    assert playback.play().echoes == [] and playback.play().echoes == []
    third = playback.play()
    assert third.echoes == [MarkEcho("m1", 50.0, False)]
    assert third.audio_bytes == 80 and third.ulaw[80:] == bytes([ULAW_SILENCE_BYTE]) * 80


def test_clear_drops_the_queue_and_echoes_every_pending_mark_as_flushed() -> None:
    """§2.3: clear echoes pending marks as cleared, counts the dropped audio, and plays silence after."""
    playback = TwilioPlayback()
    playback.media(tone(800))
    playback.mark("a")
    playback.media(tone(800))
    playback.mark("b")
    playback.play()
    assert playback.clear() == [MarkEcho("a", 20.0, True), MarkEcho("b", 20.0, True)]
    assert playback.cleared_bytes == 1440 and playback.heard_audio_bytes == 160
    after = playback.play()
    assert after.audio_bytes == 0 and after.echoes == []


def test_silence_between_audio_is_a_gap_and_short_ones_are_underruns() -> None:
    """A 40 ms hole inside speech is an underrun; a 1 s pause between turns is a gap but no underrun."""
    playback = TwilioPlayback()
    playback.media(tone(160))
    playback.play()
    playback.play()
    playback.play()
    playback.media(tone(160))
    resumed = playback.play()
    assert resumed.gap == PlayoutGap(20.0, 40.0) and resumed.underrun
    for _ in range(50):
        playback.play()
    playback.media(tone(160))
    later = playback.play()
    assert later.gap is not None and later.gap.duration_ms == pytest.approx(1000.0) and not later.underrun
    assert playback.underruns == [PlayoutGap(20.0, 40.0)] and len(playback.gaps) == 2


def test_silence_after_a_clear_is_not_a_gap() -> None:
    """Audio cut by clear and new audio later is a new response, not an underrun."""
    playback = TwilioPlayback()
    playback.media(tone(320))
    playback.play()
    playback.clear()
    playback.play()
    playback.media(tone(160))
    assert playback.play().gap is None and playback.gaps == []


def test_receive_takes_the_gateways_messages() -> None:
    """Parsed gateway messages drive the same model: media queues, a mark waits behind it, clear flushes."""
    playback = TwilioPlayback()
    for text in (tw.media_message(STREAM, tone(160)), tw.mark_message(STREAM, "x")):
        assert playback.receive(tw.parse_gateway_message(text)) == []
    assert playback.queued_ms == 20.0
    assert playback.receive(tw.parse_gateway_message(tw.clear_message(STREAM))) == [MarkEcho("x", 0.0, True)]


def test_frame_size_must_be_positive() -> None:
    """A zero frame is a configuration error, not an endless loop."""
    with pytest.raises(ConfigError):
        TwilioPlayback(frame_ms=0)


def test_playing_silence_in_one_step_is_the_same_as_frame_by_frame() -> None:
    """play_silence(n) advances the media clock and the gap that follows exactly as n empty play() calls do."""
    stepped, skipped = TwilioPlayback(), TwilioPlayback()
    for playback in (stepped, skipped):
        playback.media(tone(200))
        playback.play()
        playback.play()
    for _ in range(5):
        stepped.play()
    skipped.play_silence(5)
    for playback in (stepped, skipped):
        playback.media(tone(160))
    assert skipped.play() == stepped.play()
    assert skipped.media_time_ms == stepped.media_time_ms == 160.0 and skipped.gaps == stepped.gaps


def test_playing_silence_with_audio_queued_is_a_bug() -> None:
    """Skipping frames over queued audio would lose it: the model refuses."""
    playback = TwilioPlayback()
    playback.media(tone(160))
    with pytest.raises(CallStateError):
        playback.play_silence(1)
