"""Test audio for the simulators: WAV files shaped like EVI's ``audio_output`` and deterministic signals.

evi-protocol.md §4.2: every ``audio_output.data`` is a complete RIFF/WAVE file of 16-bit PCM whose rate
(48 kHz documented, 24 kHz observed) must be read from the header. :func:`wav_bytes` writes such files; with
``extra_chunks=True`` a ``LIST`` chunk sits between ``fmt `` and ``data`` so a reader that slices a fixed
44-byte header fails visibly. The bytes come from :func:`gateway.codecs.wav.riff_wave`, the package's one WAV
writer; the tests check it against the stdlib ``wave`` module and the SDK's reader.
"""

from __future__ import annotations

import numpy as np

from gateway.codecs.wav import riff_chunk, write_wav
from gateway.errors import AudioFormatError

__all__ = ["speechlike_pcm16", "tone_pcm16", "wav_bytes"]

_SPEECH_LOW_HZ = 300.0
_SPEECH_HIGH_HZ = 3400.0
_LIST_INFO = riff_chunk(b"LIST", b"INFO" + riff_chunk(b"ISFT", b"gateway EVI simulator\x00"))


def wav_bytes(pcm16: bytes, rate_hz: int, channels: int = 1, extra_chunks: bool = False) -> bytes:
    """Wrap 16-bit little-endian PCM in a complete RIFF/WAVE file; ``extra_chunks`` adds a LIST chunk."""
    return write_wav(pcm16, rate_hz, channels, _LIST_INFO if extra_chunks else b"")


def _n_samples(duration_ms: float, rate_hz: int) -> int:
    if rate_hz <= 0:
        raise AudioFormatError(f"sample rate must be positive, got {rate_hz} Hz")
    if duration_ms < 0:
        raise AudioFormatError(f"duration must not be negative, got {duration_ms} ms")
    return round(rate_hz * duration_ms / 1000)


def _to_pcm16(signal: np.ndarray) -> bytes:
    clipped = np.clip(np.round(signal * 32767.0), -32768, 32767)
    return clipped.astype("<i2").tobytes()


def tone_pcm16(freq_hz: float, duration_ms: float, rate_hz: int, amplitude: float = 0.3) -> bytes:
    """A mono sine tone as 16-bit PCM; ``amplitude`` is a fraction of full scale (0-1)."""
    n = _n_samples(duration_ms, rate_hz)
    if not 0.0 <= amplitude <= 1.0:
        raise AudioFormatError(f"amplitude must be within 0-1 of full scale, got {amplitude}")
    if not 0.0 <= freq_hz < rate_hz / 2:
        raise AudioFormatError(f"tone of {freq_hz} Hz is not below the Nyquist frequency of {rate_hz} Hz")
    t_s = np.arange(n, dtype=np.float64) / rate_hz
    return _to_pcm16(amplitude * np.sin(2.0 * np.pi * freq_hz * t_s))


def speechlike_pcm16(duration_ms: float, rate_hz: int, seed: int) -> bytes:
    """Mono 16-bit PCM resembling voiced speech in the telephone band (300-3400 Hz); same seed, same bytes.

    Harmonics of a gliding 100-200 Hz fundamental plus noise, under a ~4 Hz syllable envelope, then cut to
    the band with an FFT mask. Peak level is -6 dBFS.
    """
    n = _n_samples(duration_ms, rate_hz)
    if rate_hz <= 2 * _SPEECH_HIGH_HZ:
        raise AudioFormatError(f"speech-like audio needs a rate above {2 * _SPEECH_HIGH_HZ:.0f} Hz, got {rate_hz}")
    if n == 0:
        return b""
    rng = np.random.default_rng(seed)
    t_s = np.arange(n, dtype=np.float64) / rate_hz
    f0_hz = rng.uniform(100.0, 200.0) * (1.0 + 0.15 * np.sin(2.0 * np.pi * rng.uniform(0.5, 2.0) * t_s))
    phase = 2.0 * np.pi * np.cumsum(f0_hz) / rate_hz
    voiced = np.zeros(n)
    for k in range(2, int(_SPEECH_HIGH_HZ // 100.0) + 1):
        voiced += rng.uniform(0.2, 1.0) / k * np.sin(k * phase + rng.uniform(0.0, 2.0 * np.pi))
    noise = rng.standard_normal(n)
    mix = voiced / (np.max(np.abs(voiced)) or 1.0) + 0.1 * noise
    mix *= 0.6 + 0.4 * np.sin(2.0 * np.pi * rng.uniform(3.0, 5.0) * t_s + rng.uniform(0.0, 2.0 * np.pi))
    spectrum = np.fft.rfft(mix)
    freqs_hz = np.fft.rfftfreq(n, d=1.0 / rate_hz)
    spectrum[(freqs_hz < _SPEECH_LOW_HZ) | (freqs_hz > _SPEECH_HIGH_HZ)] = 0
    band = np.fft.irfft(spectrum, n)
    return _to_pcm16(0.5 * band / (np.max(np.abs(band)) or 1.0))
