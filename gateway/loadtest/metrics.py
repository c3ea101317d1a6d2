"""Load-test metrics: what one emulated call measured, per turn and per call, and their distributions.

Owns turning a caller's :class:`~gateway.simulator.recording.CallRecord` into numbers, all on Twilio's
media clock as the caller lived it (docs/audio-path.md "Measured at the caller's ear"): response latency
from the caller's end of speech (the end of the utterance it sent) to the first agent audio heard after
it; barge-in yield from the caller starting to talk over the agent to the agent's audio stopping;
talk-over; playout gaps and underruns heard; frames the caller's uplink dropped
(twilio-media-streams.md §1.3, 31930); set-up times from the webhook POST. Percentiles are
linear-interpolated (numpy's default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.simulator.recording import CallRecord, SpeechSegment

__all__ = [
    "METRICS",
    "CallResult",
    "SetupTimes",
    "Stats",
    "TurnResult",
    "TurnTiming",
    "metric_values",
    "setup_times",
    "stats",
    "summarize",
    "turn_results",
]

_TALKING_AT_END_MS = 60.0
"""Agent audio this close before the caller's end of speech means the agent was still talking."""


@dataclass(frozen=True, slots=True)
class TurnTiming:
    """What the runner did for one turn: when the caller's utterance ran (media ms), and any note."""

    index: int
    kind: str
    dtmf: str = ""
    utterance: SpeechSegment | None = None
    note: str | None = None


@dataclass(slots=True)
class TurnResult:
    """One turn's measurements. Times are media-clock ms; ``wall_end_s`` is seconds since the run began."""

    index: int
    kind: str
    dtmf: str
    utterance_start_ms: float | None
    utterance_end_ms: float | None
    wall_end_s: float | None
    response_latency_ms: float | None
    agent_talking_at_end: bool
    barge_in_yield_ms: float | None
    barge_in_missed: bool
    barge_in_cleared: bool
    talk_over_ms: float
    underruns: int
    underrun_ms: float
    note: str | None = None


@dataclass(slots=True)
class SetupTimes:
    """Wall-clock ms from the webhook POST to ``start`` sent, to the first media frame sent, and to the
    first agent audio heard when the agent speaks first (a greeting)."""

    webhook_to_start_ms: float | None = None
    webhook_to_first_media_ms: float | None = None
    webhook_to_greeting_ms: float | None = None


@dataclass(slots=True)
class CallResult:
    """One emulated call: how it went and ended, its turns, and its audio health."""

    index: int
    scenario: str
    call_sid: str
    seed: int
    started_s: float
    ended_s: float
    ok: bool
    end: str
    """``caller_hangup``, ``gateway_closed``, ``dial_error``, ``timeout`` or ``error``."""
    failure: str | None = None
    close_code: int | None = None
    dial_stage: str | None = None
    dial_status: int | None = None
    setup: SetupTimes = field(default_factory=SetupTimes)
    turns: list[TurnResult] = field(default_factory=list)
    media_ms: float = 0.0
    heard_audio_ms: float = 0.0
    cleared_audio_ms: float = 0.0
    frames_sent: int = 0
    frames_dropped: int = 0
    max_send_delay_ms: float = 0.0
    max_tick_late_ms: float = 0.0
    underruns: int = 0
    underrun_ms: float = 0.0
    max_underrun_ms: float = 0.0
    clears: int = 0
    protocol_violations: list[str] = field(default_factory=list)
    caller_speech: list[tuple[float, float]] = field(default_factory=list)
    agent_speech: list[tuple[float, float]] = field(default_factory=list)


def _overlap_ms(start_ms: float, end_ms: float, segments: Iterable[SpeechSegment]) -> float:
    return sum(max(0.0, min(end_ms, s.end_ms) - max(start_ms, s.start_ms)) for s in segments)


def _segment_at(media_ms: float, segments: Sequence[SpeechSegment], slack_ms: float) -> SpeechSegment | None:
    """The agent segment going on at ``media_ms`` (ending no more than ``slack_ms`` before it)."""
    return next((s for s in segments if s.start_ms <= media_ms < s.end_ms + slack_ms), None)


