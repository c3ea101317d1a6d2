"""Streaming resamplers: one object per call per direction, state kept across chunks.

docs/audio-path.md "Resampler delay": soxr streams hold back audio (HQ: 64–160 ms when fed 20 ms frames), so every
stream here has an explicit :meth:`flush` that releases what it holds, and :meth:`reset` for barge-in.
Two engines:

- :class:`SoxrStream` — soxr ``ResampleStream`` (HQ by default) for EVI's 24/48 kHz → 8 kHz telephone
  audio, where the anti-alias filter matters (LQ is muffled, QQ aliases: docs/audio-path.md "Quality").
  Processing runs in float32 so the output carries no libsoxr int16 dither and is repeatable.
- :class:`FirUpsampler` — a short polyphase FIR for integer up-sampling of caller audio
  (8 kHz → 16/24/48 kHz) with 1.5 ms delay instead of soxr's 64 ms.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import soxr

from gateway.codecs.g711 import require_pcm16

Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]
_INT16_SCALE = 32768.0


def pcm16_to_float(pcm16: bytes) -> np.ndarray:
    """16-bit little-endian PCM bytes → float32 samples in [-1, 1)."""
    require_pcm16(pcm16)
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / np.float32(_INT16_SCALE)


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 samples → 16-bit little-endian PCM bytes, rounded and clipped."""
    scaled = np.rint(samples * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


# The engines below filter int16-valued float32 (no ±1 normalisation): both filters are linear and a
# power-of-two scale is exact in floating point, so this only saves two array passes per 20 ms frame.
_I16 = np.dtype("<i2")


def _pcm16_to_units(pcm16: bytes) -> np.ndarray:
    require_pcm16(pcm16)
    return np.frombuffer(pcm16, dtype=_I16).astype(np.float32)


def _units_to_pcm16(y: np.ndarray) -> bytes:
    """Round and saturate int16-valued floats in place (``np.clip`` costs ~2 µs per call), then pack."""
    if not len(y):
        return b""  # soxr streams return nothing on most 20 ms calls
    np.rint(y, out=y)
    np.maximum(y, -32768.0, out=y)
    np.minimum(y, 32767.0, out=y)
    packed: bytes = y.astype(_I16).tobytes()
    return packed


class Resampler(Protocol):
    """A stateful mono linear16 resampler."""

    in_rate_hz: int
    out_rate_hz: int

    def process(self, pcm16: bytes) -> bytes:
        """Resample a chunk; may return less than its share while the filter fills."""
        ...

    def flush(self) -> bytes:
        """Return everything held back; the stream then starts afresh."""
        ...

    def reset(self) -> None:
        """Drop everything held back (barge-in)."""
        ...

    @property
    def held_back_samples(self) -> float:
        """Output samples owed for input already given (0 right after ``flush``)."""
        ...


class _Counted:
    """Counts samples in and out, to report what a resampler is holding back."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate_hz} → {out_rate_hz}")
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._ratio = out_rate_hz / in_rate_hz
        self._in_samples = 0
        self._out_samples = 0

    @property
    def held_back_samples(self) -> float:
        """Output samples owed for the input given since the last flush/reset."""
        return max(0.0, self._in_samples * self._ratio - self._out_samples)

    def _restart_counts(self) -> None:
        self._in_samples = 0
        self._out_samples = 0


class SoxrStream(_Counted):
    """soxr ``ResampleStream`` over mono linear16, flushed explicitly."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: Quality = "HQ") -> None:
        super().__init__(in_rate_hz, out_rate_hz)
        self._stream = soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="float32", quality=quality)

    def process(self, pcm16: bytes) -> bytes:
        """Resample a chunk of any length (empty is fine)."""
        x = _pcm16_to_units(pcm16)
        self._in_samples += len(x)
        y = self._stream.resample_chunk(x)
        self._out_samples += len(y)
        return _units_to_pcm16(y)

    def flush(self) -> bytes:
        """Drain the filter (``last=True``), then clear it for the next utterance."""
        y = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        self._restart_counts()
        return _units_to_pcm16(y)

    def reset(self) -> None:
        """Forget everything held back."""
        self._stream.clear()
        self._restart_counts()


