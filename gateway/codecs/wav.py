"""Reader for the WAV files EVI sends in each ``audio_output``, and the package's one WAV writer.

evi-protocol.md §4.2: every ``audio_output.data`` is a complete WAV file (RIFF header + 16-bit PCM); the
sample rate is documented as 48 kHz but 24 kHz is observed, so the rate and channel count always come from
the header. Chunks are walked properly (no fixed 44-byte slice), so extra RIFF chunks (LIST, fact, …) are
skipped. Anything but 16-bit PCM is an :class:`AudioFormatError` with a message saying what was found.
Every WAV the package writes (the simulator's ``audio_output``, call recordings, test files) is built by
:func:`riff_wave`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gateway.errors import AudioFormatError

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
MIN_RATE_HZ = 8000
MAX_RATE_HZ = 192000
MAX_CHANNELS = 8
_FORMAT_NAMES = {WAVE_FORMAT_PCM: "integer PCM", WAVE_FORMAT_MULAW: "μ-law"}

StereoMode = Literal["mix", "first"]


@dataclass(frozen=True, slots=True)
class WavAudio:
    """Mono 16-bit little-endian PCM cut out of a WAV file, with what the header said."""

    pcm16: bytes
    rate_hz: int
    channels: int

    @property
    def n_samples(self) -> int:
        """Mono samples in ``pcm16``."""
        return len(self.pcm16) // 2

    @property
    def duration_ms(self) -> float:
        """Duration of the audio in milliseconds."""
        return self.n_samples * 1000 / self.rate_hz

    def __repr__(self) -> str:
        return f"WavAudio({len(self.pcm16)} bytes, {self.rate_hz} Hz, {self.channels} ch)"


@dataclass(frozen=True, slots=True)
class RiffWave:
    """The ``fmt `` fields and the ``data`` bytes of a RIFF/WAVE file, before any sample decoding."""

    format_tag: int
    channels: int
    rate_hz: int
    block_align: int
    bits: int
    data: bytes

    def __repr__(self) -> str:
        return f"RiffWave(tag {self.format_tag:#06x}, {self.channels} ch, {self.rate_hz} Hz, {len(self.data)} bytes)"


def parse_riff(data: bytes, formats: frozenset[int] = frozenset({WAVE_FORMAT_PCM})) -> RiffWave:
    """Walk a WAV file's chunks (extra chunks skipped, word alignment honoured); accept only ``formats``.

    A ``data`` chunk whose declared size overruns the file (streamed WAVs write 0 or 0xFFFFFFFF) is read to
    the end of the file; a trailing partial sample frame is an error.
    """
    if len(data) < 12:
        raise AudioFormatError(f"WAV too short: {len(data)} bytes, need at least a 12-byte RIFF header")
    if data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError(f"not a RIFF/WAVE file (starts with {data[:12]!r})")
    fmt: tuple[int, int, int, int, int] | None = None
    samples: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body_start = pos + 8
        if chunk_id == b"data":
            body_end = len(data) if size in (0, 0xFFFFFFFF) or body_start + size > len(data) else body_start + size
            samples = data[body_start:body_end]
            if fmt is not None:
                break
        elif chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body_start : body_start + size], formats)
        pos = body_start + size + (size & 1)  # RIFF chunks are word-aligned
    if fmt is None:
        raise AudioFormatError("WAV has no 'fmt ' chunk before its end")
    if samples is None:
        raise AudioFormatError("WAV has no 'data' chunk")
    tag, rate_hz, channels, block_align, bits = fmt
    if block_align <= 0 or len(samples) % block_align:
        raise AudioFormatError(f"WAV data is {len(samples)} bytes, not a whole number of {block_align}-byte frames")
    return RiffWave(tag, channels, rate_hz, block_align, bits, samples)


def read_wav(data: bytes, stereo: StereoMode = "mix") -> WavAudio:
    """Parse a whole 16-bit PCM WAV file; return its audio as mono linear16.

    Multi-channel audio is averaged (``"mix"``) or reduced to its first channel (``"first"``).
    """
    wave = parse_riff(data)
    if wave.bits != 16:
        raise AudioFormatError(f"WAV sample width is {wave.bits} bits; only 16-bit PCM is supported")
    if wave.block_align != 2 * wave.channels:
        raise AudioFormatError(
            f"WAV block align {wave.block_align} does not match {wave.channels} channel(s) of 16 bits"
        )
    return WavAudio(pcm16=to_mono(wave.data, wave.channels, stereo), rate_hz=wave.rate_hz, channels=wave.channels)


def _parse_fmt(body: bytes, formats: frozenset[int]) -> tuple[int, int, int, int, int]:
    if len(body) < 16:
        raise AudioFormatError(f"WAV 'fmt ' chunk is {len(body)} bytes, need 16")
    tag, channels, rate_hz, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        (sub_tag,) = struct.unpack_from("<H", body, 24) if len(body) >= 40 else (0,)
        if sub_tag not in formats or body[26:28] != b"\x00\x00":
            raise AudioFormatError("WAV extensible format with a sub-format other than integer PCM")
        tag = sub_tag
    elif tag not in formats:
        names = ", ".join(f"{_FORMAT_NAMES.get(t, 'format')} ({t:#06x})" for t in sorted(formats))
        raise AudioFormatError(f"WAV format tag {tag:#06x}; only {names} is supported")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioFormatError(f"WAV declares {channels} channels")
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise AudioFormatError(f"WAV sample rate {rate_hz} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
    return tag, rate_hz, channels, block_align, bits


def to_mono(pcm: bytes, channels: int, stereo: StereoMode = "mix") -> bytes:
    """Interleaved 16-bit PCM → mono, by averaging the channels (``"mix"``) or keeping the first."""
    if channels == 1:
        return pcm
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    if stereo == "first":
        return frames[:, 0].tobytes()
    mixed = frames.astype(np.int32).sum(axis=1) // channels
    return bytes(mixed.astype("<i2").tobytes())


def riff_chunk(chunk_id: bytes, body: bytes) -> bytes:
    """One RIFF chunk: its four-byte id, little-endian size and body, padded to a whole word."""
    return chunk_id + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def riff_wave(
    data: bytes,
    *,
    rate_hz: int,
    channels: int = 1,
    bits: int = 16,
    format_tag: int = WAVE_FORMAT_PCM,
    extra_chunks: bytes = b"",
) -> bytes:
    """A complete RIFF/WAVE file around ``data`` (samples already in ``format_tag``'s coding).

    A format other than PCM gets the 18-byte ``fmt `` and the ``fact`` chunk (samples per channel) the
    format requires; ``extra_chunks`` (whole chunks, see :func:`riff_chunk`) go just before ``data``.
    """
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioFormatError(f"cannot write a WAV with {channels} channels (1-{MAX_CHANNELS})")
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise AudioFormatError(f"cannot write a WAV at {rate_hz} Hz ({MIN_RATE_HZ}-{MAX_RATE_HZ} Hz)")
    block_align = channels * bits // 8
    if len(data) % block_align:
        raise AudioFormatError(f"{len(data)} bytes is not a whole number of {channels}-channel {bits}-bit frames")
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate_hz, rate_hz * block_align, block_align, bits)
    if format_tag != WAVE_FORMAT_PCM:
        fmt += struct.pack("<H", 0)  # cbSize: no extension
        extra_chunks = riff_chunk(b"fact", struct.pack("<I", len(data) // block_align)) + extra_chunks
    body = b"WAVE" + riff_chunk(b"fmt ", fmt) + extra_chunks + riff_chunk(b"data", data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_wav(pcm16: bytes, rate_hz: int, channels: int = 1, extra_chunks: bytes = b"") -> bytes:
    """Build a complete WAV file around 16-bit PCM (``extra_chunks`` go between 'fmt ' and 'data')."""
    return riff_wave(pcm16, rate_hz=rate_hz, channels=channels, extra_chunks=extra_chunks)