def turn_results(
    record: CallRecord, timings: Sequence[TurnTiming], *, wall_offset_s: float | None = None
) -> list[TurnResult]:
    """Measure each turn from what the caller said and heard.

    ``wall_offset_s`` is the loop time the run began at; with it, ``wall_end_s`` places each turn's end of
    speech on the run's timeline.
    """
    agent = list(record.agent_speech_segments)
    heard_until_ms = record.media_time_ms
    starts = [t.utterance.start_ms for t in timings if t.utterance is not None]
    results: list[TurnResult] = []
    for timing in timings:
        utt = timing.utterance
        result = TurnResult(
            index=timing.index,
            kind=timing.kind,
            dtmf=timing.dtmf,
            utterance_start_ms=None if utt is None else utt.start_ms,
            utterance_end_ms=None if utt is None else utt.end_ms,
            wall_end_s=None,
            response_latency_ms=None,
            agent_talking_at_end=False,
            barge_in_yield_ms=None,
            barge_in_missed=False,
            barge_in_cleared=False,
            talk_over_ms=0.0,
            underruns=0,
            underrun_ms=0.0,
            note=timing.note,
        )
        results.append(result)
        if utt is None:
            continue
        if wall_offset_s is not None and record.media_t0_s is not None:
            result.wall_end_s = record.media_t0_s + utt.end_ms / 1000 - wall_offset_s
        next_start = min((s for s in starts if s > utt.start_ms), default=heard_until_ms)
        # docs/audio-path.md "Response latency": end of the caller's speech → first reply audio actually heard.
        ongoing = _segment_at(utt.end_ms, agent, 0.0)
        result.agent_talking_at_end = ongoing is not None and utt.end_ms - ongoing.start_ms > _TALKING_AT_END_MS
        reply = next((s for s in agent if utt.end_ms <= s.start_ms < next_start), None)
        if reply is not None:
            result.response_latency_ms = reply.start_ms - utt.end_ms
        result.talk_over_ms = _overlap_ms(utt.start_ms, utt.end_ms, agent)
        # twilio-media-streams.md P1: silence inside the agent's speech (shorter than a pause between replies)
        # is an underrun.
        window = [g for g in record.underruns if utt.end_ms <= g.start_ms < next_start]
        result.underruns = len(window)
        result.underrun_ms = sum(g.duration_ms for g in window)
        if timing.kind == "barge_in":
            spoken_over = _segment_at(utt.start_ms, agent, 0.0)
            if spoken_over is None:
                result.barge_in_missed = True
            elif spoken_over.end_ms < heard_until_ms - record.speech_merge_gap_ms:
                # docs/audio-path.md "Barge-in yield": from the caller's first word to the agent's last sound.
                result.barge_in_yield_ms = spoken_over.end_ms - utt.start_ms
                result.barge_in_cleared = any(
                    utt.start_ms <= c <= spoken_over.end_ms + record.frame_ms for c in record.clears
                )
    return results


def setup_times(record: CallRecord, first_utterance_ms: float | None) -> SetupTimes:
    """Set-up times from the record's loop-time stamps; a greeting is agent audio before the caller spoke."""
    sent = record.webhook_sent_s
    out = SetupTimes()
    if sent is None:
        return out
    if "start" in record.first_sent_s:
        out.webhook_to_start_ms = (record.first_sent_s["start"] - sent) * 1000
    if "media" in record.first_sent_s:
        out.webhook_to_first_media_ms = (record.first_sent_s["media"] - sent) * 1000
    agent = record.agent_speech_segments
    if (
        agent
        and record.media_t0_s is not None
        and (first_utterance_ms is None or agent[0].start_ms < first_utterance_ms)
    ):
        out.webhook_to_greeting_ms = (record.media_t0_s + agent[0].start_ms / 1000 - sent) * 1000
    return out


@dataclass(frozen=True, slots=True)
class Stats:
    """Distribution of one metric."""

    n: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None


def stats(values: Sequence[float]) -> Stats:
    """p50/p95/p99/max/mean of ``values`` (all None when empty)."""
    if not values:
        return Stats(0, None, None, None, None, None)
    arr = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    return Stats(len(values), p50, p95, p99, float(arr.max()), float(arr.mean()))


METRICS: dict[str, str] = {
    "response_latency_ms": "response latency (ms)",
    "barge_in_yield_ms": "barge-in yield (ms)",
    "talk_over_ms": "talk-over per turn (ms)",
    "setup_start_ms": "set-up: webhook → start (ms)",
    "setup_first_media_ms": "set-up: webhook → 1st media (ms)",
    "setup_greeting_ms": "set-up: webhook → greeting (ms)",
    "underruns": "underruns per call",
    "underrun_ms": "underrun time per call (ms)",
    "frames_dropped": "frames dropped per call",
}
"""Metric key → label, in report order."""


def metric_values(calls: Sequence[CallResult], key: str) -> list[float]:
    """Every value of metric ``key`` (see :data:`METRICS`) over the calls that were set up."""
    connected = [c for c in calls if c.end != "dial_error"]
    turns = [t for c in connected for t in c.turns]
    values: list[float | None]
    if key == "response_latency_ms":
        values = [t.response_latency_ms for t in turns]
    elif key == "barge_in_yield_ms":
        values = [t.barge_in_yield_ms for t in turns]
    elif key == "talk_over_ms":
        values = [t.talk_over_ms for t in turns if t.utterance_start_ms is not None]
    elif key == "setup_start_ms":
        values = [c.setup.webhook_to_start_ms for c in connected]
    elif key == "setup_first_media_ms":
        values = [c.setup.webhook_to_first_media_ms for c in connected]
    elif key == "setup_greeting_ms":
        values = [c.setup.webhook_to_greeting_ms for c in connected]
    elif key == "underruns":
        values = [float(c.underruns) for c in connected]
    elif key == "underrun_ms":
        values = [c.underrun_ms for c in connected]
    elif key == "frames_dropped":
        values = [float(c.frames_dropped) for c in connected]
    else:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(METRICS)}")
    return [v for v in values if v is not None]


def summarize(calls: Sequence[CallResult]) -> dict[str, Stats]:
    """:func:`stats` of every metric in :data:`METRICS`."""
    return {key: stats(metric_values(calls, key)) for key in METRICS}
