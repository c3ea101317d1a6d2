"""Caller audio continuity: gap fill by Twilio's media clock; the pre-roll held while the upstream connects.

Twilio → gateway is one TCP stream, so frames never arrive reordered; but Twilio discards caller audio
when the path is congested (warning 31930), and a buggy peer may repeat or rewind frames
(twilio-media-streams.md §1.3, P11). :class:`InboundStream` judges each frame by its ``media.timestamp``
and ``media.chunk`` and tells the core to forward it (after so many ms of silence) or drop it; it never
touches the audio itself. :class:`PreRoll` keeps the newest few seconds of decoded caller audio until the
upstream is ready (state ``CONNECTING_UPSTREAM``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from gateway.codecs.framing import ULAW_BYTES_PER_MS
from gateway.errors import CallStateError, ConfigError

InboundReason = Literal["first", "continuous", "gap", "duplicate", "stale", "empty", "resync"]
"""Why a frame was forwarded (``first``, ``continuous``, ``gap``) or dropped (the others)."""


@dataclass(frozen=True, slots=True)
class InboundParams:
    """How the caller's stream is judged."""

    max_gap_fill_ms: int = 1000
    """Longest gap filled with silence; the rest of a longer gap is counted as unfilled."""
    tolerance_ms: int = 10
    """Timestamp jitter around the expected position that is neither a gap nor stale."""
    resync_after_stale_frames: int = 25
    """After this many stale frames in a row the stream follows the peer's new timeline (500 ms at 20 ms)."""

    def __post_init__(self) -> None:
        if self.max_gap_fill_ms < 0:
            raise ConfigError(f"max_gap_fill_ms must be >= 0, got {self.max_gap_fill_ms}")
        if self.tolerance_ms < 0:
            raise ConfigError(f"tolerance_ms must be >= 0, got {self.tolerance_ms}")
        if self.resync_after_stale_frames < 1:
            raise ConfigError(f"resync_after_stale_frames must be >= 1, got {self.resync_after_stale_frames}")


@dataclass(frozen=True, slots=True)
class InboundVerdict:
    """What to do with one caller frame: forward it (after ``fill_ms`` of silence) or drop it."""

    action: Literal["forward", "drop"]
    fill_ms: int
    reason: InboundReason


# The verdicts without a fill, built once: judging a frame (50 a second per call) allocates nothing.
_CONTINUOUS = InboundVerdict("forward", 0, "continuous")
_FIRST = InboundVerdict("forward", 0, "first")
_RESYNC = InboundVerdict("forward", 0, "resync")
_EMPTY = InboundVerdict("drop", 0, "empty")
_DUPLICATE = InboundVerdict("drop", 0, "duplicate")
_STALE = InboundVerdict("drop", 0, "stale")


@dataclass(frozen=True, slots=True)
class InboundStats:
    """Counters of the caller's stream since the call began."""

    frames_forwarded: int
    frames_dropped_duplicate: int
    frames_dropped_stale: int
    frames_empty: int
    gaps: int
    gap_ms_filled: int
    gap_ms_unfilled: int
    audio_ms_forwarded: float
    """Caller audio forwarded, silence fill included."""
    chunks_skipped: int
    """Informational: whether ``chunk`` skips when Twilio discards audio is unconfirmed (§1.3, §8)."""
    last_timestamp_ms: int | None
    resyncs: int = 0
    """Times the peer's timestamps jumped backwards for good and the stream followed them."""


