"""Recordings of a simulated call: the audio the caller says, and the record of what it heard.

Owns loading what a simulated caller says (WAV with 16-bit PCM at any rate, mono or multi-channel; WAV
with μ-law samples, format tag 7; raw ``.ulaw``/``.mulaw`` files) as 8 kHz μ-law, resampled once,
one-shot, with soxr HQ so a recording's start carries no filter delay; anything else is an
:class:`AudioFormatError` naming the file and what was wrong with it. Also owns :class:`CallRecord`, what
the caller emulator said, heard and saw during one call, measured on the media clock (including when the
agent was heard speaking, found from the heard audio as it plays), and writing heard audio back to WAV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import soxr

from gateway.codecs.framing import TWILIO_RATE_HZ, ULAW_BYTES_PER_MS
from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.codecs.levels import loud_ulaw_samples
from gateway.codecs.resample import float_to_pcm16, pcm16_to_float
from gateway.codecs.wav import WAVE_FORMAT_MULAW, WAVE_FORMAT_PCM, parse_riff, riff_wave, to_mono
from gateway.codecs.wav import write_wav as pcm16_wav
from gateway.errors import AudioFormatError
from gateway.simulator.twilio_playback import MarkEcho, PlayoutGap

__all__ = [
    "RAW_ULAW_SUFFIXES",
    "CallRecord",
    "MarkEcho",
    "PlayoutGap",
    "Received",
    "SpeechSegment",
    "load_recording",
    "ulaw_to_wav_bytes",
    "wav_to_ulaw",
    "write_stereo_wav",
    "write_ulaw_wav",
    "write_wav",
]

RAW_ULAW_SUFFIXES = (".ulaw", ".mulaw", ".ul")
_WAV_SUFFIXES = (".wav", ".wave")

from gateway.codecs.wav import StereoMode  # noqa: E402  (re-exported)


def load_recording(path: str | Path, *, stereo: StereoMode = "mix") -> bytes:
    """Read ``path`` and return its audio as 8 kHz mono μ-law (one byte per sample).

    WAV files are recognised by their RIFF header, raw μ-law by the suffix (``.ulaw``, ``.mulaw``,
    ``.ul``). Multi-channel audio is averaged (``"mix"``) or reduced to its first channel (``"first"``).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AudioFormatError(f"{p}: cannot read recording ({exc.strerror or exc})") from None
    suffix = p.suffix.lower()
    if data[:4] == b"RIFF":
        try:
            return wav_to_ulaw(data, stereo=stereo)
        except AudioFormatError as exc:
            raise AudioFormatError(f"{p}: {exc}") from None
    if suffix in RAW_ULAW_SUFFIXES:
        if not data:
            raise AudioFormatError(f"{p}: raw μ-law file is empty")
        return data
    if suffix in _WAV_SUFFIXES:
        raise AudioFormatError(f"{p}: not a RIFF/WAVE file (starts with {data[:12]!r})")
    raise AudioFormatError(
        f"{p}: unsupported recording type {suffix or '(no suffix)'!r}; "
        f"use a WAV file or raw 8 kHz μ-law ({', '.join(RAW_ULAW_SUFFIXES)})"
    )


def wav_to_ulaw(data: bytes, *, stereo: StereoMode = "mix") -> bytes:
    """Convert a whole WAV file (16-bit PCM or μ-law, any rate and channel count) to 8 kHz mono μ-law."""
    wave_file = parse_riff(data, frozenset({WAVE_FORMAT_PCM, WAVE_FORMAT_MULAW}))
    channels, samples = wave_file.channels, wave_file.data
    if not samples:
        raise AudioFormatError("WAV 'data' chunk is empty")
    if wave_file.format_tag == WAVE_FORMAT_MULAW:
        if wave_file.bits != 8 or wave_file.block_align != channels:
            raise AudioFormatError(f"μ-law WAV must have 8-bit samples, got {wave_file.bits} bits")
        if channels == 1 and wave_file.rate_hz == TWILIO_RATE_HZ:
            return samples
        pcm16 = ulaw_to_pcm16(samples)
    else:
        if wave_file.bits != 16:
            raise AudioFormatError(f"WAV sample width is {wave_file.bits} bits; only 16-bit PCM is supported")
        if wave_file.block_align != 2 * channels:
            raise AudioFormatError(f"WAV block align {wave_file.block_align} does not match {channels} x 16-bit")
        pcm16 = samples
    mono = to_mono(pcm16, channels, stereo)
    if wave_file.rate_hz != TWILIO_RATE_HZ:
        resampled = soxr.resample(pcm16_to_float(mono), wave_file.rate_hz, TWILIO_RATE_HZ, quality="HQ")
        mono = float_to_pcm16(np.asarray(resampled, dtype=np.float32))
    return pcm16_to_ulaw(mono)


