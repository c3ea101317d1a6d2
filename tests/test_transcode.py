"""The per-call transcoders: oracles for chunked streaming, sample counts, held-back audio, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bench import speech_like_pcm16
from gateway.codecs import InboundTranscoder, OutboundTranscoder
from gateway.codecs.g711 import audioop
from gateway.errors import AudioFormatError

CHUNK_SAMPLES = (160, 320, 333, 4800)
OUTBOUND_RATES_HZ = (16000, 22050, 24000, 44100, 48000)

ULAW_STEP_TOLERANCE = 1
"""Chunked OutboundTranscoder vs one-shot soxr HQ, in μ-law quantisation levels. Both resample in float32
and python-soxr's own tests hold streams equal to one-shot for float data, so the linear values agree to
float32 rounding; a value sitting on an int16 or μ-law decision boundary may still land one level over."""
ULAW_MISMATCH_MAX_FRACTION = 0.001
"""…and such boundary cases must stay rare: at most 0.1 % of output samples may differ at all."""
INBOUND_MIN_SNR_DB = 40.0
"""Inbound FIR path vs ideal (brick-wall) interpolation of the same decoded μ-law, over the full band.
The ideal keeps μ-law's quantisation noise up to 4 kHz, which the FIR (−6 dB at 3.8 kHz) removes, and the
FIR droops 0.5 dB at 3.4 kHz: measured ≈ 44 dB, above G.711's own ≈ 37 dB SNR on this signal."""
INBOUND_IN_BAND_MIN_SNR_DB = 55.0
"""The same comparison restricted to the telephone band (0–3.4 kHz): measured ≈ 60 dB."""


def _samples(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)


def _chunks(data: bytes, chunk_bytes: int) -> list[bytes]:
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]


def _ulaw_levels(ulaw: bytes) -> np.ndarray:
    """Index of each code's decoded value among the 255 distinct μ-law levels (±0 are one level)."""
    table = _samples(audioop.ulaw2lin(bytes(range(256)), 2))
    levels = np.unique(table)
    return np.searchsorted(levels, table)[np.frombuffer(ulaw, dtype=np.uint8)]


def _snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((actual - reference) ** 2)))


