"""Turn detection for the simulated EVI agent: where the caller's utterances start and end in linear16 audio.

Owns :class:`TurnParams` (EVI's ``turn_detection`` and ``interruption`` knobs, evi-protocol.md §5) and
:class:`TurnDetector`, an energy voice-activity detector that turns audio into :data:`TurnEvent` values.
Pure: no clock and no I/O; time is the position in the audio pushed so far, so the same audio gives the
same events however it is chunked.

Detection works on fixed frames (``frame_ms``, 20 ms) counted from the first sample. A frame is speech when
its RMS level (dBFS) reaches a threshold set by ``speech_detection_threshold`` *s* (0-1):

    threshold_dbfs = max(noise_floor_dbfs + 6 + 18·s,  -60 + 20·s)

so the default 0.5 asks for 15 dB above the adaptive noise floor and never less than -50 dBFS: telephone
speech at -30 dBFS is found, μ-law silence (digital zero) and noise at -60 dBFS are not. Higher *s* is less
sensitive. Once an utterance runs, frames 3 dB under the threshold still count as speech (hysteresis).
The noise floor starts at -70 dBFS, follows quieter frames down within a few frames, creeps up 5 dB/s
through non-speech frames and 2 dB/s through speech frames (so a steady hum stops counting as speech).

An utterance starts after 60 ms of consecutive speech frames (debounce; ``SpeechStarted`` carries the start
of the first one), is reported once as ``SpeechOngoing`` when it has lasted ``min_interruption_ms``, and
ends after ``end_of_turn_silence_ms`` without a speech frame (hangover); ``SpeechEnded`` carries its audio
from ``prefix_padding_ms`` before the start to the end of its last speech frame.

An utterance is bounded: once it has lasted ``max_utterance_ms`` (30 s, the simulator's own bound; EVI
documents none) it ends at the end of that frame, with ``capped`` set, and speech that goes on starts a new
one. So the detector never holds more than ``max_utterance_ms + prefix_padding_ms`` of audio, whatever it is fed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeAlias

from gateway.codecs.levels import frame_levels_dbfs
from gateway.errors import ConfigError

__all__ = ["SpeechEnded", "SpeechOngoing", "SpeechStarted", "TurnDetector", "TurnEvent", "TurnParams"]

_SAMPLE_BYTES = 2
_START_DEBOUNCE_MS = 60
_FLOOR_INIT_DBFS = -70.0
_FLOOR_MIN_DBFS = -90.0
_FLOOR_FALL_FRACTION = 0.3
_FLOOR_RISE_QUIET_DB_PER_S = 5.0
_FLOOR_RISE_SPEECH_DB_PER_S = 2.0
_HOLD_MARGIN_DB = 3.0


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be within {low:g}-{high:g}, got {value!r}")


@dataclass(frozen=True, slots=True)
class TurnParams:
    """EVI turn-detection settings (evi-protocol.md §5), validated against EVI's documented ranges."""

    end_of_turn_silence_ms: int = 800
    speech_detection_threshold: float = 0.5
    prefix_padding_ms: int = 300
    min_interruption_ms: int = 800
    frame_ms: int = 20
    max_utterance_ms: int = 30_000
    """The longest utterance: the simulator's own bound on the audio it holds (EVI documents none)."""

    def __post_init__(self) -> None:
        # evi-protocol.md §5: silence 500-3000, threshold 0-1, padding 0-1000, interruption 50-2000.
        _check_range("end_of_turn_silence_ms", self.end_of_turn_silence_ms, 500, 3000)
        _check_range("speech_detection_threshold", self.speech_detection_threshold, 0.0, 1.0)
        _check_range("prefix_padding_ms", self.prefix_padding_ms, 0, 1000)
        _check_range("min_interruption_ms", self.min_interruption_ms, 50, 2000)
        _check_range("frame_ms", self.frame_ms, 5, 100)
        _check_range("max_utterance_ms", self.max_utterance_ms, 1000, 600_000)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """An utterance began at ``at_ms`` (start of its first speech frame); reported 60 ms later."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class SpeechOngoing:
    """The utterance has lasted ``speech_ms`` ≥ ``min_interruption_ms`` at ``at_ms``; once per utterance."""

    at_ms: float
    speech_ms: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The utterance spanning ``start_ms``-``end_ms``, with its audio from ``prefix_padding_ms`` before;
    ``capped`` when it was ended for reaching ``max_utterance_ms`` rather than by silence."""

    start_ms: float
    end_ms: float
    pcm16: bytes
    capped: bool = False