def write_wav(path: str | Path, pcm16: bytes, rate_hz: int, channels: int = 1) -> None:
    """Write 16-bit little-endian PCM to ``path`` as a WAV file."""
    Path(path).write_bytes(pcm16_wav(pcm16, rate_hz, channels))


def write_stereo_wav(path: str | Path, left_ulaw: bytes, right_ulaw: bytes) -> None:
    """Two 8 kHz μ-law tracks → one 16-bit stereo WAV; the shorter track is padded with silence."""
    n = max(len(left_ulaw), len(right_ulaw))
    stereo = np.zeros((n, 2), dtype="<i2")
    stereo[: len(left_ulaw), 0] = np.frombuffer(ulaw_to_pcm16(left_ulaw), dtype="<i2")
    stereo[: len(right_ulaw), 1] = np.frombuffer(ulaw_to_pcm16(right_ulaw), dtype="<i2")
    write_wav(path, stereo.tobytes(), TWILIO_RATE_HZ, channels=2)


def ulaw_to_wav_bytes(ulaw: bytes, *, keep_ulaw: bool = False) -> bytes:
    """8 kHz μ-law → a WAV file in memory: 16-bit PCM (plays anywhere), or μ-law samples (tag 7, lossless)."""
    if keep_ulaw:
        return riff_wave(ulaw, rate_hz=TWILIO_RATE_HZ, bits=8, format_tag=WAVE_FORMAT_MULAW)
    return pcm16_wav(ulaw_to_pcm16(ulaw), TWILIO_RATE_HZ)


def write_ulaw_wav(path: str | Path, ulaw: bytes, *, keep_ulaw: bool = False) -> None:
    """Save 8 kHz μ-law (e.g. ``CallRecord.heard_ulaw``) as a WAV file at ``path``."""
    Path(path).write_bytes(ulaw_to_wav_bytes(ulaw, keep_ulaw=keep_ulaw))


class Received(NamedTuple):
    """A frame from the gateway: when (media clock), what, and its audio bytes or mark name."""

    media_time_ms: float
    kind: Literal["media", "mark", "clear", "invalid"]
    detail: int | str


class SpeechSegment(NamedTuple):
    """A stretch of speech on the media clock, ``start_ms`` inclusive to ``end_ms`` exclusive."""

    start_ms: float
    end_ms: float

    @property
    def duration_ms(self) -> float:
        """``end_ms - start_ms``."""
        return self.end_ms - self.start_ms


