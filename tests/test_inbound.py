"""Caller-audio continuity (gap fill, duplicates, stale frames) and the bounded pre-roll."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.framing import ULAW_FRAME_BYTES
from gateway.core.inbound import InboundParams, InboundStream, InboundVerdict, PreRoll
from gateway.errors import CallStateError, ConfigError


def feed(stream: InboundStream, frames: list[tuple[int, int, int]]) -> list[InboundVerdict]:
    return [stream.accept(ts, chunk, n) for ts, chunk, n in frames]


def regular(n_frames: int, start_ms: int = 0) -> list[tuple[int, int, int]]:
    return [(start_ms + 20 * i, i + 1, ULAW_FRAME_BYTES) for i in range(n_frames)]


def test_first_frame_is_forwarded_without_fill() -> None:
    """The first frame is forwarded as is, whatever its timestamp."""
    stream = InboundStream()
    assert stream.accept(5000, 7, ULAW_FRAME_BYTES) == InboundVerdict("forward", 0, "first")
    assert stream.statistics().last_timestamp_ms == 5000


def test_continuous_frames_are_forwarded_without_fill() -> None:
    """Back-to-back 20 ms frames are forwarded with no fill and no gap counted."""
    stream = InboundStream()
    verdicts = feed(stream, regular(50))
    assert all(v.action == "forward" and v.fill_ms == 0 for v in verdicts)
    stats = stream.statistics()
    assert (stats.frames_forwarded, stats.gaps, stats.audio_ms_forwarded) == (50, 0, 1000)


def test_gap_is_filled_exactly() -> None:
    """A frame arriving 60 ms after the expected position asks for exactly 60 ms of silence."""
    stream = InboundStream()
    feed(stream, [(0, 1, ULAW_FRAME_BYTES), (20, 2, ULAW_FRAME_BYTES)])
    verdict = stream.accept(100, 3, ULAW_FRAME_BYTES)
    assert verdict == InboundVerdict("forward", 60, "gap")
    stats = stream.statistics()
    assert (stats.gaps, stats.gap_ms_filled, stats.gap_ms_unfilled) == (1, 60, 0)
    assert stats.audio_ms_forwarded == 20 + 20 + 60 + 20


def test_gap_fill_is_capped_and_the_excess_counted() -> None:
    """A gap longer than max_gap_fill_ms is filled up to the cap and the rest is counted as unfilled."""
    stream = InboundStream(InboundParams(max_gap_fill_ms=1000))
    stream.accept(0, 1, ULAW_FRAME_BYTES)
    verdict = stream.accept(1520, 2, ULAW_FRAME_BYTES)
    assert verdict == InboundVerdict("forward", 1000, "gap")
    stats = stream.statistics()
    assert (stats.gap_ms_filled, stats.gap_ms_unfilled) == (1000, 500)


def test_zero_cap_disables_fill_but_counts_the_gap() -> None:
    """With max_gap_fill_ms=0 a gap is forwarded without fill and all of it counted as unfilled."""
    stream = InboundStream(InboundParams(max_gap_fill_ms=0))
    stream.accept(0, 1, ULAW_FRAME_BYTES)
    assert stream.accept(100, 2, ULAW_FRAME_BYTES) == InboundVerdict("forward", 0, "gap")
    assert stream.statistics().gap_ms_unfilled == 80


def test_repeated_timestamp_is_a_duplicate() -> None:
    """A frame with the previous frame's timestamp is dropped as a duplicate."""
    stream = InboundStream()
    feed(stream, [(0, 1, ULAW_FRAME_BYTES), (20, 2, ULAW_FRAME_BYTES)])
    assert stream.accept(20, 3, ULAW_FRAME_BYTES) == InboundVerdict("drop", 0, "duplicate")
    assert stream.statistics().frames_dropped_duplicate == 1


def test_repeated_chunk_is_a_duplicate() -> None:
    """A frame with the previous frame's chunk number is dropped as a duplicate."""
    stream = InboundStream()
    feed(stream, [(0, 1, ULAW_FRAME_BYTES), (20, 2, ULAW_FRAME_BYTES)])
    assert stream.accept(40, 2, ULAW_FRAME_BYTES) == InboundVerdict("drop", 0, "duplicate")
    assert stream.accept(40, 3, ULAW_FRAME_BYTES) == InboundVerdict("forward", 0, "continuous")


def test_frame_from_the_past_is_stale() -> None:
    """A frame earlier than the expected position by more than the tolerance is dropped as stale."""
    stream = InboundStream()
    feed(stream, regular(5))
    assert stream.accept(40, 9, ULAW_FRAME_BYTES) == InboundVerdict("drop", 0, "stale")
    stats = stream.statistics()
    assert (stats.frames_dropped_stale, stats.last_timestamp_ms) == (1, 80)
    assert stream.accept(100, 10, ULAW_FRAME_BYTES).action == "forward"


