"""Telephone framing: unit conversions and the Framer that carries remainders between pushes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.framing import (
    FRAME_MS,
    TWILIO_RATE_HZ,
    ULAW_BYTES_PER_MS,
    ULAW_FRAME_BYTES,
    Framer,
    ulaw_bytes_to_ms,
)


class TestUnits:
    def test_frame_is_20_ms_of_8khz_ulaw(self) -> None:
        """A Twilio frame is 20 ms at 8 kHz, one byte per sample: 160 bytes."""
        assert (TWILIO_RATE_HZ, FRAME_MS, ULAW_BYTES_PER_MS, ULAW_FRAME_BYTES) == (8000, 20, 8, 160)

    @pytest.mark.parametrize(("n_bytes", "duration_ms"), [(0, 0.0), (1, 0.125), (160, 20.0), (8000, 1000.0)])
    def test_bytes_to_ms(self, n_bytes: int, duration_ms: float) -> None:
        """μ-law byte counts convert to milliseconds at 8 bytes per ms."""
        assert ulaw_bytes_to_ms(n_bytes) == duration_ms


class TestFramer:
    def test_carries_remainder(self) -> None:
        """A partial frame waits for the next push and completes with its bytes."""
        framer = Framer(4)
        assert framer.push(b"abcdef") == [b"abcd"]
        assert framer.pending_bytes == 2
        assert framer.push(b"gh") == [b"efgh"]
        assert framer.pending_bytes == 0
        assert framer.flush() == b""

    def test_flush_returns_partial_frame_once(self) -> None:
        """flush() hands back the partial frame and forgets it."""
        framer = Framer()
        assert framer.push(bytes(range(200))) == [bytes(range(160))]
        assert framer.flush() == bytes(range(160, 200))
        assert framer.flush() == b""
        assert framer.pending_bytes == 0

    def test_reset_drops_partial_frame(self) -> None:
        """After reset() the held bytes never come out."""
        framer = Framer(4)
        framer.push(b"xyz")
        framer.reset()
        assert framer.push(b"abcd") == [b"abcd"]
        assert framer.flush() == b""

    def test_one_push_can_give_many_frames(self) -> None:
        """A long push is cut into every whole frame it contains, oldest first."""
        framer = Framer(3)
        assert framer.push(b"abcdefghij") == [b"abc", b"def", b"ghi"]
        assert framer.flush() == b"j"

    @pytest.mark.parametrize("frame_bytes", [0, -160])
    def test_frame_size_must_be_positive(self, frame_bytes: int) -> None:
        """A non-positive frame size is rejected at construction with a message naming it."""
        with pytest.raises(ValueError, match="frame_bytes must be positive"):
            Framer(frame_bytes)

    @settings(max_examples=200)
    @given(
        chunks=st.lists(st.binary(max_size=500), max_size=20),
        frame_bytes=st.integers(min_value=1, max_value=400),
    )
    def test_frames_plus_flush_is_the_input(self, chunks: list[bytes], frame_bytes: int) -> None:
        """Whatever the chunking, concatenated frames + flush equal the input and every frame is full size."""
        framer = Framer(frame_bytes)
        frames: list[bytes] = []
        for chunk in chunks:
            frames += framer.push(chunk)
            assert framer.pending_bytes < frame_bytes
        rest = framer.flush()
        data = b"".join(chunks)
        assert b"".join(frames) + rest == data
        assert all(len(frame) == frame_bytes for frame in frames)
        assert len(frames) == len(data) // frame_bytes
        assert len(rest) == len(data) % frame_bytes