class FirUpsampler(_Counted):
    """Integer-factor up-sampler: zero-stuffing + a short Kaiser-windowed-sinc polyphase FIR.

    The filter spans ``taps_per_phase`` input samples; its delay is half of that (12 samples = 1.5 ms at
    8 kHz) against soxr HQ's ~64 ms. Response at 8 → 16/24/48 kHz: −0.5 dB at 3.4 kHz (top of the
    telephone band), ≤ −64 dB from 4.6 kHz (the image of 3.4 kHz), like the "numpy FIR, 60 dB"
    row of docs/audio-path.md "Quality". The leading delay is trimmed from the output and released by
    :meth:`flush`, so output is time-aligned with input and the sample count is exactly ``factor`` × input.
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, taps_per_phase: int = 24) -> None:
        super().__init__(in_rate_hz, out_rate_hz)
        if out_rate_hz % in_rate_hz or out_rate_hz <= in_rate_hz:
            raise ValueError(f"FirUpsampler needs an integer factor > 1, got {in_rate_hz} → {out_rate_hz}")
        if taps_per_phase < 2 or taps_per_phase % 2:
            raise ValueError(f"taps_per_phase must be even and >= 2, got {taps_per_phase}")
        self._factor = out_rate_hz // in_rate_hz
        self._taps_per_phase = taps_per_phase
        n_taps = taps_per_phase * self._factor
        self._delay_out = n_taps // 2  # centre tap: the filter's delay in output samples
        t = (np.arange(n_taps) - self._delay_out) / self._factor
        cutoff = 0.95  # −6 dB point as a fraction of the input Nyquist (3.8 kHz at 8 kHz)
        h = cutoff * np.sinc(cutoff * t) * np.kaiser(n_taps + 1, 6.0)[:n_taps]
        h *= self._factor / h.sum()  # unity gain after zero-stuffing
        # Column p holds the taps that produce output sample p of each input step, oldest input first.
        self._phases_t = np.ascontiguousarray(
            np.stack([h[p :: self._factor][::-1] for p in range(self._factor)]).T, dtype=np.float32
        )
        self._history = np.zeros(taps_per_phase - 1, dtype=np.float32)
        self._to_trim = self._delay_out

    def process(self, pcm16: bytes) -> bytes:
        """Up-sample a chunk; output trails input by the filter delay until :meth:`flush`."""
        require_pcm16(pcm16)
        n_in = len(pcm16) // 2
        if not n_in:
            return b""
        self._in_samples += n_in
        n_hist = self._taps_per_phase - 1
        buf = np.empty(n_hist + n_in, dtype=np.float32)
        buf[:n_hist] = self._history
        buf[n_hist:] = np.frombuffer(pcm16, dtype=_I16)
        self._history = buf[n_in:]
        # One row per input step: the taps_per_phase inputs ending at it (a strided view, no copy).
        windows = np.ndarray((n_in, self._taps_per_phase), np.float32, buf, 0, (4, 4))
        y = (windows @ self._phases_t).reshape(-1)
        if self._to_trim:
            trimmed = min(self._to_trim, len(y))
            y = y[trimmed:]
            self._to_trim -= trimmed
        self._out_samples += len(y)
        return _units_to_pcm16(y)

    def flush(self) -> bytes:
        """Push zeros through the filter to release its delayed tail, then start afresh."""
        held = int(round(self.held_back_samples))
        tail = b""
        if held:
            # The zeros must also cover output still to be trimmed when less than the delay was given.
            n_zeros = -(-(held + self._to_trim) // self._factor)
            tail = self.process(bytes(2 * n_zeros))[: 2 * held]
        self.reset()
        return tail

    def reset(self) -> None:
        """Forget the filter history."""
        self._history = np.zeros(self._taps_per_phase - 1, dtype=np.float32)
        self._to_trim = self._delay_out
        self._restart_counts()


class Passthrough(_Counted):
    """Same rate in and out: no filter, no delay."""

    def process(self, pcm16: bytes) -> bytes:
        """Return the chunk unchanged (validated as linear16)."""
        require_pcm16(pcm16)
        return pcm16

    def flush(self) -> bytes:
        """Nothing is ever held."""
        return b""

    def reset(self) -> None:
        """Nothing to forget."""


def make_resampler(in_rate_hz: int, out_rate_hz: int, *, low_delay: bool = False, quality: Quality = "HQ") -> Resampler:
    """Pick the engine: passthrough, the low-delay FIR for integer up-sampling, else soxr."""
    if in_rate_hz == out_rate_hz:
        return Passthrough(in_rate_hz, out_rate_hz)
    if low_delay and out_rate_hz > in_rate_hz and out_rate_hz % in_rate_hz == 0:
        return FirUpsampler(in_rate_hz, out_rate_hz)
    return SoxrStream(in_rate_hz, out_rate_hz, quality="LQ" if low_delay else quality)
