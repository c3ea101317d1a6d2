"""Streaming resamplers: soxr streams against soxr one-shot, the FIR up-sampler against ideal signals."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bench import speech_like_pcm16
from gateway.codecs.resample import (
    FirUpsampler,
    Passthrough,
    SoxrStream,
    float_to_pcm16,
    make_resampler,
    pcm16_to_float,
)
from gateway.errors import AudioFormatError

CHUNK_SAMPLES = (160, 320, 333, 4800)
STREAM_TOLERANCE_LSB = 1
"""Chunked vs one-shot, in int16 steps. Both engines compute in float32, so the streams match the one-shot
result before rounding up to float32 summation order (the FIR's matrix product may be blocked differently
for different chunk lengths); one such difference can move a value across an int16 rounding boundary."""
FIR_SINE_MIN_SNR_DB = 60.0
"""The FIR's stopband and passband ripple are ~64 dB down (Kaiser β = 6); a 1 kHz tone must come out at
least 60 dB above the error against the analytic tone at the output rate."""


def _pcm(samples: np.ndarray) -> bytes:
    return bytes(np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes())


def _samples(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)


def _sine(freq_hz: float, rate_hz: int, n: int, amplitude: float = 16000.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / rate_hz)


def _chunked(process: object, pcm16: bytes, chunk_samples: int) -> bytes:
    assert callable(process)
    step = 2 * chunk_samples
    return b"".join(process(pcm16[i : i + step]) for i in range(0, len(pcm16), step))


def _snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    error = actual - reference
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum(error**2), 1e-30)))


def _level_db(pcm16: bytes, freq_hz: float, rate_hz: int, amplitude: float) -> float:
    """Level of the ``freq_hz`` component relative to ``amplitude`` (single-bin DFT with a Hann window)."""
    y = _samples(pcm16)
    window = np.hanning(len(y))
    phasor = np.exp(-2j * np.pi * freq_hz * np.arange(len(y)) / rate_hz)
    return float(20 * np.log10(2 * abs(np.sum(y * window * phasor)) / np.sum(window) / amplitude))


class TestFloatConversion:
    def test_every_int16_round_trips(self) -> None:
        """All 65536 int16 values survive pcm16 → float32 → pcm16 unchanged."""
        pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
        floats = pcm16_to_float(pcm)
        assert floats.dtype == np.float32
        assert floats.min() == -1.0
        assert float_to_pcm16(floats) == pcm

    def test_out_of_range_saturates(self) -> None:
        """Floats beyond ±1 saturate to the int16 limits instead of wrapping."""
        assert float_to_pcm16(np.array([1.5, -1.5, 0.5], dtype=np.float32)) == _pcm(np.array([32767, -32768, 16384]))

    def test_odd_byte_count(self) -> None:
        """An odd byte count is an AudioFormatError."""
        with pytest.raises(AudioFormatError, match="even byte count, got 3 bytes"):
            pcm16_to_float(bytes(3))


class TestEngineChoice:
    @pytest.mark.parametrize(
        ("in_rate_hz", "out_rate_hz", "low_delay", "engine"),
        [
            (8000, 8000, True, Passthrough),
            (48000, 48000, False, Passthrough),
            (8000, 16000, True, FirUpsampler),
            (8000, 48000, True, FirUpsampler),
            (8000, 11025, True, SoxrStream),
            (8000, 16000, False, SoxrStream),
            (48000, 8000, False, SoxrStream),
            (24000, 8000, True, SoxrStream),
        ],
    )
    def test_make_resampler(self, in_rate_hz: int, out_rate_hz: int, low_delay: bool, engine: type) -> None:
        """make_resampler picks passthrough, the FIR for low-delay integer up-sampling, else soxr."""
        assert type(make_resampler(in_rate_hz, out_rate_hz, low_delay=low_delay)) is engine

    @pytest.mark.parametrize(("in_rate_hz", "out_rate_hz"), [(0, 8000), (8000, -1)])
    def test_rates_must_be_positive(self, in_rate_hz: int, out_rate_hz: int) -> None:
        """Non-positive rates are rejected at construction."""
        with pytest.raises(ValueError, match="sample rates must be positive"):
            make_resampler(in_rate_hz, out_rate_hz)

    @pytest.mark.parametrize(("in_rate_hz", "out_rate_hz"), [(8000, 12000), (16000, 8000), (8000, 8000)])
    def test_fir_needs_integer_up_factor(self, in_rate_hz: int, out_rate_hz: int) -> None:
        """FirUpsampler refuses anything but an integer factor above 1."""
        with pytest.raises(ValueError, match="integer factor > 1"):
            FirUpsampler(in_rate_hz, out_rate_hz)

    @pytest.mark.parametrize("taps_per_phase", [0, 7])
    def test_fir_needs_even_taps(self, taps_per_phase: int) -> None:
        """FirUpsampler refuses an odd or empty filter length."""
        with pytest.raises(ValueError, match="taps_per_phase must be even"):
            FirUpsampler(8000, 16000, taps_per_phase=taps_per_phase)

    @pytest.mark.parametrize(("in_rate_hz", "out_rate_hz"), [(8000, 8000), (8000, 16000), (48000, 8000)])
    def test_odd_byte_count(self, in_rate_hz: int, out_rate_hz: int) -> None:
        """Every engine rejects an odd byte count with AudioFormatError."""
        resampler = make_resampler(in_rate_hz, out_rate_hz, low_delay=True)
        with pytest.raises(AudioFormatError, match="even byte count, got 5 bytes"):
            resampler.process(bytes(5))


class TestPassthrough:
    def test_returns_input_and_holds_nothing(self) -> None:
        """Same rate in and out: bytes pass unchanged and nothing is ever held."""
        passthrough = Passthrough(24000, 24000)
        pcm = _pcm(_sine(440, 24000, 480))
        assert passthrough.process(pcm) == pcm
        assert passthrough.held_back_samples == 0
        assert passthrough.flush() == b""


class TestSoxrStream:
    @pytest.mark.parametrize("chunk_samples", CHUNK_SAMPLES)
    @pytest.mark.parametrize(("in_rate_hz", "out_rate_hz"), [(48000, 8000), (24000, 8000), (8000, 11025)])
    def test_chunked_matches_one_shot(self, in_rate_hz: int, out_rate_hz: int, chunk_samples: int) -> None:
        """Chunked streaming then flush equals soxr's one-shot HQ float32 resample of the whole signal."""
        pcm = speech_like_pcm16(0.5, in_rate_hz, seed=3)
        stream = SoxrStream(in_rate_hz, out_rate_hz)
        streamed = _samples(_chunked(stream.process, pcm, chunk_samples) + stream.flush())
        one_shot = soxr.resample(pcm16_to_float(pcm), in_rate_hz, out_rate_hz, quality="HQ")
        reference = _samples(float_to_pcm16(np.asarray(one_shot, dtype=np.float32)))
        assert len(streamed) == len(reference)
        assert np.max(np.abs(streamed - reference)) <= STREAM_TOLERANCE_LSB

    def test_holds_back_until_flush(self) -> None:
        """Fed 20 ms frames, soxr HQ holds audio back; flush() releases it and the count returns to 0."""
        stream = SoxrStream(48000, 8000)
        pcm = speech_like_pcm16(0.2, 48000, seed=1)
        out = _chunked(stream.process, pcm, 960)
        assert stream.held_back_samples > 0
        assert len(out) // 2 + stream.held_back_samples == pytest.approx(1600)
        out += stream.flush()
        assert len(out) // 2 == 1600
        assert stream.held_back_samples == 0

    def test_usable_after_flush(self) -> None:
        """After flush() the stream starts afresh: a second utterance comes out whole and identical."""
        stream = SoxrStream(24000, 8000)
        pcm = speech_like_pcm16(0.3, 24000, seed=2)
        first = stream.process(pcm) + stream.flush()
        second = stream.process(pcm) + stream.flush()
        assert first == second
        assert len(first) == 2 * 2400

    def test_reset_drops_held_audio(self) -> None:
        """After reset(), none of the earlier audio reappears: silence in gives exact silence out."""
        stream = SoxrStream(48000, 8000)
        stream.process(_pcm(_sine(1000, 48000, 4800)))
        assert stream.held_back_samples > 0
        stream.reset()
        assert stream.held_back_samples == 0
        out = stream.process(bytes(2 * 4800)) + stream.flush()
        assert len(out) == 2 * 800
        assert not np.any(_samples(out))


