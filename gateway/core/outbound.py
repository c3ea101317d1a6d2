"""The agent's voice towards the caller: the one interface the call uses for outbound audio.

WAV chunk → resampled μ-law → playout buffer → decisions for Twilio (docs/audio-path.md "Outbound").
Owns the call's one outbound transcoder: each chunk is a whole WAV file whose header gives the rate
(docs/evi-protocol.md §4.2: 24 and 48 kHz both occur), so the transcoder is rebuilt (after a flush) when the
rate changes. soxr holds audio back, so the transcoder is flushed when a response ends, when the response id
changes, and when upstream audio pauses longer than the playout lead — no audio is ever stuck.

Barge-in lives here and only here (docs/audio-path.md "Barge-in"): :meth:`OutboundAudio._cut_off` is the
one place the agent is interrupted — on the upstream's ``user_interruption``, or when the caller speaks
over playout the upstream has finished generating (it sends no interruption then) — and :meth:`agent_audio`
is the one place late audio of a cut response is dropped, before it reaches the resampler.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.codecs.resample import Quality
from gateway.codecs.transcode import OutboundTranscoder
from gateway.codecs.wav import read_wav
from gateway.core.playout import MarkEcho, PlayoutBuffer, PlayoutDecision, PlayoutParams, PlayoutStats
from gateway.ids import ResponseId


@dataclass(frozen=True, slots=True)
class OutboundStats:
    """Counters of the upstream-audio side, beyond what the playout buffer counts."""

    chunks: int
    chunks_dropped_late: int
    """Chunks of a response already cut off by barge-in (docs/twilio-media-streams.md P5)."""
    responses: int
    upstream_audio_ms: float
    barge_ins: int = 0
    """Times the agent was cut off (by the upstream's interruption or by the caller talking over playout)."""
    responses_cut_over_budget: int = 0
    """Responses cut because they would pass the playout queue's bound or the audio byte budget (operations.md §4)."""


class OutboundAudio:
    """Turns upstream WAV chunks into paced playout decisions, and decides barge-in."""

    def __init__(self, params: PlayoutParams, quality: Quality = "HQ") -> None:
        self._playout = PlayoutBuffer(params)
        self._max_queued_ms = params.max_queued_ms
        self._quality: Quality = quality
        self._pause_flush_s = params.lead_ms / 1000
        self._transcoder: OutboundTranscoder | None = None
        self._current: ResponseId | None = None
        self._last_audio_s: float | None = None
        self._cut: set[ResponseId] = set()  # cut over budget (cut_current); a clear's cuts the playout knows
        self._turn_over = True
        self._turns_started = 0
        self._turns_ended = 0
        self._prompts = 0
        self._chunks = 0
        self._chunks_dropped_late = 0
        self._responses = 0
        self._upstream_audio_ms = 0.0
        self._barge_ins = 0
        self._cut_over_budget = 0

    # ------------------------------------------------------------------ the upstream's side

    def agent_audio(self, response_id: ResponseId, wav: bytes, now_s: float) -> list[PlayoutDecision]:
        """Queue one upstream chunk and release what is due. Raises AudioFormatError for a bad WAV (nothing is
        queued then). Late audio of a cut response is dropped here (docs/twilio-media-streams.md P5)."""
        # Cut by a budget, or by a clear: that cuts every response still playing, earlier ones included (their
        # audio may resume after a later one began, evi-protocol.md §3), and the playout buffer keeps track.
        if response_id in self._cut or self._playout.was_cut(response_id):
            self._chunks_dropped_late += 1
            return []
        chunk = read_wav(wav)
        if self._turn_over:
            self._turns_started += 1
        self._turn_over = False
        self._chunks += 1
        self._upstream_audio_ms += chunk.duration_ms
        if response_id != self._current:
            self._finish_current()
            self._current = response_id
            self._responses += 1
        if self._playout.queued_ms + chunk.duration_ms > self._max_queued_ms:
            # docs/operations.md §4: the queue ahead of Twilio is bounded; what is queued still plays.
            self.cut_current()
            return self.poll(now_s)
        if self._transcoder is None or self._transcoder.in_rate_hz != chunk.rate_hz:
            self._flush_into_playout()
            self._transcoder = OutboundTranscoder(chunk.rate_hz, self._quality)
        self._playout.push(response_id, self._transcoder.process(chunk.pcm16))
        self._last_audio_s = now_s
        return self.poll(now_s)

    def cut_current(self) -> None:
        """Cut the response being received without flushing Twilio: what is queued plays, the rest is dropped
        as late audio (a budget was exceeded, docs/operations.md §4)."""
        if self._current is None:
            return
        self._cut_over_budget += 1
        self._cut.add(self._current)
        if self._transcoder is not None:
            self._transcoder.reset()
        self._playout.end_response(self._current)
        self._current = None
        self._last_audio_s = None

    def agent_turn_end(self, now_s: float) -> list[PlayoutDecision]:
        """The upstream finished this turn: release the resampler tail, close the response, release what is due."""
        self._finish_current()
        self._turn_over = True
        self._turns_ended += 1
        return self.poll(now_s)

    def upstream_gone(self) -> None:
        """The upstream is closing: no more audio comes, so release the resampler tail of a cut-off response."""
        self._finish_current()
        self._turn_over = True

    def play_prompt(self, ulaw: bytes, now_s: float) -> list[PlayoutDecision]:
        """Queue a recording of the gateway's own (8 kHz μ-law), after whatever is queued, and release what is due."""
        self._finish_current()
        self._prompts += 1
        prompt = ResponseId(f"gateway-prompt-{self._prompts}")
        self._playout.push(prompt, ulaw)
        self._playout.end_response(prompt)
        return self.poll(now_s)

    # ------------------------------------------------------------------ barge-in

    def user_interrupted(self, now_s: float) -> list[PlayoutDecision]:
        """The upstream says the caller interrupted (docs/evi-protocol.md §3): cut the agent off at once."""
        return self._cut_off(now_s)

    def user_spoke(self, now_s: float) -> list[PlayoutDecision]:
        """The caller said something. Once the upstream has finished generating it sends no interruption, so a
        caller speaking over our remaining playout cuts it off here (docs/audio-path.md "Barge-in")."""
        if self._turn_over and not self._playout.idle:
            return self._cut_off(now_s)
        return []

    def _cut_off(self, now_s: float) -> list[PlayoutDecision]:
        # docs/twilio-media-streams.md P3/P5: clear Twilio's buffer at once; the cut response's late audio
        # will be dropped; the resampler's held samples belong to it and are discarded.
        self._barge_ins += 1
        self._current = None  # the clear below cuts it (was_cut)
        if self._transcoder is not None:
            self._transcoder.reset()
        self._last_audio_s = None
        if not self._turn_over:
            self._turns_ended += 1
        self._turn_over = True
        return list(self._playout.clear(now_s))

    # ------------------------------------------------------------------ Twilio's side

    def poll(self, now_s: float) -> list[PlayoutDecision]:
        """Per tick: flush the resampler after a pause, then let the playout buffer pace what is due."""
        if self._last_audio_s is not None and now_s - self._last_audio_s >= self._pause_flush_s:
            self._flush_into_playout()
            self._last_audio_s = None
        return list(self._playout.poll(now_s))

    def due(self, now_s: float) -> bool:
        """Whether ``poll(now_s)`` would do anything: flush the resampler after a pause, or release audio."""
        last_audio_s = self._last_audio_s
        if last_audio_s is not None and now_s - last_audio_s >= self._pause_flush_s:
            return True
        return self._playout.due(now_s)

    def mark_echoed(self, name: str) -> MarkEcho:
        """Twilio echoed mark ``name`` (docs/twilio-media-streams.md §1.5)."""
        return self._playout.mark_echoed(name)

    # ------------------------------------------------------------------ queries

    def echo_overdue_s(self, now_s: float) -> float:
        """How far Twilio's mark echoes have fallen behind playback (docs/operations.md §4)."""
        return self._playout.echo_overdue_s(now_s)

    @property
    def idle(self) -> bool:
        """Nothing queued or held, and everything sent has been played (its marks echoed)."""
        return self._playout.idle

    @property
    def agent_turn_over(self) -> bool:
        """No more audio of the agent's current turn is expected (it ended or was cut off)."""
        return self._turn_over

    @property
    def agent_turns(self) -> tuple[int, int]:
        """``(started, ended)``: agent turns whose audio began arriving, and turns that ended or were cut off."""
        return self._turns_started, self._turns_ended

    def statistics(self) -> OutboundStats:
        """Counters since the call began."""
        return OutboundStats(
            self._chunks,
            self._chunks_dropped_late,
            self._responses,
            self._upstream_audio_ms,
            self._barge_ins,
            self._cut_over_budget,
        )

    def playout_statistics(self) -> PlayoutStats:
        """The playout buffer's counters."""
        return self._playout.statistics()

    # ------------------------------------------------------------------ internals

    def _finish_current(self) -> None:
        self._flush_into_playout()
        if self._current is not None:
            self._playout.end_response(self._current)
            self._current = None
        self._last_audio_s = None

    def _flush_into_playout(self) -> None:
        if self._transcoder is None or self._current is None:
            return
        tail = self._transcoder.flush()
        if tail:
            self._playout.push(self._current, tail)