@dataclass
class CallRecord:
    """Everything the caller did, said and heard; live during the call. Times are media-clock ms."""

    frame_ms: int
    speech_threshold: int = 300
    """Heard samples louder than this (linear16 magnitude) count as agent speech."""
    speech_merge_gap_ms: float = 120.0
    """Agent speech separated by at most this much quiet is one segment."""
    webhook_params: dict[str, str] = field(default_factory=dict)
    webhook_status: int | None = None
    twiml: str | None = None
    twiml_before_connect: list[str] = field(default_factory=list)
    twiml_after_connect: list[str] = field(default_factory=list)
    stream_attributes: dict[str, str] = field(default_factory=dict)
    stream_url: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    redirect_twiml: str | None = None
    """TwiML a REST update moved the call to (the fake REST endpoint sets it; the stream then ends)."""
    sent_events: list[str] = field(default_factory=list)
    sent_ulaw: bytearray = field(default_factory=bytearray)
    heard_ulaw: bytearray = field(default_factory=bytearray)
    received: list[Received] = field(default_factory=list)
    marks_echoed: list[MarkEcho] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    protocol_violations: list[str] = field(default_factory=list)
    playout_gaps: list[PlayoutGap] = field(default_factory=list)
    underruns: list[PlayoutGap] = field(default_factory=list)
    """The gaps that are underruns by the playback model (gateway.simulator.twilio_playback)."""
    heard_audio_samples: int = 0
    cleared_audio_samples: int = 0
    close_code: int | None = None
    closed_by: Literal["caller", "gateway"] | None = None
    agent_speech_segments: list[SpeechSegment] = field(default_factory=list)
    """Loud heard audio, merged over gaps up to ``speech_merge_gap_ms``; the last one grows while heard."""
    caller_utterances: list[SpeechSegment] = field(default_factory=list)
    """Audio queued with ``TwilioCaller.speak``: where each piece starts and ends in what the caller said."""
    media_frames_sent: int = 0
    dropped_frames_ms: list[int] = field(default_factory=list)
    """``media.timestamp`` of every frame withheld by injected loss (31930-style discards)."""
    max_send_delay_ms: float = 0.0
    """Largest injected delay of a media frame past its tick (jitter and bursts, order kept)."""
    max_tick_late_ms: float = 0.0
    """Largest lateness of the caller's own 20 ms ticker (a busy load generator shows here)."""
    webhook_sent_s: float | None = None
    """Event-loop (monotonic) time of the webhook POST; the other ``*_s`` fields use the same clock."""
    stream_open_s: float | None = None
    media_t0_s: float | None = None
    """Loop time of media-clock 0 (the first tick)."""
    first_sent_s: dict[str, float] = field(default_factory=dict)
    """Loop time each kind of frame (``start``, ``media``, ``dtmf``…) first went onto the socket."""

    @property
    def media_time_ms(self) -> float:
        """The media clock: ticks played so far × ``frame_ms``."""
        return len(self.heard_ulaw) / ULAW_BYTES_PER_MS

    @property
    def heard_audio_ms(self) -> float:
        """Gateway audio actually played to the caller (excludes padding silence and cleared audio)."""
        return self.heard_audio_samples / ULAW_BYTES_PER_MS

    @property
    def cleared_audio_ms(self) -> float:
        """Gateway audio dropped unplayed by ``clear``."""
        return self.cleared_audio_samples / ULAW_BYTES_PER_MS

    @property
    def underrun_ms(self) -> float:
        """Silence inside a stretch of speech: the underruns' total (twilio-media-streams.md P1)."""
        return sum(g.duration_ms for g in self.underruns)

    @property
    def frames_dropped(self) -> int:
        """Media frames the caller withheld by injected loss."""
        return len(self.dropped_frames_ms)

    def append_heard(self, frame_ulaw: bytes) -> None:
        """Play ``frame_ulaw`` at the end of what was heard, extending the agent speech segments."""
        base = len(self.heard_ulaw)
        self.heard_ulaw += frame_ulaw
        loud = loud_ulaw_samples(frame_ulaw, self.speech_threshold)
        if loud.size == 0:
            return
        start_ms = (base + int(loud[0])) / ULAW_BYTES_PER_MS
        end_ms = (base + int(loud[-1]) + 1) / ULAW_BYTES_PER_MS
        segments = self.agent_speech_segments
        if segments and start_ms - segments[-1].end_ms <= self.speech_merge_gap_ms:
            segments[-1] = SpeechSegment(segments[-1].start_ms, end_ms)
        else:
            segments.append(SpeechSegment(start_ms, end_ms))

    @property
    def agent_speaking(self) -> bool:
        """Agent speech was heard within the last ``speech_merge_gap_ms`` of the media clock."""
        segments = self.agent_speech_segments
        return bool(segments) and self.media_time_ms - segments[-1].end_ms <= self.speech_merge_gap_ms

    def agent_speech_after(self, media_time_ms: float) -> SpeechSegment | None:
        """The first agent speech segment still going on or starting after ``media_time_ms``."""
        return next((s for s in self.agent_speech_segments if s.end_ms > media_time_ms), None)

    @property
    def agent_quiet_ms(self) -> float:
        """How long no agent speech has been heard (since the call began, if never)."""
        last_ms = self.agent_speech_segments[-1].end_ms if self.agent_speech_segments else 0.0
        return max(0.0, self.media_time_ms - last_ms)

    def heard_between(self, start_ms: float, end_ms: float) -> bytes:
        """The μ-law the caller heard from ``start_ms`` to ``end_ms`` on the media clock."""
        return bytes(self.heard_ulaw[_sample_index(start_ms) : _sample_index(end_ms)])

    def first_heard_ms_after(self, media_time_ms: float, *, threshold: int = 0) -> float | None:
        """Media time of the first heard sample louder than ``threshold`` (linear16) at or after a time."""
        start = _sample_index(media_time_ms)
        loud = loud_ulaw_samples(bytes(self.heard_ulaw[start:]), threshold)
        return None if loud.size == 0 else (start + int(loud[0])) / ULAW_BYTES_PER_MS

    def last_heard_ms(self, *, threshold: int = 0) -> float | None:
        """Media time just after the last heard sample louder than ``threshold``."""
        loud = loud_ulaw_samples(bytes(self.heard_ulaw), threshold)
        return None if loud.size == 0 else (int(loud[-1]) + 1) / ULAW_BYTES_PER_MS


def _sample_index(media_time_ms: float) -> int:
    return max(0, math.ceil(media_time_ms * ULAW_BYTES_PER_MS))
