"""WAV reader/writer: every chunk shape EVI may send, and malformed files rejected with AudioFormatError."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.wav import (
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    WavAudio,
    parse_riff,
    read_wav,
    riff_wave,
    write_wav,
)
from gateway.errors import AudioFormatError

PCM_GUID = bytes.fromhex("0100000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM
FLOAT_GUID = bytes.fromhex("0300000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_IEEE_FLOAT


def _chunk(chunk_id: bytes, body: bytes, declared_size: int | None = None) -> bytes:
    """A RIFF chunk, padded to an even length; ``declared_size`` overrides the size field."""
    size = len(body) if declared_size is None else declared_size
    return chunk_id + struct.pack("<I", size) + body + (b"\x00" if len(body) & 1 else b"")


def _fmt(
    rate_hz: int = 24000,
    channels: int = 1,
    bits: int = 16,
    tag: int = 1,
    block_align: int | None = None,
    extension: bytes = b"",
) -> bytes:
    align = channels * bits // 8 if block_align is None else block_align
    body = struct.pack("<HHIIHH", tag, channels, rate_hz, rate_hz * align, align, bits) + extension
    return _chunk(b"fmt ", body)


def _extensible(sub_format: bytes, channels: int = 1, valid_bits: int = 16) -> bytes:
    return struct.pack("<HHI", 22, valid_bits, (1 << channels) - 1) + sub_format


def _riff(*chunks: bytes, riff_size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def _pcm(samples: list[int] | np.ndarray) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


MONO = _pcm([0, 1, -1, 32767, -32768, 1234])
LIST_INFO = _chunk(b"LIST", b"INFO" + _chunk(b"ISFT", b"Lavf60.3.100\x00"))


class TestShapes:
    @pytest.mark.parametrize("rate_hz", [24000, 48000])
    def test_mono_at_evi_rates(self, rate_hz: int) -> None:
        """A plain mono file yields its samples, rate and channel count."""
        audio = read_wav(_riff(_fmt(rate_hz), _chunk(b"data", MONO)))
        assert audio == WavAudio(pcm16=MONO, rate_hz=rate_hz, channels=1)
        assert audio.n_samples == 6
        assert audio.duration_ms == pytest.approx(6000 / rate_hz)

    @pytest.mark.parametrize("rate_hz", [24000, 48000])
    def test_stereo_mixed(self, rate_hz: int) -> None:
        """Stereo is averaged to mono by default (floor of the mean)."""
        interleaved = _pcm([1000, 3000, -1, -2, 32767, 32767, -32768, -32768])
        audio = read_wav(_riff(_fmt(rate_hz, channels=2), _chunk(b"data", interleaved)))
        assert audio.pcm16 == _pcm([2000, -2, 32767, -32768])
        assert (audio.rate_hz, audio.channels) == (rate_hz, 2)

    def test_stereo_first_channel(self) -> None:
        """With stereo="first", only the left channel is kept."""
        interleaved = _pcm([1000, 3000, -1, -2, 5, 7])
        audio = read_wav(_riff(_fmt(48000, channels=2), _chunk(b"data", interleaved)), stereo="first")
        assert audio.pcm16 == _pcm([1000, -1, 5])

    def test_six_channels_mixed(self) -> None:
        """Any channel count up to 8 is reduced to mono."""
        frame = [600, 0, 0, 0, 0, 0]
        audio = read_wav(_riff(_fmt(48000, channels=6), _chunk(b"data", _pcm(frame * 3))))
        assert audio.pcm16 == _pcm([100, 100, 100])

    @pytest.mark.parametrize("where", ["before_fmt", "between", "after_data"])
    def test_list_chunk_is_skipped(self, where: str) -> None:
        """A LIST chunk before 'fmt ', between 'fmt ' and 'data', or after 'data' leaves the audio intact."""
        order = {
            "before_fmt": (LIST_INFO, _fmt(), _chunk(b"data", MONO)),
            "between": (_fmt(), LIST_INFO, _chunk(b"data", MONO)),
            "after_data": (_fmt(), _chunk(b"data", MONO), LIST_INFO),
        }[where]
        assert read_wav(_riff(*order)).pcm16 == MONO

    def test_odd_sized_chunk_padding(self) -> None:
        """An odd-sized extra chunk is followed by a pad byte that the reader skips."""
        odd = _chunk(b"junk", b"abc")
        assert len(odd) == 12  # 8 header + 3 body + 1 pad
        assert read_wav(_riff(_fmt(), odd, _chunk(b"data", MONO))).pcm16 == MONO

    def test_fact_chunk_and_long_fmt(self) -> None:
        """A 'fact' chunk and an 18-byte 'fmt ' (cbSize = 0) are accepted."""
        wav = _riff(_fmt(extension=b"\x00\x00"), _chunk(b"fact", struct.pack("<I", 6)), _chunk(b"data", MONO))
        assert read_wav(wav).pcm16 == MONO

    def test_extensible_pcm(self) -> None:
        """WAVE_FORMAT_EXTENSIBLE with the PCM sub-format GUID is read as plain PCM."""
        wav = _riff(
            _fmt(48000, channels=2, tag=0xFFFE, extension=_extensible(PCM_GUID, 2)),
            _chunk(b"data", _pcm([10, 20, 30, 40])),
        )
        assert read_wav(wav) == WavAudio(pcm16=_pcm([15, 35]), rate_hz=48000, channels=2)

    @pytest.mark.parametrize("declared_size", [0, 0xFFFFFFFF])
    @pytest.mark.parametrize("riff_size", [0, 0xFFFFFFFF])
    def test_streaming_header_sizes(self, declared_size: int, riff_size: int) -> None:
        """A 'data' size of 0 or 0xFFFFFFFF (streamed WAV) means: read to the end of the file."""
        wav = _riff(_fmt(), _chunk(b"data", MONO, declared_size=declared_size), riff_size=riff_size)
        assert read_wav(wav).pcm16 == MONO

    def test_data_size_overrunning_file_reads_to_end(self) -> None:
        """A 'data' size larger than what follows is read up to the end of the file."""
        wav = _riff(_fmt(), _chunk(b"data", MONO, declared_size=len(MONO) + 1000))
        assert read_wav(wav).pcm16 == MONO

    def test_empty_data_chunk(self) -> None:
        """A file with an empty 'data' chunk is valid and holds no samples."""
        audio = read_wav(_riff(_fmt(), _chunk(b"data", b"")))
        assert (audio.pcm16, audio.n_samples, audio.duration_ms) == (b"", 0, 0.0)

    def test_stdlib_wave_file_is_read(self) -> None:
        """A file written by the stdlib ``wave`` module reads back to the same samples and rate."""
        samples = _pcm(np.arange(-500, 500, 7))
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as writer:
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(24000)
            writer.writeframes(samples)
        assert read_wav(buffer.getvalue()) == WavAudio(pcm16=samples, rate_hz=24000, channels=1)


class TestWriter:
    @pytest.mark.parametrize(("rate_hz", "channels"), [(24000, 1), (48000, 2), (8000, 1)])
    def test_stdlib_wave_reads_what_we_write(self, rate_hz: int, channels: int) -> None:
        """write_wav's output is a valid WAV to the stdlib ``wave`` module, with the same frames."""
        pcm = _pcm(np.arange(0, 4000, 10) * channels)
        with wave.open(io.BytesIO(write_wav(pcm, rate_hz, channels))) as reader:
            shape = (reader.getframerate(), reader.getnchannels(), reader.getsampwidth())
            assert shape == (rate_hz, channels, 2)
            assert reader.readframes(reader.getnframes()) == pcm

    def test_round_trip_with_extra_chunks(self) -> None:
        """read_wav(write_wav(...)) returns the samples, also with extra chunks between 'fmt ' and 'data'."""
        pcm = _pcm([5, -5, 300, -300])
        assert read_wav(write_wav(pcm, 48000, extra_chunks=LIST_INFO)).pcm16 == pcm

    @pytest.mark.parametrize(
        ("rate_hz", "channels", "message"),
        [(48000, 0, "with 0 channels"), (48000, 9, "with 9 channels"), (0, 1, "at 0 Hz"), (10**7, 1, "at 10000000 Hz")],
    )
    def test_impossible_shape_is_rejected(self, rate_hz: int, channels: int, message: str) -> None:
        """Writing with a channel count or rate the reader would refuse raises AudioFormatError."""
        with pytest.raises(AudioFormatError, match=message):
            write_wav(b"", rate_hz, channels)

    def test_ulaw_gets_the_fact_chunk_and_reads_back(self) -> None:
        """riff_wave writes 8-bit μ-law (tag 7) with an 18-byte fmt and a fact chunk; an odd data chunk is padded."""
        ulaw = bytes(range(255))
        data = riff_wave(ulaw, rate_hz=8000, bits=8, format_tag=WAVE_FORMAT_MULAW)
        assert struct.unpack_from("<I", data, 16) == (18,)
        assert b"fact" + struct.pack("<II", 4, len(ulaw)) in data
        assert len(data) % 2 == 0
        wave_file = parse_riff(data, frozenset({WAVE_FORMAT_PCM, WAVE_FORMAT_MULAW}))
        assert (wave_file.format_tag, wave_file.bits, wave_file.data) == (WAVE_FORMAT_MULAW, 8, ulaw)

    def test_partial_frame_is_rejected(self) -> None:
        """Writing bytes that are not whole frames raises AudioFormatError."""
        with pytest.raises(AudioFormatError, match="not a whole number of 2-channel 16-bit frames"):
            write_wav(bytes(6), 48000, channels=2)


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "too short: 0 bytes"),
    "truncated header": (b"RIFF\x24\x00\x00", "too short: 7 bytes"),
    "not RIFF": (b"RIFX" + bytes(4) + b"WAVE" + _fmt() + _chunk(b"data", MONO), "not a RIFF/WAVE"),
    "not WAVE": (b"RIFF" + bytes(4) + b"AVI " + _fmt() + _chunk(b"data", MONO), "not a RIFF/WAVE"),
    "ogg": (b"OggS\x00\x02" + bytes(30), "not a RIFF/WAVE"),
    "header only": (_riff(), "no 'fmt ' chunk"),
    "no fmt": (_riff(LIST_INFO, _chunk(b"data", MONO)), "no 'fmt ' chunk"),
    "no data": (_riff(_fmt(), LIST_INFO), "no 'data' chunk"),
    "fmt too short": (_riff(_chunk(b"fmt ", bytes(14)), _chunk(b"data", MONO)), "'fmt ' chunk is 14 bytes"),
    "fmt cut by end of file": (
        _riff() + b"fmt " + struct.pack("<I", 16) + bytes(6),
        "'fmt ' chunk is 6 bytes",
    ),
    "8-bit": (_riff(_fmt(bits=8), _chunk(b"data", bytes(6))), "8 bits"),
    "24-bit": (_riff(_fmt(bits=24), _chunk(b"data", bytes(6))), "24 bits"),
    "32-bit": (_riff(_fmt(bits=32), _chunk(b"data", bytes(8))), "32 bits"),
    "float": (_riff(_fmt(bits=32, tag=3), _chunk(b"data", bytes(8))), "format tag 0x0003"),
    "mu-law": (_riff(_fmt(bits=8, tag=7), _chunk(b"data", bytes(8))), "format tag 0x0007"),
    "a-law": (_riff(_fmt(bits=8, tag=6), _chunk(b"data", bytes(8))), "format tag 0x0006"),
    "extensible float": (
        _riff(_fmt(bits=32, tag=0xFFFE, extension=_extensible(FLOAT_GUID, valid_bits=32)), _chunk(b"data", MONO)),
        "sub-format other than integer PCM",
    ),
    "extensible without GUID": (_riff(_fmt(tag=0xFFFE), _chunk(b"data", MONO)), "sub-format"),
    "zero channels": (_riff(_fmt(channels=0, block_align=0), _chunk(b"data", MONO)), "declares 0 channels"),
    "too many channels": (_riff(_fmt(channels=9), _chunk(b"data", MONO)), "declares 9 channels"),
    "zero rate": (_riff(_fmt(rate_hz=0), _chunk(b"data", MONO)), "sample rate 0 Hz"),
    "absurd rate": (_riff(_fmt(rate_hz=10_000_000), _chunk(b"data", MONO)), "sample rate 10000000 Hz"),
    "block align mismatch": (_riff(_fmt(channels=2, block_align=2), _chunk(b"data", MONO)), "block align 2"),
    "partial mono sample": (
        _riff(_fmt(), _chunk(b"data", MONO[:5])),
        "5 bytes, not a whole number of 2-byte",
    ),
    "partial stereo frame": (
        _riff(_fmt(channels=2), _chunk(b"data", MONO[:10])),
        "10 bytes, not a whole number of 4-byte",
    ),
}


