"""Signal levels: the one measure of sound shared by the turn detector, the splitter, the demo and the caller."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.codecs.levels import SILENCE_DBFS, frame_levels_dbfs, level_dbfs, loud_samples, loud_ulaw_samples


def _sine(amplitude: float, n: int = 1600) -> bytes:
    t = np.arange(n) / 8000
    return (np.sin(2 * np.pi * 400 * t) * amplitude * 32767).astype("<i2").tobytes()


def test_a_full_scale_sine_is_minus_3_dbfs() -> None:
    """RMS of a full-scale sine is 1/√2 of full scale: about −3 dBFS."""
    assert level_dbfs(_sine(1.0)) == pytest.approx(-3.01, abs=0.05)
    assert level_dbfs(_sine(0.1)) == pytest.approx(-23.01, abs=0.05)


def test_silence_and_nothing_sit_at_the_floor() -> None:
    """Digital silence and an empty buffer are both reported at the floor, never −inf."""
    assert level_dbfs(b"") == SILENCE_DBFS
    assert level_dbfs(bytes(320)) == SILENCE_DBFS


def test_levels_are_per_whole_frame() -> None:
    """Each whole frame gets its own level; a trailing partial frame is ignored."""
    pcm = bytes(320) + _sine(1.0, 160) + b"\x01\x00"
    levels = frame_levels_dbfs(pcm, 160)
    assert levels.shape == (2,)
    assert levels[0] == SILENCE_DBFS and levels[1] > -4


def test_loud_samples_are_found_in_pcm_and_ulaw_alike() -> None:
    """Samples over the threshold are found at the same offsets in linear16 and its μ-law encoding."""
    pcm = np.zeros(100, dtype="<i2")
    pcm[[10, 50]] = [2000, -3000]
    assert loud_samples(pcm.tobytes(), 300).tolist() == [10, 50]
    assert loud_ulaw_samples(pcm16_to_ulaw(pcm.tobytes()), 300).tolist() == [10, 50]
