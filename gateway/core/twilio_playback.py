"""A sans-I/O model of Twilio's outbound playback buffer for one Media Stream (docs/twilio-media-streams.md §2).

Twilio queues the gateway's ``media`` audio and plays it in order at real time; a ``mark`` is echoed when
playback reaches it, at once if nothing is queued before it (§1.5); ``clear`` drops everything queued and
echoes every pending mark (§2.3) — those echoes mean "flushed", not "played" (P6). When the queue runs dry
the caller hears silence: a stretch of silence between two pieces of audio, with no ``clear`` in between, is
a *gap*, and a gap shorter than a pause between turns is an *underrun* (P1).

:class:`TwilioPlayback` takes the gateway's outbound messages and advances by one frame of the media clock
per :meth:`~TwilioPlayback.play`; it returns what was heard, the echoes due and any gap that ended. It touches
no socket and reads no clock. The caller emulator, the capacity benchmark's callers,
:class:`gateway.testing.CallDriver` and the call recorder (:mod:`gateway.core.recording`) all play through it,
so they agree on what "heard" means.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.codecs.framing import FRAME_MS, ULAW_BYTES_PER_MS
from gateway.codecs.g711 import ulaw_silence
from gateway.errors import CallStateError, ConfigError
from gateway.wire.twilio_media import OutboundClear, OutboundMark, OutboundMedia

__all__ = ["UNDERRUN_GAP_MAX_MS", "MarkEcho", "Played", "PlayoutGap", "TwilioPlayback"]

UNDERRUN_GAP_MAX_MS = 400.0
"""Silence between two pieces of audio shorter than this is an underrun; longer is a pause between turns."""


class MarkEcho(NamedTuple):
    """A mark echoed back to the gateway; ``cleared`` means flushed by ``clear``, not played (§1.5, P6)."""

    name: str
    media_time_ms: float
    cleared: bool


class PlayoutGap(NamedTuple):
    """Silence heard between two pieces of gateway audio, with no ``clear`` in between."""

    start_ms: float
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Played:
    """One frame of playback: what the caller heard, and what it caused."""

    ulaw: bytes
    """``frame_ms`` of audio: the gateway's, then silence where the queue ran dry."""
    audio_bytes: int
    """How much of ``ulaw`` is the gateway's audio (the rest is padding silence)."""
    echoes: list[MarkEcho] = field(default_factory=list)
    gap: PlayoutGap | None = None
    """A gap that ended in this frame (audio resumed after silence)."""
    underrun: bool = False
    """``gap`` is shorter than the underrun limit."""


@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


class TwilioPlayback:
    """Twilio's playback buffer of one stream, on a media clock that :meth:`play` advances one frame at a time."""

    def __init__(self, frame_ms: int = FRAME_MS, underrun_gap_max_ms: float = UNDERRUN_GAP_MAX_MS) -> None:
        if frame_ms <= 0:
            raise ConfigError(f"frame_ms must be positive, got {frame_ms}")
        self.frame_ms = frame_ms
        self.underrun_gap_max_ms = underrun_gap_max_ms
        self._frame_bytes = frame_ms * ULAW_BYTES_PER_MS
        self._queue: deque[bytes | _Mark] = deque()
        self._queued_bytes = 0
        self._played_bytes = 0  # every byte played, padding included: the media clock
        self._gap_start: int | None = None
        self._audio_seen = False
        self.heard_audio_bytes = 0
        """Gateway audio played (padding and cleared audio excluded)."""
        self.cleared_bytes = 0
        """Gateway audio dropped unplayed by ``clear``."""
        self.gaps: list[PlayoutGap] = []
        self.underruns: list[PlayoutGap] = []

    @property
    def media_time_ms(self) -> float:
        """The media clock: frames played so far × ``frame_ms``."""
        return self._played_bytes / ULAW_BYTES_PER_MS

    @property
    def queued_ms(self) -> float:
        """Gateway audio waiting to be played."""
        return self._queued_bytes / ULAW_BYTES_PER_MS

    # ------------------------------------------------------------------ what the gateway sends

    def receive(self, message: OutboundMedia | OutboundMark | OutboundClear) -> list[MarkEcho]:
        """Take one gateway message; return the echoes it causes at once (a mark with nothing before it, a clear)."""
        match message:
            case OutboundMedia():
                self.media(message.ulaw)
                return []
            case OutboundMark():
                return self.mark(message.mark.name)
            case OutboundClear():
                return self.clear()

    def media(self, ulaw: bytes) -> None:
        """Queue audio behind whatever is queued (§2.1)."""
        if ulaw:
            self._queue.append(ulaw)
            self._queued_bytes += len(ulaw)

    def mark(self, name: str) -> list[MarkEcho]:
        """Queue a mark behind the audio (§2.2); with nothing queued it is echoed at once (§1.5)."""
        if self._queue:
            self._queue.append(_Mark(name))
            return []
        return [MarkEcho(name, self.media_time_ms, False)]

    def clear(self) -> list[MarkEcho]:
        """Drop the queue and echo every pending mark as flushed (§2.3). Silence after a clear is no gap."""
        echoes = []
        for item in self._queue:
            if isinstance(item, _Mark):
                echoes.append(MarkEcho(item.name, self.media_time_ms, True))
            else:
                self.cleared_bytes += len(item)
        self._queue.clear()
        self._queued_bytes = 0
        self._gap_start = None
        self._audio_seen = False
        return echoes

    # ------------------------------------------------------------------ the media clock

    def play_silence(self, n_frames: int) -> None:
        """Play ``n_frames`` with nothing queued: the same as that many :meth:`play` calls, without their frames."""
        if self._queue:
            raise CallStateError("play_silence() with audio or marks queued")
        if n_frames > 0:
            if self._audio_seen and self._gap_start is None:
                self._gap_start = self._played_bytes
            self._played_bytes += n_frames * self._frame_bytes

    def play(self) -> Played:
        """Play one frame: queued audio in order, echoing marks as playback reaches them; pad with silence."""
        frame_bytes = self._frame_bytes
        out = bytearray()
        echoes: list[MarkEcho] = []
        gap: PlayoutGap | None = None
        queue = self._queue
        while True:
            while queue and isinstance(queue[0], _Mark):
                mark = queue.popleft()
                assert isinstance(mark, _Mark)
                echoes.append(MarkEcho(mark.name, (self._played_bytes + len(out)) / ULAW_BYTES_PER_MS, False))
            if len(out) == frame_bytes or not queue:
                break
            audio = queue[0]
            assert isinstance(audio, bytes)
            take = min(frame_bytes - len(out), len(audio))
            if self._gap_start is not None:
                position = self._played_bytes + len(out)
                gap = PlayoutGap(self._gap_start / ULAW_BYTES_PER_MS, (position - self._gap_start) / ULAW_BYTES_PER_MS)
                self._gap_start = None
            out += audio[:take]
            if take == len(audio):
                queue.popleft()
            else:
                queue[0] = audio[take:]
            self._queued_bytes -= take
            self._audio_seen = True
        audio_bytes = len(out)
        self.heard_audio_bytes += audio_bytes
        if audio_bytes < frame_bytes:
            if self._audio_seen and self._gap_start is None:
                self._gap_start = self._played_bytes + audio_bytes
            out += ulaw_silence(frame_bytes - audio_bytes)
        self._played_bytes += frame_bytes
        underrun = False
        if gap is not None:
            self.gaps.append(gap)
            underrun = gap.duration_ms < self.underrun_gap_max_ms
            if underrun:
                self.underruns.append(gap)
        return Played(bytes(out), audio_bytes, echoes, gap, underrun)
