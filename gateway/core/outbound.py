"""Upstream audio → the caller: WAV chunk → resampled μ-law → playout buffer (DESIGN.md "Audio decisions").

Owns the call's one outbound transcoder. evi-protocol.md §4.2: each chunk is a whole WAV file whose header
gives the rate (24 or 48 kHz both occur), so the transcoder is rebuilt (after a flush) if the rate changes.
audio-path-baseline.md: soxr holds audio back, so the transcoder is flushed when a response ends, when the
response id changes, and when upstream audio pauses longer than the playout lead — no audio is ever stuck.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.codecs.resample import Quality
from gateway.codecs.transcode import OutboundTranscoder
from gateway.codecs.wav import read_wav
from gateway.core.playout import PlayoutBuffer, PlayoutParams, SendClear, SendMark, SendMedia
from gateway.ids import ResponseId

_REMEMBERED_INTERRUPTED_IDS = 64


@dataclass(frozen=True, slots=True)
class OutboundStats:
    """Counters of the upstream-audio side, beyond what the playout buffer counts."""

    chunks: int
    chunks_dropped_late: int
    responses: int
    upstream_audio_ms: float


class OutboundAudio:
    """Turns upstream WAV chunks into paced playout decisions."""

    def __init__(self, params: PlayoutParams, quality: Quality = "HQ") -> None:
        self.playout = PlayoutBuffer(params)
        self._quality: Quality = quality
        self._pause_flush_s = params.lead_ms / 1000
        self._transcoder: OutboundTranscoder | None = None
        self._current: ResponseId | None = None
        self._last_audio_s: float | None = None
        self._interrupted: deque[ResponseId] = deque(maxlen=_REMEMBERED_INTERRUPTED_IDS)
        self._chunks = 0
        self._chunks_dropped_late = 0
        self._responses = 0
        self._upstream_audio_ms = 0.0

    @property
    def current_response(self) -> ResponseId | None:
        """The response whose audio is being received, if any."""
        return self._current

    def audio(self, response_id: ResponseId, wav: bytes, now_s: float) -> None:
        """Queue one upstream chunk. Raises AudioFormatError for a bad WAV (nothing is queued then)."""
        if response_id in self._interrupted:
            # twilio-media-streams.md P5: late audio of an interrupted response is dropped.
            self._chunks_dropped_late += 1
            return
        chunk = read_wav(wav)
        self._chunks += 1
        self._upstream_audio_ms += chunk.duration_ms
        if response_id != self._current:
            self._finish_current()
            self._current = response_id
            self._responses += 1
        if self._transcoder is None or self._transcoder.in_rate_hz != chunk.rate_hz:
            self._flush_into_playout()
            self._transcoder = OutboundTranscoder(chunk.rate_hz, self._quality)
        self.playout.push(response_id, self._transcoder.process(chunk.pcm16))
        self._last_audio_s = now_s

    def turn_end(self) -> None:
        """The upstream finished this turn: release the resampler tail and close the response."""
        self._finish_current()

    def interrupt(self, now_s: float) -> list[SendClear]:
        """Barge-in: drop queued and held audio; late chunks of the cut response will be dropped."""
        if self._current is not None:
            self._interrupted.append(self._current)
            self._current = None
        if self._transcoder is not None:
            self._transcoder.reset()
        return self.playout.clear(now_s)

    def poll(self, now_s: float) -> list[SendMedia | SendMark]:
        """Per tick: flush the resampler after a pause, then let the playout buffer pace what is due."""
        if self._last_audio_s is not None and now_s - self._last_audio_s >= self._pause_flush_s:
            self._flush_into_playout()
            self._last_audio_s = None
        return self.playout.poll(now_s)

    def statistics(self) -> OutboundStats:
        """Counters since the call began."""
        return OutboundStats(self._chunks, self._chunks_dropped_late, self._responses, self._upstream_audio_ms)

    def _finish_current(self) -> None:
        self._flush_into_playout()
        if self._current is not None:
            self.playout.end_response(self._current)
            self._current = None
        self._last_audio_s = None

    def _flush_into_playout(self) -> None:
        if self._transcoder is None or self._current is None:
            return
        tail = self._transcoder.flush()
        if tail:
            self.playout.push(self._current, tail)
