"""Offline speech: eSpeak NG synthesis, pocketsphinx recognition, labelled fallbacks and bundled recordings."""

from __future__ import annotations

import importlib
import logging
import re
import threading
from pathlib import Path
from types import ModuleType

import jiwer
import numpy as np
import pytest

from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.codecs.wav import read_wav
from gateway.errors import AudioFormatError, ConfigError
from gateway.simulator import voice
from gateway.simulator.make_demo_audio import DEMO_CALLER_DIR, DEMO_CALLER_LINES, main
from gateway.simulator.vad import SpeechEnded, TurnDetector, TurnParams
from gateway.simulator.voice import (
    AGENT_VOICE,
    CALLER_VOICE,
    DEMO_PHRASES,
    DurationRecognizer,
    EspeakSynthesizer,
    PocketsphinxRecognizer,
    ToneSynthesizer,
    make_recognizer,
    make_synthesizer,
)

TELEPHONE_HZ = 8000
HELLO = "Hello, can you hear me?"
TEST_SENTENCES = ("hello can you hear me", "what is the weather like today", "thank you goodbye")


@pytest.fixture(name="espeak")
def fixture_espeak() -> EspeakSynthesizer:
    """The agent's eSpeak NG voice; skips when the 'voice' extra (espeakng-loader) is not installed."""
    pytest.importorskip("espeakng_loader", reason="eSpeak NG needs the 'voice' extra (espeakng-loader)")
    return EspeakSynthesizer()


@pytest.fixture(name="sphinx")
def fixture_sphinx(espeak: EspeakSynthesizer) -> ModuleType:
    """pocketsphinx, or a skip when the 'voice' extra is not installed."""
    module: ModuleType = pytest.importorskip(
        "pocketsphinx", reason="speech recognition needs the 'voice' extra (pocketsphinx)"
    )
    return module


def _duration_s(pcm16: bytes, rate_hz: int) -> float:
    return len(pcm16) / 2 / rate_hz


def _rms_dbfs(pcm16: bytes) -> float:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    return float(20 * np.log10(np.sqrt(np.mean(samples * samples)) / 32768))


def _telephone(pcm16: bytes) -> bytes:
    return ulaw_to_pcm16(pcm16_to_ulaw(pcm16))


def _wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(reference, hypothesis or "<nothing>"))


@pytest.mark.parametrize("rate_hz", [8000, 24000, 48000])
def test_espeak_speaks_at_the_requested_rate(espeak: EspeakSynthesizer, rate_hz: int) -> None:
    """A short sentence comes out as 1-3 s of audible speech whose duration does not depend on the rate."""
    pcm16 = espeak.synthesize(HELLO, rate_hz)
    reference = espeak.synthesize(HELLO, 22050)
    assert len(pcm16) % 2 == 0
    assert 1.0 < _duration_s(pcm16, rate_hz) < 3.0
    assert _duration_s(pcm16, rate_hz) == pytest.approx(_duration_s(reference, 22050), abs=0.005)
    assert _rms_dbfs(pcm16) > -35.0
    assert espeak.real


def test_espeak_is_deterministic(espeak: EspeakSynthesizer) -> None:
    """The same text gives the same bytes even with other synthesis in between; other voices differ."""
    first = espeak.synthesize(HELLO, TELEPHONE_HZ)
    espeak.synthesize("Something else entirely, to move the engine along.", TELEPHONE_HZ)
    assert espeak.synthesize(HELLO, TELEPHONE_HZ) == first
    assert EspeakSynthesizer(voice=CALLER_VOICE).synthesize(HELLO, TELEPHONE_HZ) != first


def test_espeak_handles_long_text(espeak: EspeakSynthesizer) -> None:
    """A paragraph of 90 words is spoken in full at a plausible speaking rate."""
    text = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 6)
    duration_s = _duration_s(espeak.synthesize(text, TELEPHONE_HZ), TELEPHONE_HZ)
    words = len(text.split())
    assert 60 * words / 260 < duration_s < 60 * words / 110


def test_espeak_empty_text_is_silent(espeak: EspeakSynthesizer) -> None:
    """Empty or blank text gives no audio."""
    assert espeak.synthesize("  \n ", TELEPHONE_HZ) == b""