@pytest.mark.parametrize("offset_ms", [-10, -5, 5, 10])
def test_jitter_within_tolerance_is_forwarded_without_fill(offset_ms: int) -> None:
    """A timestamp within tolerance_ms of the expected position is forwarded with no fill."""
    stream = InboundStream(InboundParams(tolerance_ms=10))
    stream.accept(1000, 1, ULAW_FRAME_BYTES)
    assert stream.accept(1020 + offset_ms, 2, ULAW_FRAME_BYTES) == InboundVerdict("forward", 0, "continuous")
    assert stream.statistics().gaps == 0


def test_just_beyond_tolerance_is_a_gap_or_stale() -> None:
    """One ms past the tolerance either side is a gap (filled in full) or a stale frame."""
    ahead = InboundStream(InboundParams(tolerance_ms=10))
    ahead.accept(0, 1, ULAW_FRAME_BYTES)
    assert ahead.accept(31, 2, ULAW_FRAME_BYTES) == InboundVerdict("forward", 11, "gap")
    behind = InboundStream(InboundParams(tolerance_ms=10))
    behind.accept(100, 1, ULAW_FRAME_BYTES)
    assert behind.accept(109, 2, ULAW_FRAME_BYTES) == InboundVerdict("drop", 0, "stale")


def test_empty_payload_is_dropped_and_does_not_move_the_clock() -> None:
    """A zero-byte payload is dropped as empty and leaves the expected position alone."""
    stream = InboundStream()
    stream.accept(0, 1, ULAW_FRAME_BYTES)
    assert stream.accept(20, 2, 0) == InboundVerdict("drop", 0, "empty")
    assert stream.accept(20, 3, ULAW_FRAME_BYTES) == InboundVerdict("forward", 0, "continuous")
    assert stream.statistics().frames_empty == 1


def test_odd_frame_sizes_keep_the_expected_position_sample_exact() -> None:
    """Frames whose length is not a whole ms move the expected position by their exact duration."""
    stream = InboundStream(InboundParams(tolerance_ms=0))
    stream.accept(0, 1, 100)  # 12.5 ms
    assert stream.accept(12, 2, 100) == InboundVerdict("drop", 0, "stale")
    stream2 = InboundStream(InboundParams(tolerance_ms=0))
    stream2.accept(0, 1, 100)
    assert stream2.accept(14, 2, 100) == InboundVerdict("forward", 1, "gap")
    assert stream2.statistics().audio_ms_forwarded == 12.5 + 1 + 12.5


def test_chunk_jumps_are_counted_as_skipped() -> None:
    """Missing chunk numbers between forwarded frames are counted in chunks_skipped."""
    stream = InboundStream()
    feed(stream, [(0, 1, ULAW_FRAME_BYTES), (20, 2, ULAW_FRAME_BYTES), (100, 6, ULAW_FRAME_BYTES)])
    assert stream.statistics().chunks_skipped == 3


def test_negative_byte_count_is_a_local_error() -> None:
    """A negative n_bytes is our own bug and raises CallStateError naming the value."""
    with pytest.raises(CallStateError, match="-1"):
        InboundStream().accept(0, 1, -1)


@pytest.mark.parametrize("kwargs", [{"max_gap_fill_ms": -1}, {"tolerance_ms": -5}])
def test_invalid_params_are_config_errors(kwargs: dict[str, int]) -> None:
    """Negative limits in InboundParams raise ConfigError."""
    with pytest.raises(ConfigError):
        InboundParams(**kwargs)


