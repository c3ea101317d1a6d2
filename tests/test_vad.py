"""Turn detection: utterance boundaries, hangover, prefix padding, interruption timing, noise, chunking, the
bound on an utterance, and where the agent's ears run the detector."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.framing import FRAME_MS, TWILIO_RATE_HZ
from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_silence, ulaw_to_pcm16
from gateway.errors import ConfigError
from gateway.simulator.agent_ears import OFF_LOOP_MS, Ears
from gateway.simulator.evi_session import DeclaredAudio
from gateway.simulator.vad import SpeechEnded, SpeechOngoing, SpeechStarted, TurnDetector, TurnEvent, TurnParams
from gateway.simulator.wavgen import speechlike_pcm16, tone_pcm16

RATE_HZ = TWILIO_RATE_HZ
BYTES_PER_MS = RATE_HZ * 2 // 1000  # linear16


def _at_level(pcm16: bytes, rms_dbfs: float) -> bytes:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(samples * samples)))
    scaled = samples * (10.0 ** (rms_dbfs / 20.0) * 32768.0 / rms)
    return bytes(np.clip(np.round(scaled), -32768, 32767).astype("<i2").tobytes())


def _speech(duration_ms: int, seed: int, rms_dbfs: float = -30.0) -> bytes:
    return _at_level(speechlike_pcm16(duration_ms, RATE_HZ, seed), rms_dbfs)


def _silence(duration_ms: int) -> bytes:
    return b"\x00\x00" * (RATE_HZ * duration_ms // 1000)


def _white(duration_ms: int, rms_dbfs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise: np.ndarray = rng.standard_normal(RATE_HZ * duration_ms // 1000) * (10.0 ** (rms_dbfs / 20.0) * 32768.0)
    return noise


def _pcm(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


def _noise(duration_ms: int, rms_dbfs: float, seed: int) -> bytes:
    return _pcm(_white(duration_ms, rms_dbfs, seed))


def _ulaw_round_trip(pcm16: bytes) -> bytes:
    return ulaw_to_pcm16(pcm16_to_ulaw(pcm16))


def _run(audio: bytes, params: TurnParams | None = None, chunk_bytes: int = 320) -> list[TurnEvent]:
    detector = TurnDetector(params or TurnParams(), RATE_HZ)
    events: list[TurnEvent] = []
    for offset in range(0, len(audio), chunk_bytes):
        events += detector.push(audio[offset : offset + chunk_bytes])
    return events


def _ended(events: list[TurnEvent]) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


def test_params_defaults_are_evis() -> None:
    """The defaults are EVI's documented turn-detection and interruption defaults."""
    params = TurnParams()
    assert (params.end_of_turn_silence_ms, params.speech_detection_threshold) == (800, 0.5)
    assert (params.prefix_padding_ms, params.min_interruption_ms, params.frame_ms) == (300, 800, 20)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("end_of_turn_silence_ms", 499),
        ("end_of_turn_silence_ms", 3001),
        ("speech_detection_threshold", -0.1),
        ("speech_detection_threshold", 1.5),
        ("speech_detection_threshold", float("nan")),
        ("prefix_padding_ms", -1),
        ("prefix_padding_ms", 1001),
        ("min_interruption_ms", 49),
        ("min_interruption_ms", 2001),
        ("frame_ms", 0),
        ("max_utterance_ms", 999),
    ],
)
def test_params_outside_evi_ranges_rejected(field: str, value: float) -> None:
    """A setting outside EVI's documented range is a ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=field):
        TurnParams(**{field: value})  # type: ignore[arg-type]


def test_rate_without_whole_frames_rejected() -> None:
    """A rate at which a frame is not a whole number of samples is a ConfigError."""
    with pytest.raises(ConfigError, match="11025 Hz"):
        TurnDetector(TurnParams(), 11025)


def test_counts_utterances_with_accurate_boundaries() -> None:
    """Three bursts separated by long silences give exactly three utterances, each edge within two frames."""
    bursts = [(400, 1200), (2900, 700), (4700, 2100)]  # (start_ms, duration_ms)
    audio = bytearray()
    for index, (start_ms, duration_ms) in enumerate(bursts):
        audio += _silence(start_ms - len(audio) // BYTES_PER_MS) + _speech(duration_ms, seed=index)
    audio += _silence(1500)
    events = _run(bytes(audio))
    ended = _ended(events)
    assert len(ended) == 3
    assert sum(isinstance(e, SpeechStarted) for e in events) == 3
    for utterance, (start_ms, duration_ms) in zip(ended, bursts, strict=True):
        assert abs(utterance.start_ms - start_ms) <= 2 * FRAME_MS
        assert abs(utterance.end_ms - (start_ms + duration_ms)) <= 2 * FRAME_MS


def test_short_pause_keeps_one_utterance() -> None:
    """A pause shorter than end_of_turn_silence_ms does not split the utterance."""
    audio = _silence(300) + _speech(800, 1) + _silence(500) + _speech(800, 2) + _silence(1200)
    ended = _ended(_run(audio))
    assert len(ended) == 1
    assert ended[0].end_ms == pytest.approx(2400, abs=2 * FRAME_MS)


@pytest.mark.parametrize("silence_ms", [500, 800, 1200])
def test_end_reported_only_after_the_silence(silence_ms: int) -> None:
    """SpeechEnded comes out exactly when end_of_turn_silence_ms of silence has been pushed, not before."""
    audio = _silence(200) + _speech(1000, 3) + _silence(silence_ms + 400)
    detector = TurnDetector(TurnParams(end_of_turn_silence_ms=silence_ms), RATE_HZ)
    seen_at_ms = None
    for offset in range(0, len(audio), FRAME_MS * BYTES_PER_MS):
        events = detector.push(audio[offset : offset + FRAME_MS * BYTES_PER_MS])
        ended = _ended(events)
        if ended:
            assert seen_at_ms is None
            seen_at_ms = detector.position_ms
            assert detector.position_ms == pytest.approx(ended[0].end_ms + silence_ms)
        elif seen_at_ms is None:
            assert detector.speaking == (detector.position_ms >= 260)
    assert seen_at_ms is not None
    assert not detector.speaking


def test_utterance_audio_includes_prefix_padding() -> None:
    """SpeechEnded carries the audio from prefix_padding_ms before the start to the end of the speech."""
    lead = _ulaw_round_trip(_noise(1000, -65.0, seed=9))
    audio = lead + _speech(900, 4) + _silence(1000)
    ended = _ended(_run(audio, TurnParams(prefix_padding_ms=300)))
    assert len(ended) == 1
    first = round(ended[0].start_ms - 300) * BYTES_PER_MS
    last = round(ended[0].end_ms) * BYTES_PER_MS
    assert ended[0].pcm16 == audio[first:last]
    assert len(ended[0].pcm16) == round(ended[0].end_ms - ended[0].start_ms + 300) * BYTES_PER_MS


def test_prefix_padding_clamped_at_stream_start() -> None:
    """Speech near the start of the stream gets only the audio that exists before it."""
    audio = _silence(100) + _speech(600, 5) + _silence(1000)
    ended = _ended(_run(audio, TurnParams(prefix_padding_ms=1000)))
    assert len(ended) == 1
    assert ended[0].pcm16 == audio[: round(ended[0].end_ms) * BYTES_PER_MS]


@pytest.mark.parametrize("min_interruption_ms", [50, 200, 800, 1500])
def test_speech_ongoing_once_at_min_interruption(min_interruption_ms: int) -> None:
    """SpeechOngoing is reported once, when the utterance has lasted min_interruption_ms (≥ the debounce)."""
    audio = _silence(500) + _speech(2000, 6) + _silence(1000)
    events = _run(audio, TurnParams(min_interruption_ms=min_interruption_ms))
    ongoing = [e for e in events if isinstance(e, SpeechOngoing)]
    started = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(ongoing) == 1
    assert len(started) == 1
    expected_ms = max(min_interruption_ms, 60)
    assert ongoing[0].speech_ms == pytest.approx(expected_ms, abs=FRAME_MS)
    assert ongoing[0].at_ms == pytest.approx(started[0].at_ms + ongoing[0].speech_ms)
    assert events.index(started[0]) < events.index(ongoing[0]) < events.index(_ended(events)[0])


def test_short_utterance_reports_no_ongoing() -> None:
    """An utterance shorter than min_interruption_ms never reports SpeechOngoing."""
    events = _run(_silence(300) + _speech(500, 7) + _silence(1000))
    assert len(_ended(events)) == 1
    assert not any(isinstance(e, SpeechOngoing) for e in events)


def test_ulaw_silence_and_low_noise_ignored() -> None:
    """μ-law digital silence and noise at -60 dBFS (after a μ-law round trip) produce no events."""
    silence = ulaw_to_pcm16(ulaw_silence(RATE_HZ * 3))
    noise = _ulaw_round_trip(_noise(5000, -60.0, seed=1))
    band_noise = _ulaw_round_trip(_at_level(tone_pcm16(300.0, 3000, RATE_HZ, 0.5), -60.0))
    assert _run(silence + noise + band_noise + silence) == []


def test_speech_found_in_low_noise() -> None:
    """Speech at -30 dBFS over continuous -60 dBFS noise is one utterance with accurate edges."""
    speech = np.concatenate([np.zeros(RATE_HZ), np.frombuffer(_speech(1500, 8), dtype="<i2"), np.zeros(RATE_HZ * 2)])
    mix = speech + _white(4500, -60.0, seed=2)
    audio = _ulaw_round_trip(_pcm(mix))
    ended = _ended(_run(audio))
    assert len(ended) == 1
    assert ended[0].start_ms == pytest.approx(1000, abs=2 * FRAME_MS)
    assert ended[0].end_ms == pytest.approx(2500, abs=2 * FRAME_MS)


def test_blip_shorter_than_debounce_ignored() -> None:
    """A 40 ms burst is below the 60 ms debounce and starts nothing."""
    assert _run(_silence(500) + _speech(40, 9) + _silence(1500)) == []


@pytest.mark.parametrize(("threshold", "detected"), [(0.2, True), (0.5, True), (0.9, False)])
def test_threshold_controls_sensitivity(threshold: float, detected: bool) -> None:
    """Quiet speech at -45 dBFS is found at low and default thresholds but not at 0.9."""
    audio = _silence(500) + _speech(1200, 10, rms_dbfs=-45.0) + _silence(1200)
    ended = _ended(_run(audio, TurnParams(speech_detection_threshold=threshold)))
    assert len(ended) == (1 if detected else 0)


def test_steady_hum_stops_counting_as_speech() -> None:
    """A constant tone is taken for speech at first, but the noise floor rises and the turn ends."""
    hum = _at_level(tone_pcm16(440.0, 15000, RATE_HZ), -45.0)
    ended = _ended(_run(hum))
    assert len(ended) == 1
    assert ended[0].end_ms < 12000


def test_reset_forgets_the_utterance_but_keeps_the_clock() -> None:
    """reset() drops the utterance in progress; no SpeechEnded follows and positions keep counting."""
    detector = TurnDetector(TurnParams(), RATE_HZ)
    events = detector.push(_silence(200) + _speech(600, 11) + b"\x01")
    assert [type(e) for e in events] == [SpeechStarted]
    assert detector.speaking
    detector.reset()
    assert not detector.speaking
    assert detector.position_ms == pytest.approx(800)
    assert detector.push(_silence(2000)) == []
    again = detector.push(_speech(400, 12) + _silence(1000))
    assert _ended(again)[0].start_ms == pytest.approx(2800, abs=2 * FRAME_MS)


def test_position_counts_whole_samples() -> None:
    """position_ms follows the audio pushed, including partial frames, ignoring a dangling odd byte."""
    detector = TurnDetector(TurnParams(), RATE_HZ)
    detector.push(b"\x00" * 333)
    assert detector.position_ms == pytest.approx(166 / RATE_HZ * 1000)
    detector.push(b"\x00")
    assert detector.position_ms == pytest.approx(167 / RATE_HZ * 1000)


_CHUNKING_AUDIO = (
    _silence(300) + _speech(900, 13) + _silence(400) + _speech(300, 14) + _silence(900) + _speech(500, 15)
) + _silence(900)
_CHUNKING_EXPECTED = _run(_CHUNKING_AUDIO, chunk_bytes=len(_CHUNKING_AUDIO))


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_CHUNKING_AUDIO)), max_size=40))
def test_any_chunking_gives_identical_events(cuts: list[int]) -> None:
    """However the audio is split into chunks (odd byte counts included), the events are identical."""
    detector = TurnDetector(TurnParams(min_interruption_ms=500), RATE_HZ)
    reference = TurnDetector(TurnParams(min_interruption_ms=500), RATE_HZ).push(_CHUNKING_AUDIO)
    events: list[TurnEvent] = []
    bounds = [0, *sorted(cuts), len(_CHUNKING_AUDIO)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        events += detector.push(_CHUNKING_AUDIO[lo:hi])
    assert events == reference
    assert len(_ended(events)) == 2
    assert _ended(_CHUNKING_EXPECTED) == _ended(events)


def _endless(duration_ms: int, seed: int) -> bytes:
    """Someone who never stops talking: speech with a 150 ms breath every second, far shorter than the
    end-of-turn silence."""
    return b"".join(_speech(850, seed + i) + _silence(150) for i in range(duration_ms // 1000))


def test_an_endless_utterance_is_ended_at_the_bound_and_holds_no_more() -> None:
    """100 s of unbroken speech end an utterance every max_utterance_ms (capped), each transcribable on
    its own, and the detector never holds more than the bound plus the prefix padding of audio."""
    params = TurnParams(max_utterance_ms=30_000)
    detector = TurnDetector(params, RATE_HZ)
    speech = _endless(100_000, 21)
    events: list[TurnEvent] = []
    held_ms = 0.0
    for offset in range(0, len(speech), 320):
        events += detector.push(speech[offset : offset + 320])
        held_ms = max(held_ms, detector.held_ms)
    ended = _ended(events)
    assert [e.capped for e in ended] == [True] * 3 and detector.speaking
    assert all(30_000 - 200 <= e.end_ms - e.start_ms <= 30_000 for e in ended)  # to its last speech, by a breath
    assert all(len(e.pcm16) <= (30_000 + 300) * BYTES_PER_MS for e in ended)
    assert held_ms <= 30_000 + 300 + FRAME_MS
    assert not _ended(detector.push(_silence(1000)))[0].capped  # the last one ends with the silence


def _mono(rate_hz: int = RATE_HZ) -> DeclaredAudio:
    return DeclaredAudio("linear16", rate_hz, 1, "session_settings")


async def test_the_ears_detect_a_frame_inline_and_a_big_batch_on_their_worker() -> None:
    """A 20 ms frame is detected on the event loop's thread (cheaper than a hand-off); a batch of OFF_LOOP_MS or
    more on the session's worker thread; the events are those of one detector fed the same audio in order."""
    ears = Ears(TurnParams(min_interruption_ms=500), "chat test")
    assert ears.hears(_mono(), origin_ms=0.0)
    assert ears.detector is not None
    threads: list[str] = []
    push = ears.detector.push

    def spying_push(pcm16: bytes) -> list[TurnEvent]:
        threads.append(threading.current_thread().name)
        return push(pcm16)

    ears.detector.push = spying_push  # type: ignore[method-assign]
    frames = [_CHUNKING_AUDIO[i : i + 320] for i in range(0, len(_CHUNKING_AUDIO), 320)]
    assert len(frames) * FRAME_MS >= OFF_LOOP_MS
    heard = await ears.hear(frames[:1]) + await ears.hear(frames[1:])
    ears.close()
    assert threads[0] == threading.current_thread().name
    assert {name.startswith("ears chat test") for name in threads[1:]} == {True}
    assert [e for h in heard for e in h.events] == TurnDetector(ears.params, RATE_HZ).push(_CHUNKING_AUDIO)
    assert [h.position_ms for h in heard] == [FRAME_MS * (i + 1) for i in range(len(frames))]


