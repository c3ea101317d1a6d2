"""Signal levels of 16-bit PCM: RMS in dBFS per frame, and samples over a magnitude threshold.

The one measure of "is there sound here" shared by the simulator's turn detector, the load tester's
utterance splitter and energy responder, the demo and the caller's record of what it heard.
"""

from __future__ import annotations

import numpy as np

from gateway.codecs.g711 import ulaw_to_pcm16

FULL_SCALE = 32768.0
"""Magnitude of a full-scale 16-bit sample: 0 dBFS."""
SILENCE_DBFS = -120.0
"""The level reported for digital silence (and the floor of every level)."""

_FLOOR = 10.0 ** (SILENCE_DBFS / 20.0)


def frame_levels_dbfs(pcm16: bytes, frame_samples: int) -> np.ndarray:
    """RMS level (dBFS, floored at :data:`SILENCE_DBFS`) of each whole ``frame_samples`` frame; a tail is ignored."""
    n_frames = len(pcm16) // (2 * frame_samples)
    samples = np.frombuffer(pcm16, dtype="<i2", count=n_frames * frame_samples).astype(np.float64)
    rms = np.sqrt(np.mean(samples.reshape(n_frames, frame_samples) ** 2, axis=1)) / FULL_SCALE
    levels: np.ndarray = 20.0 * np.log10(np.maximum(rms, _FLOOR))
    return levels


def level_dbfs(pcm16: bytes) -> float:
    """RMS level (dBFS) of all of ``pcm16``; :data:`SILENCE_DBFS` for no samples."""
    if len(pcm16) < 2:
        return SILENCE_DBFS
    return float(frame_levels_dbfs(pcm16, len(pcm16) // 2)[0])


def loud_samples(pcm16: bytes, threshold: int) -> np.ndarray:
    """Indices of the samples whose magnitude exceeds ``threshold`` (linear16 units)."""
    samples = np.frombuffer(pcm16, dtype="<i2", count=len(pcm16) // 2).astype(np.int32)
    return np.flatnonzero(np.abs(samples) > threshold)


def loud_ulaw_samples(ulaw: bytes, threshold: int) -> np.ndarray:
    """:func:`loud_samples` of 8 kHz μ-law (one byte per sample, so indices are byte offsets)."""
    return loud_samples(ulaw_to_pcm16(ulaw), threshold)