TurnEvent: TypeAlias = SpeechStarted | SpeechOngoing | SpeechEnded


class TurnDetector:
    """Feeds on linear16 mono audio of any chunk size and reports utterances as :data:`TurnEvent` lists."""

    def __init__(self, params: TurnParams, rate_hz: int) -> None:
        if rate_hz <= 0 or (rate_hz * params.frame_ms) % 1000:
            raise ConfigError(f"a {params.frame_ms} ms frame is not a whole number of samples at {rate_hz} Hz")
        self._params = params
        self._rate_hz = rate_hz
        self._frame_samples = rate_hz * params.frame_ms // 1000
        self._frame_bytes = self._frame_samples * _SAMPLE_BYTES
        self._start_frames = math.ceil(_START_DEBOUNCE_MS / params.frame_ms)
        self._end_frames = math.ceil(params.end_of_turn_silence_ms / params.frame_ms)
        self._prefix_samples = params.prefix_padding_ms * rate_hz // 1000
        self._max_samples = params.max_utterance_ms * rate_hz // 1000
        self._margin_db = 6.0 + 18.0 * params.speech_detection_threshold
        self._min_level_dbfs = -60.0 + 20.0 * params.speech_detection_threshold
        self._rise_quiet_db = _FLOOR_RISE_QUIET_DB_PER_S * params.frame_ms / 1000
        self._rise_speech_db = _FLOOR_RISE_SPEECH_DB_PER_S * params.frame_ms / 1000
        self._floor_dbfs = _FLOOR_INIT_DBFS
        self._next_frame_sample = 0
        self._pending = bytearray()
        self._clear_turn()

    def _clear_turn(self) -> None:
        self._audio = bytearray()
        self._audio_start_sample = self._next_frame_sample
        self._run_frames = 0
        self._speaking = False
        self._start_sample = 0
        self._last_speech_end_sample = 0
        self._silent_frames = 0
        self._ongoing_sent = False

    @property
    def speaking(self) -> bool:
        """True from ``SpeechStarted`` until ``SpeechEnded``."""
        return self._speaking

    @property
    def held_ms(self) -> float:
        """Audio held for the utterance in progress (with its prefix padding), or as padding for the next."""
        return self._ms(len(self._audio) // _SAMPLE_BYTES)

    @property
    def position_ms(self) -> float:
        """Duration of all whole samples pushed so far (the detector's clock)."""
        return self._ms(self._next_frame_sample + len(self._pending) // _SAMPLE_BYTES)

    def reset(self) -> None:
        """Forget the utterance in progress and any partial frame; the clock and noise floor carry on."""
        self._next_frame_sample += len(self._pending) // _SAMPLE_BYTES
        self._pending.clear()
        self._clear_turn()

    def push(self, pcm16: bytes) -> list[TurnEvent]:
        """Consume ``pcm16`` (16-bit little-endian mono, any length) and return the events it completes."""
        self._pending += pcm16
        n_frames = len(self._pending) // self._frame_bytes
        if n_frames == 0:
            return []
        whole = bytes(self._pending[: n_frames * self._frame_bytes])
        del self._pending[: n_frames * self._frame_bytes]
        levels_dbfs = frame_levels_dbfs(whole, self._frame_samples)
        events: list[TurnEvent] = []
        for index, level_dbfs in enumerate(levels_dbfs.tolist()):
            frame = whole[index * self._frame_bytes : (index + 1) * self._frame_bytes]
            self._frame(frame, level_dbfs, events)
        return events

    def _ms(self, sample: int) -> float:
        return sample * 1000.0 / self._rate_hz

    def _is_speech(self, level_dbfs: float) -> bool:
        threshold_dbfs = max(self._floor_dbfs + self._margin_db, self._min_level_dbfs)
        if self._speaking:
            threshold_dbfs -= _HOLD_MARGIN_DB
        return level_dbfs >= threshold_dbfs

    def _track_floor(self, level_dbfs: float, speech: bool) -> None:
        if level_dbfs < self._floor_dbfs:
            self._floor_dbfs += _FLOOR_FALL_FRACTION * (level_dbfs - self._floor_dbfs)
        else:
            rise_db = self._rise_speech_db if speech else self._rise_quiet_db
            self._floor_dbfs += min(level_dbfs - self._floor_dbfs, rise_db)
        self._floor_dbfs = max(self._floor_dbfs, _FLOOR_MIN_DBFS)

    def _frame(self, frame: bytes, level_dbfs: float, events: list[TurnEvent]) -> None:
        frame_start = self._next_frame_sample
        frame_end = frame_start + self._frame_samples
        self._next_frame_sample = frame_end
        self._audio += frame
        speech = self._is_speech(level_dbfs)
        self._track_floor(level_dbfs, speech)
        if self._speaking:
            self._continue_turn(speech, frame_end, events)
        elif speech:
            self._run_frames += 1
            if self._run_frames >= self._start_frames:
                self._begin_turn(frame_end, events)
        else:
            self._run_frames = 0
        if not self._speaking:
            self._trim(frame_end)

    def _begin_turn(self, frame_end: int, events: list[TurnEvent]) -> None:
        self._speaking = True
        self._start_sample = frame_end - self._run_frames * self._frame_samples
        self._last_speech_end_sample = frame_end
        self._silent_frames = 0
        self._ongoing_sent = False
        self._run_frames = 0
        events.append(SpeechStarted(at_ms=self._ms(self._start_sample)))
        self._check_ongoing(frame_end, events)

    def _continue_turn(self, speech: bool, frame_end: int, events: list[TurnEvent]) -> None:
        if speech:
            self._silent_frames = 0
            self._last_speech_end_sample = frame_end
            self._check_ongoing(frame_end, events)
        else:
            self._silent_frames += 1
        capped = frame_end - self._start_sample >= self._max_samples
        if capped or self._silent_frames >= self._end_frames:
            first = max(self._start_sample - self._prefix_samples, self._audio_start_sample)
            lo = (first - self._audio_start_sample) * _SAMPLE_BYTES
            hi = (self._last_speech_end_sample - self._audio_start_sample) * _SAMPLE_BYTES
            events.append(
                SpeechEnded(
                    start_ms=self._ms(self._start_sample),
                    end_ms=self._ms(self._last_speech_end_sample),
                    pcm16=bytes(self._audio[lo:hi]),
                    capped=capped and self._silent_frames < self._end_frames,
                )
            )
            self._speaking = False

    def _check_ongoing(self, frame_end: int, events: list[TurnEvent]) -> None:
        # evi-protocol.md §5: speech lasting min_interruption_ms during a response interrupts it.
        speech_ms = self._ms(frame_end - self._start_sample)
        if not self._ongoing_sent and speech_ms >= self._params.min_interruption_ms:
            self._ongoing_sent = True
            events.append(SpeechOngoing(at_ms=self._ms(frame_end), speech_ms=speech_ms))

    def _trim(self, frame_end: int) -> None:
        keep_from = frame_end - self._prefix_samples - self._run_frames * self._frame_samples
        drop = keep_from - self._audio_start_sample
        if drop > 0:
            del self._audio[: drop * _SAMPLE_BYTES]
            self._audio_start_sample = keep_from