async def test_the_ears_hold_a_bounded_recent_buffer_through_an_endless_utterance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fed 58 s of unbroken speech in 20 ms frames, the ears keep at most the utterance so far (capped at
    max_utterance_ms) plus its padding and 1 s of trimming slack, and log each utterance ended at the bound."""
    params = TurnParams(max_utterance_ms=5000)
    ears = Ears(params, "chat endless")
    assert ears.hears(_mono(), origin_ms=0.0)
    speech = _endless(58_000, 22)
    most_ms, capped = 0.0, 0
    with caplog.at_level("WARNING", logger="gateway.simulator.agent"):
        for offset in range(0, len(speech), 320):
            heard = await ears.hear([speech[offset : offset + 320]])
            capped += sum(isinstance(e, SpeechEnded) and e.capped for e in heard[0].events)
            ears.trim()
            most_ms = max(most_ms, ears.recent_ms)
    ears.close()
    assert capped == 11
    assert most_ms <= 5000 + params.prefix_padding_ms + 1000 + 60 + FRAME_MS
    assert len([r for r in caplog.records if "reached 5 s" in r.getMessage()]) == 11
    kept = ears.between(0.0, 58_000.0)
    assert kept == speech[-len(kept) :]  # what it keeps is the newest audio


async def test_the_ears_refuse_a_format_once_then_ignore_it() -> None:
    """A rate the detector cannot frame raises ConfigError the first time (the agent answers with an error) and
    is quietly ignored afterwards; a good format after it is heard."""
    ears = Ears(TurnParams(), "chat odd")
    with pytest.raises(ConfigError):
        ears.hears(_mono(11025), origin_ms=0.0)
    assert not ears.hears(_mono(11025), origin_ms=0.0)
    assert ears.hears(_mono(16000), origin_ms=40.0) and (ears.rate_hz, ears.origin_ms) == (16000, 40.0)