frames_strategy = st.lists(
    st.tuples(st.integers(-(10**6), 10**6), st.integers(-5, 10**4), st.integers(0, 2000)), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(frames=frames_strategy)
def test_random_frames_never_raise_and_counters_add_up(frames: list[tuple[int, int, int]]) -> None:
    """Any frame sequence is judged without raising, and forwarded + dropped equals frames seen."""
    stream = InboundStream()
    verdicts = feed(stream, frames)
    stats = stream.statistics()
    dropped = stats.frames_dropped_duplicate + stats.frames_dropped_stale + stats.frames_empty
    assert stats.frames_forwarded + dropped == len(frames)
    assert stats.frames_forwarded == sum(v.action == "forward" for v in verdicts)
    forwarded_ms = sum(
        n / 8 + v.fill_ms for (_, _, n), v in zip(frames, verdicts, strict=True) if v.action == "forward"
    )
    assert stats.audio_ms_forwarded == pytest.approx(forwarded_ms)
    assert stats.gap_ms_filled == sum(v.fill_ms for v in verdicts)
    assert all(v.fill_ms == 0 for v in verdicts if v.action == "drop" or v.reason != "gap")
    assert all(0 <= v.fill_ms <= stream.params.max_gap_fill_ms for v in verdicts)


@settings(max_examples=200, deadline=None)
@given(kept=st.lists(st.booleans(), min_size=2, max_size=120), repeats=st.lists(st.integers(0, 119)))
def test_lossy_stream_is_restored_to_its_full_span(kept: list[bool], repeats: list[int]) -> None:
    """Frames lost or repeated anywhere: forwarded audio plus fill covers exactly first to last frame."""
    frames = [f for f, keep in zip(regular(len(kept)), kept, strict=True) if keep]
    for index in sorted(set(repeats), reverse=True):
        if index < len(frames):
            frames.insert(index + 1, frames[index])
    stream = InboundStream(InboundParams(max_gap_fill_ms=10_000, tolerance_ms=10))
    feed(stream, frames)
    stats = stream.statistics()
    if frames:
        span_ms = frames[-1][0] + 20 - frames[0][0]
        assert stats.audio_ms_forwarded == span_ms
        assert stats.gap_ms_filled == span_ms - 20 * len(set(frames))
        assert stats.frames_dropped_duplicate == len(frames) - len(set(frames))


# ---------------------------------------------------------------------- pre-roll


def test_preroll_returns_chunks_in_order_and_empties() -> None:
    """drain() returns what was pushed, oldest first, and leaves the pre-roll empty."""
    preroll = PreRoll(1000)
    for i in range(3):
        preroll.push(bytes([i]) * 320, 20.0)
    assert preroll.drain() == [b"\x00" * 320, b"\x01" * 320, b"\x02" * 320]
    assert preroll.drain() == []
    assert preroll.statistics().held_ms == 0


def test_preroll_drops_oldest_audio_beyond_capacity() -> None:
    """Past capacity_ms the oldest chunks are dropped and their duration counted."""
    preroll = PreRoll(100)
    for i in range(8):
        preroll.push(bytes([i]) * 320, 20.0)
    stats = preroll.statistics()
    assert (stats.held_ms, stats.dropped_ms, stats.chunks_held) == (100, 60, 5)
    assert preroll.drain() == [bytes([i]) * 320 for i in range(3, 8)]
    assert preroll.statistics().dropped_ms == 60


def test_preroll_trims_a_partial_chunk_on_a_sample_boundary() -> None:
    """When only part of the oldest chunk is over capacity, just its head is cut, whole samples only."""
    preroll = PreRoll(30)
    preroll.push(bytes(range(32)), 2.0)  # 16 bytes/ms
    preroll.push(b"\xaa" * 448, 28.0)
    preroll.push(b"\xbb" * 16, 1.0)
    assert preroll.statistics().held_ms == pytest.approx(30)
    assert preroll.statistics().dropped_ms == pytest.approx(1)
    assert b"".join(preroll.drain()) == bytes(range(16, 32)) + b"\xaa" * 448 + b"\xbb" * 16


def test_preroll_with_zero_capacity_keeps_nothing() -> None:
    """A pre-roll of 0 ms drops everything pushed into it."""
    preroll = PreRoll(0)
    preroll.push(b"\x01" * 320, 20.0)
    assert preroll.drain() == []
    assert preroll.statistics().dropped_ms == 20


def test_preroll_rejects_bad_arguments() -> None:
    """A negative capacity is a ConfigError; a negative duration is a CallStateError."""
    with pytest.raises(ConfigError):
        PreRoll(-1)
    with pytest.raises(CallStateError, match="duration_ms"):
        PreRoll(10).push(b"\x00\x00", -1.0)


@settings(max_examples=200, deadline=None)
@given(capacity_ms=st.integers(0, 200), sizes=st.lists(st.integers(1, 400), max_size=40))
def test_preroll_keeps_the_newest_audio_and_accounts_for_all(capacity_ms: int, sizes: list[int]) -> None:
    """The pre-roll holds a suffix of what was pushed, never over capacity, and held + dropped = pushed."""
    preroll = PreRoll(capacity_ms)
    pushed = bytearray()
    for n_samples in sizes:
        chunk = bytes((len(pushed) + i) % 251 for i in range(2 * n_samples))
        pushed += chunk
        preroll.push(chunk, n_samples / 8)  # 8 kHz linear16: 16 bytes per ms
        stats = preroll.statistics()
        assert stats.held_ms <= capacity_ms + 1e-6
        assert stats.held_ms + stats.dropped_ms == pytest.approx(len(pushed) / 16)
    held = b"".join(preroll.drain())
    assert pushed.endswith(held)
    assert len(held) % 2 == 0
    assert len(pushed) / 16 - len(held) / 16 == pytest.approx(preroll.statistics().dropped_ms)


def test_timestamps_jumping_back_for_good_are_followed_after_a_resync() -> None:
    """A peer whose clock restarts is dropped as stale briefly, then followed (no stream stuck forever)."""
    stream = InboundStream(InboundParams(resync_after_stale_frames=5))
    for i in range(10):
        assert stream.accept(10_000 + 20 * i, i + 1, 160).action == "forward"
    verdicts = [stream.accept(20 * i, 100 + i, 160) for i in range(8)]
    assert [v.reason for v in verdicts] == ["stale"] * 4 + ["resync", "continuous", "continuous", "continuous"]
    assert stream.statistics().resyncs == 1