class InboundStream:
    """Judges caller frames by Twilio's media clock (``media.timestamp``, ms) and ``media.chunk``."""

    def __init__(self, params: InboundParams = InboundParams()) -> None:
        self._params = params
        self._tolerance_samples = params.tolerance_ms * ULAW_BYTES_PER_MS
        self._last_timestamp_ms: int | None = None
        self._last_chunk = 0
        # Positions are kept in 8 kHz samples (one μ-law byte each), so odd frame sizes stay exact.
        self._expected_next_samples = 0
        self._forwarded = 0
        self._duplicate = 0
        self._stale = 0
        self._stale_run = 0
        self._resyncs = 0
        self._empty = 0
        self._gaps = 0
        self._gap_ms_filled = 0
        self._gap_ms_unfilled = 0
        self._samples_forwarded = 0
        self._chunks_skipped = 0

    @property
    def params(self) -> InboundParams:
        """The parameters this stream was built with."""
        return self._params

    def accept(self, timestamp_ms: int, chunk: int, n_bytes: int) -> InboundVerdict:
        """Judge one ``media`` frame of ``n_bytes`` μ-law bytes; the caller acts on the verdict."""
        if n_bytes < 0:
            raise CallStateError(f"n_bytes of a caller frame must be >= 0, got {n_bytes}")
        if n_bytes == 0:
            self._empty += 1
            return _EMPTY
        timestamp_samples = timestamp_ms * ULAW_BYTES_PER_MS
        if self._last_timestamp_ms is None:
            self._take(timestamp_ms, chunk, n_bytes, fill_ms=0)
            return _FIRST
        if timestamp_ms == self._last_timestamp_ms or chunk == self._last_chunk:
            self._duplicate += 1
            return _DUPLICATE
        gap_samples = timestamp_samples - self._expected_next_samples
        if gap_samples > self._tolerance_samples:
            # §1.3, warning 31930: Twilio discarded audio; keep the caller's timeline by filling silence.
            gap_ms = gap_samples // ULAW_BYTES_PER_MS
            fill_ms = min(gap_ms, self._params.max_gap_fill_ms)
            self._gaps += 1
            self._gap_ms_filled += fill_ms
            self._gap_ms_unfilled += gap_ms - fill_ms
            self._take(timestamp_ms, chunk, n_bytes, fill_ms)
            return InboundVerdict("forward", fill_ms, "gap")
        if gap_samples < -self._tolerance_samples:
            self._stale_run += 1
            if self._stale_run < self._params.resync_after_stale_frames:
                self._stale += 1
                return _STALE
            # A peer whose clock jumped backwards for good: follow its new timeline rather than drop forever.
            self._resyncs += 1
            self._take(timestamp_ms, chunk, n_bytes, fill_ms=0)
            return _RESYNC
        self._take(timestamp_ms, chunk, n_bytes, fill_ms=0)
        return _CONTINUOUS

    def statistics(self) -> InboundStats:
        """A snapshot of the counters."""
        return InboundStats(
            frames_forwarded=self._forwarded,
            frames_dropped_duplicate=self._duplicate,
            frames_dropped_stale=self._stale,
            frames_empty=self._empty,
            gaps=self._gaps,
            gap_ms_filled=self._gap_ms_filled,
            gap_ms_unfilled=self._gap_ms_unfilled,
            audio_ms_forwarded=self._samples_forwarded / ULAW_BYTES_PER_MS,
            chunks_skipped=self._chunks_skipped,
            last_timestamp_ms=self._last_timestamp_ms,
            resyncs=self._resyncs,
        )

    def _take(self, timestamp_ms: int, chunk: int, n_bytes: int, fill_ms: int) -> None:
        if self._last_timestamp_ms is not None and chunk > self._last_chunk + 1:
            self._chunks_skipped += chunk - self._last_chunk - 1
        self._last_timestamp_ms = timestamp_ms
        self._last_chunk = chunk
        self._stale_run = 0
        self._expected_next_samples = timestamp_ms * ULAW_BYTES_PER_MS + n_bytes
        self._forwarded += 1
        self._samples_forwarded += n_bytes + fill_ms * ULAW_BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class PreRollStats:
    """What the pre-roll holds now and what it has dropped since it was made."""

    held_ms: float
    dropped_ms: float
    chunks_held: int


_PCM16_SAMPLE_BYTES = 2
_MS_EPSILON = 1e-9


class PreRoll:
    """Bounded FIFO of decoded caller audio (16-bit PCM) kept while the upstream connects.

    When more than ``capacity_ms`` is held the oldest audio goes first, so the upstream later hears the
    newest ``capacity_ms`` of what the caller said.
    """

    def __init__(self, capacity_ms: int) -> None:
        if capacity_ms < 0:
            raise ConfigError(f"pre-roll capacity_ms must be >= 0, got {capacity_ms}")
        self._capacity_ms = capacity_ms
        self._chunks: deque[tuple[bytes, float]] = deque()
        self._held_ms = 0.0
        self._dropped_ms = 0.0

    @property
    def capacity_ms(self) -> int:
        """Most audio held at once."""
        return self._capacity_ms

    def push(self, pcm16: bytes, duration_ms: float) -> None:
        """Append one chunk lasting ``duration_ms``; trim the oldest audio beyond the capacity."""
        if not duration_ms >= 0 or math.isinf(duration_ms):
            raise CallStateError(f"pre-roll duration_ms must be finite and >= 0, got {duration_ms}")
        if not pcm16:
            return
        self._chunks.append((pcm16, duration_ms))
        self._held_ms += duration_ms
        while self._chunks and self._held_ms > self._capacity_ms + _MS_EPSILON:
            self._trim_oldest(self._held_ms - self._capacity_ms)
        if not self._chunks:
            self._held_ms = 0.0

    def drain(self) -> list[bytes]:
        """Everything held, oldest first; the pre-roll is empty afterwards."""
        out = [data for data, _ in self._chunks]
        self._chunks.clear()
        self._held_ms = 0.0
        return out

    def statistics(self) -> PreRollStats:
        """A snapshot: audio held now, audio dropped so far."""
        return PreRollStats(held_ms=self._held_ms, dropped_ms=self._dropped_ms, chunks_held=len(self._chunks))

    def _trim_oldest(self, excess_ms: float) -> None:
        data, duration_ms = self._chunks[0]
        if duration_ms <= excess_ms + _MS_EPSILON:
            self._chunks.popleft()
            self._held_ms -= duration_ms
            self._dropped_ms += duration_ms
            return
        # Cut the oldest chunk's head on a whole-sample boundary, never dropping less than the excess.
        bytes_per_ms = len(data) / duration_ms
        cut_samples = math.ceil(excess_ms * bytes_per_ms / _PCM16_SAMPLE_BYTES - _MS_EPSILON)
        cut_bytes = min(len(data), cut_samples * _PCM16_SAMPLE_BYTES)
        cut_ms = duration_ms if cut_bytes == len(data) else cut_bytes / bytes_per_ms
        if cut_bytes == len(data):
            self._chunks.popleft()
        else:
            self._chunks[0] = (data[cut_bytes:], duration_ms - cut_ms)
        self._held_ms -= cut_ms
        self._dropped_ms += cut_ms
