"""G.711 μ-law: known vectors, the ITU-T G.711 table, segment boundaries and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.g711 import ULAW_SILENCE_BYTE, pcm16_to_ulaw, require_pcm16, ulaw_silence, ulaw_to_pcm16
from gateway.errors import AudioFormatError

ALL_CODES = bytes(range(256))
ZERO_CODES = (0xFF, 0x7F)  # positive and negative zero
# ITU-T G.711 Table 2a decision values (14-bit magnitudes) where a new segment starts; 8159 is overload.
SEGMENT_STARTS_14BIT = (31, 95, 223, 479, 991, 2015, 4063)
OVERLOAD_14BIT = 8159


def _decode_one(code: int) -> int:
    return int(np.frombuffer(ulaw_to_pcm16(bytes([code])), dtype="<i2")[0])


def _encode_one(sample: int) -> int:
    return pcm16_to_ulaw(np.array([sample], dtype="<i2").tobytes())[0]


def _itu_decode(code: int) -> int:
    """ITU-T G.711 μ-law expansion, written from the standard: ((2q + 33) · 2^s − 33), ×4 to 16 bits."""
    inverted = ~code & 0xFF
    segment = (inverted >> 4) & 0x7
    step = inverted & 0xF
    magnitude = (((2 * step + 33) << segment) - 33) * 4
    return -magnitude if inverted & 0x80 else magnitude


def _segment(code: int) -> int:
    return ((~code & 0xFF) >> 4) & 0x7


class TestKnownVectors:
    @pytest.mark.parametrize(
        ("code", "expected"), [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8)]
    )
    def test_decode_known_codes(self, code: int, expected: int) -> None:
        """Known μ-law codes decode to the G.711 values (zeros, full scale, the smallest step)."""
        assert _decode_one(code) == expected

    def test_encode_zero_is_silence_byte(self) -> None:
        """Linear 0 encodes to 0xFF, the silence byte."""
        assert _encode_one(0) == 0xFF == ULAW_SILENCE_BYTE

    @pytest.mark.parametrize(("sample", "code"), [(32767, 0x80), (-32768, 0x00), (32124, 0x80), (-32124, 0x00)])
    def test_encode_full_scale(self, sample: int, code: int) -> None:
        """Full-scale samples encode to the extreme codes (overload saturates)."""
        assert _encode_one(sample) == code

    def test_every_code_matches_the_itu_table(self) -> None:
        """All 256 codes decode to the value the ITU-T G.711 expansion formula gives."""
        decoded = np.frombuffer(ulaw_to_pcm16(ALL_CODES), dtype="<i2").tolist()
        assert decoded == [_itu_decode(code) for code in range(256)]


class TestSegmentBoundaries:
    @pytest.mark.parametrize("segment", range(1, 8))
    @pytest.mark.parametrize("sign", [1, -1])
    def test_segment_starts_at_itu_decision_value(self, segment: int, sign: int) -> None:
        """One below an ITU-T decision value (14-bit) tops a segment; at the value, the next one begins."""
        start = SEGMENT_STARTS_14BIT[segment - 1]
        below = _encode_one(sign * 4 * (start - 1))
        at = _encode_one(sign * 4 * start)
        assert (_segment(below), ~below & 0xF) == (segment - 1, 0xF)
        assert (_segment(at), ~at & 0xF) == (segment, 0x0)

    def test_overload_saturates(self) -> None:
        """Magnitudes from the overload point up all give the top code of segment 7."""
        codes = {_encode_one(4 * m) for m in range(OVERLOAD_14BIT - 1, 8192)}
        assert codes == {0x80}

    def test_steps_double_per_segment(self) -> None:
        """Within segment s, neighbouring codes are 2^(s+1) apart in 14 bits (8·2^s in 16-bit samples)."""
        for segment in range(8):
            codes = [0xFF - (segment << 4) - step for step in range(16)]  # positive, ascending
            values = [_decode_one(code) for code in codes]
            assert set(np.diff(values).tolist()) == {8 << segment}


class TestRoundTrips:
    def test_every_code_reencodes_to_itself(self) -> None:
        """Each of the 256 codes decodes and re-encodes to itself, except negative zero (0x7F → 0xFF)."""
        reencoded = pcm16_to_ulaw(ulaw_to_pcm16(ALL_CODES))
        expected = bytes(0xFF if code == 0x7F else code for code in range(256))
        assert reencoded == expected
        assert {code for code in range(256) if reencoded[code] != code} == {0x7F}
        assert {reencoded[code] for code in ZERO_CODES} == {0xFF}

    def test_every_sample_lands_on_nearest_level(self) -> None:
        """Every int16 sample comes back within half its segment's step (+3 for the 16 → 14-bit cut)."""
        samples = np.arange(-32768, 32768, dtype=np.int64)
        codes = np.frombuffer(pcm16_to_ulaw(samples.astype("<i2").tobytes()), dtype=np.uint8)
        back = np.frombuffer(ulaw_to_pcm16(codes.tobytes()), dtype="<i2").astype(np.int64)
        segments = ((~codes) >> 4) & 0x7
        in_range = np.abs(samples) < 4 * OVERLOAD_14BIT
        error = np.abs(back - samples)
        assert np.all(error[in_range] <= (4 << segments[in_range].astype(np.int64)) + 3)
        assert np.all(np.diff(back) >= 0), "decode(encode(x)) must be monotonic in x"

    @settings(max_examples=200)
    @given(st.binary(max_size=400))
    def test_decode_is_length_agnostic(self, ulaw: bytes) -> None:
        """Any μ-law bytes decode to two bytes per input byte, and re-encode to the same codes up to zero."""
        pcm = ulaw_to_pcm16(ulaw)
        assert len(pcm) == 2 * len(ulaw)
        assert pcm16_to_ulaw(pcm) == ulaw.replace(b"\x7f", b"\xff")


class TestBadInput:
    @pytest.mark.parametrize("n_bytes", [1, 3, 321])
    def test_odd_pcm_byte_count_is_audio_format_error(self, n_bytes: int) -> None:
        """Encoding an odd number of linear16 bytes raises AudioFormatError naming the byte count."""
        with pytest.raises(AudioFormatError, match=f"even byte count, got {n_bytes} bytes"):
            pcm16_to_ulaw(bytes(n_bytes))

    @pytest.mark.parametrize(
        ("n_bytes", "channels", "message"),
        [(3, 1, "even byte count, got 3 bytes"), (6, 2, "6 bytes is not a whole number of 2-channel 16-bit frames")],
    )
    def test_partial_samples_or_frames_are_refused(self, n_bytes: int, channels: int, message: str) -> None:
        """require_pcm16 refuses bytes that are not whole samples (mono) or whole frames, and passes whole ones."""
        with pytest.raises(AudioFormatError, match=message):
            require_pcm16(bytes(n_bytes), channels)
        require_pcm16(bytes(4 * channels), channels)  # whole frames pass

    def test_empty_payloads(self) -> None:
        """Empty input gives empty output both ways."""
        assert ulaw_to_pcm16(b"") == b""
        assert pcm16_to_ulaw(b"") == b""


class TestSilence:
    @pytest.mark.parametrize("n_bytes", [0, 1, 160])
    def test_silence_decodes_to_zero(self, n_bytes: int) -> None:
        """ulaw_silence(n) is n bytes that decode to linear zeros."""
        silence = ulaw_silence(n_bytes)
        assert len(silence) == n_bytes
        assert ulaw_to_pcm16(silence) == bytes(2 * n_bytes)