def _ideal_upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited (brick-wall at the input Nyquist) interpolation of a periodic signal via the FFT."""
    spectrum = np.fft.rfft(x)
    padded = np.zeros(len(x) * factor // 2 + 1, dtype=complex)
    padded[: len(spectrum)] = spectrum
    padded[len(spectrum) - 1] *= 0.5  # split the Nyquist bin between its two images
    return np.fft.irfft(padded, len(x) * factor) * factor


def _band_limited(x: np.ndarray, rate_hz: int, top_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / rate_hz) > top_hz] = 0
    return np.fft.irfft(spectrum, len(x))


class TestInboundAt8k:
    @settings(max_examples=200)
    @given(st.lists(st.binary(max_size=400), max_size=10))
    def test_bit_exact_audioop_and_holds_nothing(self, frames: list[bytes]) -> None:
        """At 8 kHz every frame is exactly audioop.ulaw2lin of it, and nothing is held back after any frame."""
        transcoder = InboundTranscoder(8000)
        for frame in frames:
            assert transcoder.process(frame) == audioop.ulaw2lin(frame, 2)
        assert transcoder.flush() == b""

    def test_default_rate_is_8k(self) -> None:
        """InboundTranscoder() decodes to 8 kHz linear16."""
        assert InboundTranscoder().out_rate_hz == 8000


class TestInboundUpsampled:
    @pytest.mark.parametrize("chunk_samples", CHUNK_SAMPLES)
    @pytest.mark.parametrize("out_rate_hz", [16000, 24000, 48000])
    def test_chunked_matches_ideal_reference(self, out_rate_hz: int, chunk_samples: int) -> None:
        """Streamed μ-law → 16/24/48 kHz matches ideal interpolation of the decoded audio within the SNR bounds."""
        factor = out_rate_hz // 8000
        ulaw = audioop.lin2ulaw(speech_like_pcm16(1.0, 8000, seed=7), 2)
        transcoder = InboundTranscoder(out_rate_hz)
        out = b"".join(transcoder.process(chunk) for chunk in _chunks(ulaw, chunk_samples)) + transcoder.flush()
        y = _samples(out)
        ideal = _ideal_upsample(_samples(audioop.ulaw2lin(ulaw, 2)), factor)
        assert len(y) == len(ideal)
        edge = out_rate_hz // 50  # 20 ms: the FIR sees silence outside the signal, the FFT reference wraps
        inner = slice(edge, -edge)
        assert _snr_db(ideal[inner], y[inner]) >= INBOUND_MIN_SNR_DB
        in_band_error = _band_limited(y - ideal, out_rate_hz, 3400.0)
        assert _snr_db(ideal[inner], ideal[inner] + in_band_error[inner]) >= INBOUND_IN_BAND_MIN_SNR_DB

    @pytest.mark.parametrize("out_rate_hz", [16000, 24000, 48000])
    def test_holds_only_the_fir_delay_and_flush_releases_it(self, out_rate_hz: int) -> None:
        """Between 20 ms frames the up-sampled path holds 1.5 ms (the FIR delay); flush() gives back the rest."""
        transcoder = InboundTranscoder(out_rate_hz)
        ulaw = audioop.lin2ulaw(speech_like_pcm16(0.1, 8000, seed=2), 2)
        in_bytes = 0
        out = b""
        for frame in _chunks(ulaw, 160):
            in_bytes += len(frame)
            out += transcoder.process(frame)
            assert in_bytes / 8 - len(out) / 2 / out_rate_hz * 1000 == pytest.approx(1.5)
        out += transcoder.flush()
        assert len(out) == 2 * len(ulaw) * out_rate_hz // 8000

    def test_non_integer_rate_counts(self) -> None:
        """At a non-integer ratio (8 → 11.025 kHz, soxr) every sample comes out after flush()."""
        transcoder = InboundTranscoder(11025)
        ulaw = audioop.lin2ulaw(speech_like_pcm16(0.5, 8000, seed=4), 2)
        out = b"".join(transcoder.process(chunk) for chunk in _chunks(ulaw, 160)) + transcoder.flush()
        assert abs(len(out) // 2 - round(len(ulaw) * 11025 / 8000)) <= 1

    @settings(max_examples=100, deadline=None)
    @given(data=st.binary(max_size=500), out_rate_hz=st.sampled_from([8000, 16000, 48000]))
    def test_any_bytes_are_valid_ulaw(self, data: bytes, out_rate_hz: int) -> None:
        """Any byte string, odd or even, is valid μ-law: process() never raises."""
        transcoder = InboundTranscoder(out_rate_hz)
        out = transcoder.process(data) + transcoder.flush()
        assert len(out) == 2 * len(data) * out_rate_hz // 8000


class TestOutboundOracle:
    @pytest.mark.parametrize("chunk_samples", CHUNK_SAMPLES)
    @pytest.mark.parametrize("in_rate_hz", [24000, 48000])
    def test_chunked_matches_one_shot_soxr(self, in_rate_hz: int, chunk_samples: int) -> None:
        """Chunked process() + flush() equals one-shot soxr HQ (float32) of the whole signal, μ-law encoded."""
        pcm = speech_like_pcm16(1.0, in_rate_hz, seed=11)
        transcoder = OutboundTranscoder(in_rate_hz)
        out = b"".join(transcoder.process(chunk) for chunk in _chunks(pcm, 2 * chunk_samples)) + transcoder.flush()
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768)
        one_shot = np.asarray(soxr.resample(x, in_rate_hz, 8000, quality="HQ"), dtype=np.float64)
        reference_pcm = np.clip(np.rint(one_shot * 32768), -32768, 32767).astype("<i2").tobytes()
        reference = audioop.lin2ulaw(reference_pcm, 2)
        assert len(out) == len(reference) == 8000
        level_error = np.abs(_ulaw_levels(out) - _ulaw_levels(reference))
        assert level_error.max() <= ULAW_STEP_TOLERANCE
        assert np.count_nonzero(level_error) <= ULAW_MISMATCH_MAX_FRACTION * len(out)

    def test_8k_input_is_plain_encoding(self) -> None:
        """At 8 kHz input nothing is resampled: output is audioop.lin2ulaw, nothing held."""
        pcm = speech_like_pcm16(0.2, 8000, seed=3)
        transcoder = OutboundTranscoder(8000)
        assert transcoder.process(pcm) == audioop.lin2ulaw(pcm, 2)
        assert transcoder.flush() == b""


class TestOutboundCounts:
    @settings(max_examples=60, deadline=None)
    @given(
        in_rate_hz=st.sampled_from(OUTBOUND_RATES_HZ),
        chunk_samples=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=12),
        seed=st.integers(min_value=0, max_value=2**16),
    )
    def test_every_sample_comes_out_after_flush(self, in_rate_hz: int, chunk_samples: list[int], seed: int) -> None:
        """For any chunking, μ-law bytes out == round(samples in × 8000 / rate) ± 1 once flushed."""
        rng = np.random.default_rng(seed)
        transcoder = OutboundTranscoder(in_rate_hz)
        n_out = 0
        for n in chunk_samples:
            n_out += len(transcoder.process(rng.integers(-20000, 20000, n).astype("<i2").tobytes()))
        n_out += len(transcoder.flush())
        assert abs(n_out - round(sum(chunk_samples) * 8000 / in_rate_hz)) <= 1

    @pytest.mark.parametrize("in_rate_hz", OUTBOUND_RATES_HZ)
    def test_audio_held_between_frames_comes_out_on_flush(self, in_rate_hz: int) -> None:
        """Between 20 ms frames soxr HQ holds audio back (input minus output duration); flush() releases it all."""
        pcm = speech_like_pcm16(0.4, in_rate_hz, seed=6)
        frame_bytes = 2 * (in_rate_hz // 50)
        transcoder = OutboundTranscoder(in_rate_hz)
        in_ms = out_ms = 0.0
        held_ms: list[float] = []
        for frame in _chunks(pcm, frame_bytes):
            out_ms += len(transcoder.process(frame)) / 8
            in_ms += len(frame) / 2 / in_rate_hz * 1000
            held_ms.append(in_ms - out_ms)
        assert max(held_ms) > 20  # soxr HQ does hold audio back between frames (docs/audio-path.md "Resampler delay")
        out_ms += len(transcoder.flush()) / 8
        assert abs(in_ms - out_ms) <= 0.125  # at most one 8 kHz sample of rounding

    def test_second_utterance_after_flush(self) -> None:
        """After flush() the transcoder starts afresh: the same utterance again gives the same bytes."""
        pcm = speech_like_pcm16(0.3, 48000, seed=8)
        transcoder = OutboundTranscoder(48000)
        first = b"".join(transcoder.process(c) for c in _chunks(pcm, 1920)) + transcoder.flush()
        second = b"".join(transcoder.process(c) for c in _chunks(pcm, 1920)) + transcoder.flush()
        assert first == second
        assert len(first) == 2400


class TestOutboundReset:
    @pytest.mark.parametrize("in_rate_hz", [24000, 48000])
    def test_reset_drops_held_audio(self, in_rate_hz: int) -> None:
        """After reset() (barge-in) no earlier audio reappears: silence in gives μ-law silence out, in full."""
        transcoder = OutboundTranscoder(in_rate_hz)
        speech = speech_like_pcm16(0.5, in_rate_hz, seed=9)
        out_bytes = sum(len(transcoder.process(frame)) for frame in _chunks(speech, 2 * (in_rate_hz // 50)))
        assert out_bytes < 4000  # less than the 0.5 s given (4000 μ-law bytes): the rest is held back
        transcoder.reset()
        silence_samples = in_rate_hz // 5
        out = transcoder.process(bytes(2 * silence_samples)) + transcoder.flush()
        assert len(out) == 1600
        assert not np.any(_samples(audioop.ulaw2lin(out, 2)))


class TestBadInput:
    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=600), in_rate_hz=st.sampled_from([8000, 24000, 48000]))
    def test_outbound_rejects_only_odd_lengths(self, data: bytes, in_rate_hz: int) -> None:
        """Arbitrary bytes into OutboundTranscoder.process() raise AudioFormatError exactly when the length is odd."""
        transcoder = OutboundTranscoder(in_rate_hz)
        if len(data) % 2:
            with pytest.raises(AudioFormatError, match=f"even byte count, got {len(data)} bytes"):
                transcoder.process(data)
        else:
            assert isinstance(transcoder.process(data) + transcoder.flush(), bytes)

    def test_odd_chunk_leaves_stream_usable(self) -> None:
        """A rejected odd chunk does not disturb the stream: the next even chunks still all come out."""
        transcoder = OutboundTranscoder(48000)
        with pytest.raises(AudioFormatError):
            transcoder.process(bytes(3))
        out = transcoder.process(speech_like_pcm16(0.1, 48000)) + transcoder.flush()
        assert len(out) == 800

    def test_empty_payloads(self) -> None:
        """Empty chunks give empty output, and nothing to flush, both ways."""
        inbound, outbound = InboundTranscoder(16000), OutboundTranscoder(24000)
        assert inbound.process(b"") == outbound.process(b"") == b""
        assert inbound.flush() == outbound.flush() == b""