def test_espeak_threads_get_their_own_results(espeak: EspeakSynthesizer) -> None:
    """Concurrent synthesis from several threads gives each thread exactly its sequential result."""
    texts = [f"Caller number {n} is on the line." for n in range(6)]
    expected = [espeak.synthesize(t, TELEPHONE_HZ) for t in texts]
    results: dict[int, bytes] = {}

    def work(index: int) -> None:
        results[index] = espeak.synthesize(texts[index], TELEPHONE_HZ)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [results[i] for i in range(len(texts))] == expected


def test_espeak_rejects_bad_arguments(espeak: EspeakSynthesizer) -> None:
    """A bad rate is an AudioFormatError; an unknown voice or speaking rate is a ConfigError."""
    with pytest.raises(AudioFormatError, match="sample rate"):
        espeak.synthesize(HELLO, 0)
    with pytest.raises(ConfigError, match="no voice 'xx-nonexistent'"):
        EspeakSynthesizer(voice="xx-nonexistent").synthesize(HELLO, TELEPHONE_HZ)
    with pytest.raises(ConfigError, match="wpm"):
        EspeakSynthesizer(rate_wpm=5)


def test_caller_voice_differs_from_agent_voice(espeak: EspeakSynthesizer) -> None:
    """The demo caller's voice is a different eSpeak NG variant with a higher pitch than the agent's."""
    assert CALLER_VOICE != AGENT_VOICE

    def pitch_hz(pcm16: bytes) -> float:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
        vowel = samples[samples.size // 4 : 3 * samples.size // 4]
        vowel -= vowel.mean()
        autocorrelation = np.correlate(vowel, vowel, "full")[vowel.size - 1 :]
        shortest, longest = TELEPHONE_HZ // 400, TELEPHONE_HZ // 70
        return TELEPHONE_HZ / (shortest + int(np.argmax(autocorrelation[shortest:longest])))

    agent = espeak.synthesize("aaah", TELEPHONE_HZ)
    caller = EspeakSynthesizer(voice=CALLER_VOICE).synthesize("aaah", TELEPHONE_HZ)
    assert pitch_hz(caller) > 1.3 * pitch_hz(agent)


@pytest.mark.parametrize("sentence", TEST_SENTENCES)
def test_recognizer_transcribes_telephone_speech(espeak: EspeakSynthesizer, sphinx: ModuleType, sentence: str) -> None:
    """Speech synthesized at 8 kHz and sent through μ-law is transcribed with a word error rate ≤ 0.5."""
    recognizer = PocketsphinxRecognizer(DEMO_PHRASES)
    heard = recognizer.transcribe(_telephone(espeak.synthesize(sentence, TELEPHONE_HZ)), TELEPHONE_HZ)
    assert _wer(sentence, heard) <= 0.5, heard


def test_recognizer_phrase_model_generalises_within_its_words(espeak: EspeakSynthesizer, sphinx: ModuleType) -> None:
    """New sentences made of the phrases' words are still recognized (mean word error rate ≤ 0.5)."""
    recognizer = PocketsphinxRecognizer(DEMO_PHRASES)
    sentences = ("how are you today", "can you tell me the weather", "is it going to rain today")
    assert not set(sentences) & set(DEMO_PHRASES)
    wers = [
        _wer(s, recognizer.transcribe(_telephone(espeak.synthesize(s, TELEPHONE_HZ)), TELEPHONE_HZ)) for s in sentences
    ]
    assert float(np.mean(wers)) <= 0.5, wers


def test_recognizer_general_model_hears_a_greeting(espeak: EspeakSynthesizer, sphinx: ModuleType) -> None:
    """The general language model (no phrases) gets a clear greeting mostly right over μ-law."""
    recognizer = PocketsphinxRecognizer()
    heard = recognizer.transcribe(_telephone(espeak.synthesize(HELLO, TELEPHONE_HZ)), TELEPHONE_HZ)
    assert _wer("hello can you hear me", heard) <= 0.5, heard
    assert recognizer.real
    assert "general" in recognizer.name


@pytest.mark.parametrize("rate_hz", [16000, 48000])
def test_recognizer_accepts_other_rates(espeak: EspeakSynthesizer, sphinx: ModuleType, rate_hz: int) -> None:
    """Audio at wideband rates is resampled for the model and recognized too."""
    heard = PocketsphinxRecognizer(DEMO_PHRASES).transcribe(espeak.synthesize(HELLO, rate_hz), rate_hz)
    assert _wer("hello can you hear me", heard) <= 0.5, heard


def test_recognizer_output_is_lowercase_words_and_repeatable(espeak: EspeakSynthesizer, sphinx: ModuleType) -> None:
    """Transcripts are lowercase words only, and the same audio gives the same words on a later call."""
    recognizer = PocketsphinxRecognizer()
    audio = _telephone(espeak.synthesize("What is the weather like today?", TELEPHONE_HZ))
    first = recognizer.transcribe(audio, TELEPHONE_HZ)
    recognizer.transcribe(_telephone(espeak.synthesize(HELLO, TELEPHONE_HZ)), TELEPHONE_HZ)
    assert re.fullmatch(r"[a-z' ]+", first)
    assert recognizer.transcribe(audio, TELEPHONE_HZ) == first


def test_recognizer_silence_is_empty(sphinx: ModuleType) -> None:
    """Silence and empty input transcribe to an empty string."""
    recognizer = PocketsphinxRecognizer(DEMO_PHRASES)
    assert recognizer.transcribe(b"\x00\x00" * TELEPHONE_HZ, TELEPHONE_HZ) == ""
    assert recognizer.transcribe(b"", TELEPHONE_HZ) == ""


def test_recognizer_rejects_bad_input(sphinx: ModuleType) -> None:
    """Odd byte counts and impossible rates are AudioFormatErrors; words unknown to the dictionary a ConfigError."""
    recognizer = PocketsphinxRecognizer(DEMO_PHRASES)
    with pytest.raises(AudioFormatError, match="even byte count"):
        recognizer.transcribe(b"\x00\x00\x00", TELEPHONE_HZ)
    with pytest.raises(AudioFormatError, match="sample rate"):
        recognizer.transcribe(b"\x00\x00", -8000)
    with pytest.raises(ConfigError, match="zqxjvv"):
        make_recognizer("auto", phrases=["hello zqxjvv"])
    with pytest.raises(ConfigError, match="at least one word"):
        PocketsphinxRecognizer(["", "?!"])


def test_tone_fallback_is_labelled_and_follows_text_length() -> None:
    """The tone stand-in says it is not speech, lasts ~65 ms per character (capped at 6 s), and repeats."""
    tones = ToneSynthesizer()
    assert not tones.real
    assert "install the 'voice' extra" in tones.name
    short = tones.synthesize(HELLO, TELEPHONE_HZ)
    assert _duration_s(short, TELEPHONE_HZ) == pytest.approx(0.065 * len(HELLO), abs=0.01)
    assert _duration_s(tones.synthesize("word " * 500, 48000), 48000) == pytest.approx(6.0, abs=0.01)
    assert tones.synthesize(HELLO, TELEPHONE_HZ) == short
    assert tones.synthesize("", TELEPHONE_HZ) == b""
    assert _rms_dbfs(short) > -20.0


def test_tone_fallback_is_heard_as_one_turn() -> None:
    """The turn detector takes a tone sentence for one utterance, so fallback demos still take turns."""
    audio = ToneSynthesizer().synthesize("Hello there, how are you doing today?", TELEPHONE_HZ)
    padded = b"\x00\x00" * 4000 + audio + b"\x00\x00" * 12000
    ended = [e for e in TurnDetector(TurnParams(), TELEPHONE_HZ).push(padded) if isinstance(e, SpeechEnded)]
    assert len(ended) == 1


def test_duration_fallback_reports_the_length() -> None:
    """The duration stand-in is labelled and reports the utterance length to a tenth of a second."""
    recognizer = DurationRecognizer()
    assert not recognizer.real
    assert "install the 'voice' extra" in recognizer.name
    assert recognizer.transcribe(b"\x00\x00" * 11200, TELEPHONE_HZ) == "[speech 1.4 s]"
    with pytest.raises(AudioFormatError):
        recognizer.transcribe(b"\x00", TELEPHONE_HZ)


def test_factories_honour_forced_choices(espeak: EspeakSynthesizer, sphinx: ModuleType) -> None:
    """Forced choices give the named backend; auto picks the real ones when installed; junk is a ConfigError."""
    assert isinstance(make_synthesizer("tones"), ToneSynthesizer)
    assert isinstance(make_synthesizer("espeak"), EspeakSynthesizer)
    assert make_synthesizer("auto").real
    assert isinstance(make_recognizer("duration"), DurationRecognizer)
    assert isinstance(make_recognizer("pocketsphinx"), PocketsphinxRecognizer)
    assert make_recognizer("auto", phrases=DEMO_PHRASES).real
    with pytest.raises(ConfigError, match="synthesizer must be one of"):
        make_synthesizer("festival")
    with pytest.raises(ConfigError, match="recognizer must be one of"):
        make_recognizer("whisper")


def _hide_voice_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def fake_import(name: str, package: str | None = None) -> ModuleType:
        if name.split(".")[0] in {"espeakng_loader", "pocketsphinx"}:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    monkeypatch.setattr(voice, "_espeak_files", None)
    monkeypatch.setattr(voice, "_logged_choices", set())


def test_factories_fall_back_when_the_extra_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the packages, auto gives the labelled fallbacks (logged once) and forcing the real ones fails."""
    _hide_voice_packages(monkeypatch)
    with caplog.at_level(logging.INFO, logger=voice.__name__):
        assert isinstance(make_synthesizer(), ToneSynthesizer)
        assert isinstance(make_synthesizer(), ToneSynthesizer)
        assert isinstance(make_recognizer(), DurationRecognizer)
    assert len([r for r in caplog.records if "tones" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "duration" in r.getMessage()]) == 1
    with pytest.raises(ConfigError, match="pip install"):
        make_synthesizer("espeak")
    with pytest.raises(ConfigError, match="pip install"):
        make_recognizer("pocketsphinx")


def _wav_pcm(path: Path) -> bytes:
    audio = read_wav(path.read_bytes())
    assert (audio.rate_hz, audio.channels) == (TELEPHONE_HZ, 1)
    return audio.pcm16


def test_bundled_caller_recordings_match_their_transcript() -> None:
    """Every line in lines.txt names an 8 kHz mono WAV of 1-5 s; the folder stays under 600 KB."""
    lines = (DEMO_CALLER_DIR / "lines.txt").read_text(encoding="utf-8").splitlines()
    assert [tuple(line.split("\t")) for line in lines] == list(DEMO_CALLER_LINES)
    for name, _text in DEMO_CALLER_LINES:
        assert 1.0 < _duration_s(_wav_pcm(DEMO_CALLER_DIR / name), TELEPHONE_HZ) < 5.0
    assert sum(p.stat().st_size for p in DEMO_CALLER_DIR.iterdir()) < 600 * 1024


def test_bundled_recordings_are_reproducible(espeak: EspeakSynthesizer, tmp_path: Path) -> None:
    """The generator recreates the committed recordings (within 2 LSB) and --check spots a changed file."""
    assert main(["--out", str(tmp_path)]) == 0
    for name, _text in DEMO_CALLER_LINES:
        fresh = np.frombuffer(_wav_pcm(tmp_path / name), dtype="<i2").astype(np.int32)
        committed = np.frombuffer(_wav_pcm(DEMO_CALLER_DIR / name), dtype="<i2").astype(np.int32)
        assert fresh.shape == committed.shape
        assert int(np.max(np.abs(fresh - committed))) <= 2
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / DEMO_CALLER_LINES[0][0]).write_bytes(b"RIFF")
    assert main(["--out", str(tmp_path), "--check"]) == 1


def test_bundled_call_is_segmented_and_understood(sphinx: ModuleType) -> None:
    """The caller's lines over μ-law, one second apart, give one turn each, recognized with mean WER ≤ 0.25."""
    gap = b"\x00\x00" * TELEPHONE_HZ
    audio = gap + gap.join(_wav_pcm(DEMO_CALLER_DIR / name) for name, _ in DEMO_CALLER_LINES) + gap
    detector = TurnDetector(TurnParams(), TELEPHONE_HZ)
    ended = [e for e in detector.push(_telephone(audio)) if isinstance(e, SpeechEnded)]
    assert len(ended) == len(DEMO_CALLER_LINES)
    recognizer = PocketsphinxRecognizer(DEMO_PHRASES)
    wers = [
        _wer(" ".join(re.findall(r"[a-z']+", text.lower())), recognizer.transcribe(e.pcm16, TELEPHONE_HZ))
        for e, (_name, text) in zip(ended, DEMO_CALLER_LINES, strict=True)
    ]
    assert float(np.mean(wers)) <= 0.25, wers