class TestMalformed:
    @pytest.mark.parametrize("case", MALFORMED)
    def test_rejected_with_clear_message(self, case: str) -> None:
        """Each malformed file raises AudioFormatError whose message says what was wrong."""
        data, message = MALFORMED[case]
        with pytest.raises(AudioFormatError, match=message):
            read_wav(data)

    @settings(max_examples=200)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes either parse or raise AudioFormatError, never another exception."""
        try:
            audio = read_wav(data)
        except AudioFormatError:
            return
        assert len(audio.pcm16) % 2 == 0

    @settings(max_examples=200)
    @given(
        chunks=st.lists(
            st.tuples(
                st.sampled_from([b"fmt ", b"data", b"LIST", b"fact", b"junk", b"\x00\x00\x00\x00"]),
                st.binary(max_size=48),
                st.one_of(st.none(), st.integers(min_value=0, max_value=0xFFFFFFFF)),
            ),
            max_size=5,
        ),
        stereo=st.sampled_from(["mix", "first"]),
    )
    def test_arbitrary_chunk_soup(self, chunks: list[tuple[bytes, bytes, int | None]], stereo: str) -> None:
        """A RIFF/WAVE header then random chunks (sizes possibly lying) parses or raises AudioFormatError."""
        data = _riff(*(_chunk(chunk_id, body, size) for chunk_id, body, size in chunks))
        try:
            audio = read_wav(data, stereo="first" if stereo == "first" else "mix")
        except AudioFormatError:
            return
        assert len(audio.pcm16) % 2 == 0
        assert 1 <= audio.channels <= 8

    @settings(max_examples=200)
    @given(
        rate_hz=st.integers(min_value=0, max_value=0xFFFFFFFF),
        channels=st.integers(min_value=0, max_value=0xFFFF),
        bits=st.integers(min_value=0, max_value=0xFFFF),
        tag=st.sampled_from([0, 1, 3, 6, 7, 0xFFFE]),
        data=st.binary(max_size=64),
    )
    def test_arbitrary_fmt_fields(self, rate_hz: int, channels: int, bits: int, tag: int, data: bytes) -> None:
        """Any values in the 'fmt ' fields are either valid 16-bit PCM or an AudioFormatError."""
        align = (channels * bits // 8) & 0xFFFF
        body = struct.pack("<HHIIHH", tag, channels, rate_hz, (rate_hz * align) & 0xFFFFFFFF, align, bits)
        try:
            audio = read_wav(_riff(_chunk(b"fmt ", body), _chunk(b"data", data)))
        except AudioFormatError:
            return
        assert (tag, bits, audio.rate_hz, audio.channels) == (1, 16, rate_hz, channels)