class TestFirUpsampler:
    @settings(max_examples=150, deadline=None)
    @given(
        factor=st.sampled_from([2, 3, 6]),
        chunk_lengths=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    )
    def test_exactly_factor_times_input(self, factor: int, chunk_lengths: list[int]) -> None:
        """After flush(), output is exactly factor × input samples for any chunking, even below the delay."""
        upsampler = FirUpsampler(8000, 8000 * factor)
        rng = np.random.default_rng(len(chunk_lengths))
        out = b""
        for n in chunk_lengths:
            out += upsampler.process(_pcm(rng.uniform(-8000, 8000, n)))
        out += upsampler.flush()
        assert len(out) == 2 * factor * sum(chunk_lengths)
        assert upsampler.held_back_samples == 0

    @pytest.mark.parametrize("factor", [2, 3, 6])
    def test_time_aligned_impulse(self, factor: int) -> None:
        """An impulse at input sample k peaks at output k × factor, symmetric around it (linear phase)."""
        upsampler = FirUpsampler(8000, 8000 * factor)
        impulse = np.zeros(100)
        impulse[40] = 20000
        y = _samples(upsampler.process(_pcm(impulse)) + upsampler.flush())
        peak = int(np.argmax(y))
        assert peak == 40 * factor
        half = 4 * factor  # well inside the filter span
        assert np.max(np.abs(y[peak - half : peak] - y[peak + half : peak : -1])) <= 1

    @pytest.mark.parametrize("chunk_samples", [160, 333])
    @pytest.mark.parametrize("factor", [2, 3, 6])
    def test_sine_matches_ideal(self, factor: int, chunk_samples: int) -> None:
        """A streamed 1 kHz sine matches the analytic sine at the output rate (time-aligned, > 60 dB SNR)."""
        out_rate_hz = 8000 * factor
        upsampler = FirUpsampler(8000, out_rate_hz)
        pcm = _pcm(_sine(1000, 8000, 8000))
        y = _samples(_chunked(upsampler.process, pcm, chunk_samples) + upsampler.flush())
        ideal = _sine(1000, out_rate_hz, len(y))
        edge = out_rate_hz // 100  # the filter sees silence before the start and after the end
        assert _snr_db(ideal[edge:-edge], y[edge:-edge]) > FIR_SINE_MIN_SNR_DB

    @pytest.mark.parametrize("chunk_samples", CHUNK_SAMPLES)
    @pytest.mark.parametrize("factor", [2, 3, 6])
    def test_chunked_matches_one_shot(self, factor: int, chunk_samples: int) -> None:
        """Streaming in chunks gives the same samples as one call on the whole signal."""
        pcm = speech_like_pcm16(0.7, 8000, seed=5)
        one_shot_fir = FirUpsampler(8000, 8000 * factor)
        one_shot = _samples(one_shot_fir.process(pcm) + one_shot_fir.flush())
        upsampler = FirUpsampler(8000, 8000 * factor)
        streamed = _samples(_chunked(upsampler.process, pcm, chunk_samples) + upsampler.flush())
        assert len(streamed) == len(one_shot)
        assert np.max(np.abs(streamed - one_shot)) <= STREAM_TOLERANCE_LSB

    @pytest.mark.parametrize("factor", [2, 3, 6])
    def test_telephone_band_passes_and_images_are_rejected(self, factor: int) -> None:
        """A 3.4 kHz tone passes within 1 dB; its image at 4.6 kHz is at least 60 dB down."""
        out_rate_hz = 8000 * factor
        upsampler = FirUpsampler(8000, out_rate_hz)
        y = upsampler.process(_pcm(_sine(3400, 8000, 8000))) + upsampler.flush()
        assert -1.0 < _level_db(y, 3400, out_rate_hz, 16000) < 0.1
        assert _level_db(y, 4600, out_rate_hz, 16000) < -60

    def test_reset_drops_held_audio(self) -> None:
        """After reset(), the filter history is gone: silence in gives exact silence out."""
        upsampler = FirUpsampler(8000, 16000)
        upsampler.process(_pcm(_sine(1000, 8000, 160)))
        assert upsampler.held_back_samples > 0
        upsampler.reset()
        assert upsampler.held_back_samples == 0
        out = upsampler.process(bytes(320)) + upsampler.flush()
        assert len(out) == 2 * 320
        assert not np.any(_samples(out))

    def test_holds_only_the_filter_delay(self) -> None:
        """Between frames the FIR holds back exactly its delay: 12 input samples (1.5 ms)."""
        upsampler = FirUpsampler(8000, 24000)
        for _ in range(5):
            upsampler.process(_pcm(_sine(500, 8000, 160)))
            assert upsampler.held_back_samples == 12 * 3

    def test_empty_chunk(self) -> None:
        """An empty chunk returns nothing and changes nothing."""
        upsampler = FirUpsampler(8000, 16000)
        assert upsampler.process(b"") == b""
        assert upsampler.flush() == b""
