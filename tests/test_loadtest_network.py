"""The caller emulator's load-test building blocks: network trouble plans, heard speech, stereo WAVs."""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.errors import ConfigError
from gateway.simulator.caller_network import NetworkTrouble, parse_burst, parse_drop_pattern
from gateway.simulator.recording import CallRecord, SpeechSegment, write_stereo_wav

SILENCE = 0xFF


def steady_ulaw(n_bytes: int, level: int = 4000) -> bytes:
    """μ-law of a constant level: every sample is loud, so speech edges are sample-exact."""
    return pcm16_to_ulaw(np.full(n_bytes, level, "<i2").tobytes())


def decoded(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2").astype(np.float64)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    jitter=st.floats(0, 80),
    every_n=st.integers(0, 12),
    ratio=st.floats(0, 0.5),
    burst=st.sampled_from([(0, 0), (200, 60), (1000, 300)]),
)
def test_frame_plans_are_deterministic_by_seed_and_bounded(
    seed: int, jitter: float, every_n: int, ratio: float, burst: tuple[int, int]
) -> None:
    """Same seed, same plan; the drop pattern always drops; delays stay within jitter plus burst hold."""
    every_n = every_n if every_n >= 2 else 0
    trouble = NetworkTrouble(
        extra_jitter_ms=jitter,
        burst_every_ms=burst[0],
        burst_hold_ms=burst[1],
        drop_ratio=ratio,
        drop_every_n=every_n,
        seed=seed,
    )
    a, b = trouble.planner(20), trouble.planner(20)
    plans = [a.plan(n) for n in range(200)]
    assert plans == [b.plan(n) for n in range(200)]
    for n, plan in enumerate(plans):
        if every_n and n % every_n == every_n - 1:
            assert plan.drop
        if not ratio and not every_n:
            assert not plan.drop
        assert 0 <= plan.extra_delay_ms <= jitter + burst[1]
        if burst[0] and n * 20 >= burst[0] and (n * 20) % burst[0] < burst[1]:
            assert plan.extra_delay_ms >= burst[1] - (n * 20) % burst[0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: NetworkTrouble(extra_jitter_ms=-1),
        lambda: NetworkTrouble(burst_every_ms=100),
        lambda: NetworkTrouble(burst_every_ms=100, burst_hold_ms=100),
        lambda: NetworkTrouble(drop_ratio=1.0),
        lambda: NetworkTrouble(drop_every_n=3, drop_run=3),
        lambda: parse_drop_pattern("x"),
        lambda: parse_burst("5000"),
    ],
)
def test_impossible_network_trouble_is_a_config_error(make: Callable[[], object]) -> None:
    """Negative, contradictory or unparsable network settings raise ConfigError."""
    with pytest.raises(ConfigError):
        make()


def test_stereo_wav_puts_said_left_and_heard_right(tmp_path: Path) -> None:
    """write_stereo_wav writes two 8 kHz channels, padding the shorter one with silence."""
    left, right = steady_ulaw(80, 1000), steady_ulaw(40, -2000)
    write_stereo_wav(tmp_path / "call.wav", left, right)
    with wave.open(str(tmp_path / "call.wav"), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 8000, 80)
        frames = np.frombuffer(w.readframes(80), "<i2").reshape(-1, 2)
    assert np.array_equal(frames[:, 0], decoded(left))
    assert np.array_equal(frames[:40, 1], decoded(right)) and not frames[40:, 1].any()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_speech_segments_cover_loud_frames_merged_across_short_quiet(loud: list[bool]) -> None:
    """Heard loud frames become segments; quiet of at most the merge gap between them is merged over."""
    record = CallRecord(frame_ms=20, speech_merge_gap_ms=40)
    for is_loud in loud:
        record.append_heard(steady_ulaw(160) if is_loud else bytes([SILENCE]) * 160)
    expected: list[SpeechSegment] = []
    for n, is_loud in enumerate(loud):
        if not is_loud:
            continue
        if expected and n * 20 - expected[-1].end_ms <= 40:
            expected[-1] = SpeechSegment(expected[-1].start_ms, n * 20 + 20)
        else:
            expected.append(SpeechSegment(n * 20, n * 20 + 20))
    assert record.agent_speech_segments == expected
