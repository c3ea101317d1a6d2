"""The outbound playout buffer: what upstream audio goes to Twilio, when, and what the caller has heard.

This is the gateway's real jitter buffer. Upstream audio, already 8 kHz μ-law, arrives faster than real
time; the buffer keeps it as a FIFO of ``frame_ms`` frames tagged ``(response id, generation)``, releases it
so that Twilio holds only a small lead over real time (twilio-media-streams.md P1), coalesces frames into
media messages each followed by a uniquely named mark (§2.2, P14), maps mark echoes back to audio actually
played (P4c, P6), and on ``clear`` drops what it holds and starts a new generation (P3, P5); deciding when to
clear is the outbound side's. Like aiortc's jitter buffer (docs/audio-path.md "Playout buffer") it touches no
socket and reads no clock: the time is an argument and methods return decisions for the core to send.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Literal

from gateway.codecs.framing import TWILIO_RATE_HZ, ULAW_BYTES_PER_MS, Framer
from gateway.errors import CallStateError, ConfigError
from gateway.ids import MarkName, ResponseId

# Float slack for comparing times built from sums of frame durations (1 µs, far below one sample).
_EPSILON_S = 1e-6


@dataclass(frozen=True, slots=True)
class PlayoutParams:
    """Pacing and framing of the audio sent to Twilio."""

    lead_ms: int = 160
    """Audio kept queued at Twilio ahead of what the caller hears (P1: ~100–200 ms)."""
    max_message_ms: int = 200
    """Largest media message: once the lead falls below ``lead_ms``, this much is sent at once (with one mark),
    so Twilio holds between ``lead_ms - frame_ms`` and ``lead_ms + max_message_ms`` and gets about
    ``2000 / max_message_ms`` messages a second of speech. What the caller heard is known to within one message."""
    frame_ms: int = 20
    """Frame size the FIFO is cut into; also the pacing granularity."""
    mark_prefix: str = ""
    """Prepended to every mark name, e.g. to tell two buffers' marks apart."""
    max_queued_ms: int = 60_000
    """Most audio held ahead of Twilio (docs/operations.md §4); a response that would pass it is cut."""

    def __post_init__(self) -> None:
        if self.frame_ms <= 0:
            raise ConfigError(f"playout frame_ms must be > 0, got {self.frame_ms}")
        if self.max_message_ms < self.frame_ms:
            raise ConfigError(f"playout max_message_ms ({self.max_message_ms}) must be >= frame_ms ({self.frame_ms})")
        if self.lead_ms < 0:
            raise ConfigError(f"playout lead_ms must be >= 0, got {self.lead_ms}")
        if self.max_queued_ms < self.max_message_ms:
            raise ConfigError(f"playout max_queued_ms ({self.max_queued_ms}) must be >= max_message_ms")


@dataclass(frozen=True, slots=True, repr=False)
class SendMedia:
    """Send this μ-law audio to Twilio as one ``media`` message (§2.1)."""

    ulaw: bytes
    response_id: ResponseId
    duration_ms: int
    """Whole ms; ``len(ulaw)`` is the exact length in 8 kHz samples."""

    def __repr__(self) -> str:
        return f"SendMedia({len(self.ulaw)} bytes, response_id={self.response_id!r}, {self.duration_ms} ms)"


@dataclass(frozen=True, slots=True)
class SendMark:
    """Send a ``mark`` with this name (§2.2); Twilio echoes it when playback reaches it."""

    name: MarkName


@dataclass(frozen=True, slots=True)
class SendClear:
    """Send ``clear`` (§2.3): Twilio drops everything buffered and echoes every pending mark."""


PlayoutDecision = SendMedia | SendMark | SendClear


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """What one mark echo from Twilio means."""

    status: Literal["played", "stale", "unknown"]
    """``stale``: sent before a ``clear``, so flushed rather than played (P6); ``unknown``: not ours."""
    response_id: ResponseId | None
    played_ms: int
    """The response's played ms after this echo (unchanged by stale and unknown echoes)."""
    response_done: bool
    """The final mark of an ended response: the caller has heard all of it."""


@dataclass(frozen=True, slots=True)
class PlayoutStats:
    """Counters of the playout buffer since it was made (ms are whole ms, rounded down)."""

    frames_queued: int
    queued_ms: int
    sent_ms: int
    messages_sent: int
    marks_sent: int
    marks_played: int
    marks_stale: int
    marks_unknown: int
    dropped_ms_on_clear: int
    underruns: int
    """Episodes where the caller's buffer ran dry in the middle of a response."""
    underruns_paced_late: int
    """Of those, the ones with audio still queued here: the poll came late (the event loop was busy), so the
    gateway caused it; the others had nothing queued, so the upstream's audio came late."""
    clears: int
    """``clear`` decisions returned (a ``clear()`` with nothing to flush returns none)."""
    generation: int


class _State(enum.Enum):
    OPEN = "open"  # audio may still come
    ENDED = "ended"  # end_response called; the final mark is queued or sent
    DONE = "done"  # the final mark was echoed before any clear: heard in full
    CUT = "cut"  # interrupted by clear(); no more audio may be pushed


@dataclass(slots=True, eq=False)
class _Response:
    response_id: ResponseId
    framer: Framer
    state: _State = _State.OPEN
    sent_bytes: int = 0
    played_bytes: int = 0
    end_queued: bool = False
    final_mark: MarkName | None = None


@dataclass(frozen=True, slots=True)
class _Frame:
    response_id: ResponseId
    generation: int
    ulaw: bytes


@dataclass(frozen=True, slots=True)
class _EndOfResponse:
    response_id: ResponseId


@dataclass(frozen=True, slots=True)
class _MarkRecord:
    response_id: ResponseId
    generation: int
    offset_bytes: int
    """The response's sent bytes when the mark was sent: its played position once echoed."""


class PlayoutBuffer:
    """FIFO of μ-law frames for one call, paced against a model of the caller's playback clock.

    The model: Twilio plays each message from ``max(play_end_s, now_s)`` for its duration, so
    ``play_end_s - now_s`` is the audio sent but not yet heard. ``poll`` releases a message of up to
    ``max_message_ms`` whenever that lead is below ``lead_ms``: at a response's start one whole message,
    then one every ``max_message_ms`` or so.
    """

    def __init__(self, params: PlayoutParams = PlayoutParams()) -> None:
        self._params = params
        self._frame_bytes = params.frame_ms * ULAW_BYTES_PER_MS
        self._max_message_bytes = params.max_message_ms * ULAW_BYTES_PER_MS
        self._lead_s = params.lead_ms / 1000
        self._generation = 0
        self._queue: deque[_Frame | _EndOfResponse] = deque()
        self._frames_queued = 0
        self._queued_bytes = 0  # in whole frames on the queue
        self._partial_bytes = 0  # in the responses' framers, waiting for a frame to fill up
        self._responses: dict[ResponseId, _Response] = {}
        self._unfinished: dict[ResponseId, _Response] = {}  # OPEN or ENDED
        self._marks: dict[MarkName, _MarkRecord] = {}
        self._unacked_marks = 0  # of the current generation
        self._echo_due: deque[tuple[MarkName, float]] = deque()  # its marks in send order, with when each plays
        self._mark_seq = 0
        self._play_end_s = float("-inf")
        self._in_underrun = False
        self._sent_bytes = 0
        self._messages_sent = 0
        self._marks_played = 0
        self._marks_stale = 0
        self._marks_unknown = 0
        self._dropped_bytes_on_clear = 0
        self._underruns = 0
        self._underruns_paced_late = 0
        self._clears = 0

    # ------------------------------------------------------------------ inputs

    def push(self, response_id: ResponseId, ulaw: bytes) -> None:
        """Queue μ-law audio of a response, cut into ``frame_ms`` frames of the current generation.

        A partial trailing frame waits for more audio of the same response or for ``end_response``.
        Audio for a response that was already ended re-opens it (upstream ids may interleave,
        evi-protocol.md §3): nothing is lost, and its final mark moves to after the new audio. Audio of a
        response cut off by ``clear`` is refused with :class:`CallStateError`: the outbound side drops late
        audio before it is decoded (P5), so pushing it here is our bug.
        """
        response = self._responses.get(response_id)
        if response is None:
            response = self._open(response_id)
        elif response.state is _State.CUT:
            raise CallStateError(f"audio pushed for response {response_id!r}, which clear() cut off")
        elif response.state is not _State.OPEN:
            self._reopen(response)
        if not ulaw:
            return
        held_before = response.framer.pending_bytes
        frames = response.framer.push(ulaw)
        for frame in frames:
            self._enqueue(_Frame(response_id, self._generation, frame))
        self._partial_bytes += response.framer.pending_bytes - held_before

    def was_cut(self, response_id: ResponseId) -> bool:
        """True if ``clear`` cut this response off: no more of its audio may be pushed (P5)."""
        response = self._responses.get(response_id)
        return response is not None and response.state is _State.CUT

    def end_response(self, response_id: ResponseId) -> None:
        """No more audio will come for this response; a final mark follows its last frame.

        The partial trailing frame is sent as a short frame (no padding). Idempotent; a no-op for a
        response cut off by ``clear``. A response that never had audio still gets its final mark.
        """
        response = self._responses.get(response_id)
        if response is None:
            response = self._open(response_id)
        if response.state is not _State.OPEN:
            return
        tail = response.framer.flush()
        if tail:
            self._partial_bytes -= len(tail)
            self._enqueue(_Frame(response_id, self._generation, tail))
        response.state = _State.ENDED
        response.end_queued = True
        self._queue.append(_EndOfResponse(response_id))

    def poll(self, now_s: float) -> list[SendMedia | SendMark]:
        """Release what is due at ``now_s``: media messages, each followed by its mark, and final marks."""
        if self._play_end_s < now_s - _EPSILON_S and not self._in_underrun and self._mid_response():
            # P1: the caller's buffer ran dry while a response was still being delivered.
            self._underruns += 1
            if any(isinstance(item, _Frame) for item in self._queue):
                self._underruns_paced_late += 1
            self._in_underrun = True
        out: list[SendMedia | SendMark] = []
        while self._queue:
            head = self._queue[0]
            if isinstance(head, _EndOfResponse):
                self._queue.popleft()
                out.append(self._final_mark(self._responses[head.response_id], now_s))
            elif self._may_release(now_s):
                out.extend(self._release_message(now_s))
            else:
                break
        return out

    def due(self, now_s: float) -> bool:
        """Whether ``poll(now_s)`` would release anything or notice an underrun; when it is not, a poll changes
        nothing, so a clock may skip it (new audio is polled on arrival)."""
        if self._queue:
            return isinstance(self._queue[0], _EndOfResponse) or self._may_release(now_s)
        return self._play_end_s < now_s - _EPSILON_S and not self._in_underrun and self._mid_response()

    def clear(self, now_s: float) -> list[SendClear]:
        """Barge-in (P3): flush Twilio if it may still be playing or we hold audio; start a new generation.

        Every queued frame is dropped and counted, every unfinished response is cut off (no more audio may
        be pushed for it, P5), and marks outstanding now become stale (P6).
        """
        playing = self._play_end_s > now_s + _EPSILON_S or self._unacked_marks > 0
        holding = self._queued_bytes + self._partial_bytes > 0
        decisions = [SendClear()] if playing or holding else []
        self._clears += len(decisions)
        self._generation += 1
        self._dropped_bytes_on_clear += self._queued_bytes + self._partial_bytes
        self._queue.clear()
        self._frames_queued = 0
        self._queued_bytes = 0
        self._partial_bytes = 0
        for response in self._unfinished.values():
            response.state = _State.CUT
            response.end_queued = False
            response.framer.reset()
        self._unfinished.clear()
        self._unacked_marks = 0
        self._echo_due.clear()
        self._play_end_s = now_s
        self._in_underrun = False
        return decisions

    def mark_echoed(self, name: str) -> MarkEcho:
        """Account for Twilio's echo of mark ``name`` (§1.5); the echo itself carries the position.
        Unknown and repeated names are tolerated."""
        record = self._marks.pop(MarkName(name), None)
        if record is None:
            self._marks_unknown += 1
            return MarkEcho("unknown", None, 0, False)
        response = self._responses[record.response_id]
        played_ms = response.played_bytes // ULAW_BYTES_PER_MS
        if record.generation != self._generation:
            # P6: echoes caused by clear were flushed, not played; they advance nothing.
            self._marks_stale += 1
            return MarkEcho("stale", record.response_id, played_ms, False)
        self._unacked_marks -= 1
        while self._echo_due:  # Twilio plays, and so echoes, in order: the marks before this one were heard too
            if self._echo_due.popleft()[0] == name:
                break
        self._marks_played += 1
        response.played_bytes = max(response.played_bytes, record.offset_bytes)
        done = response.final_mark == name and response.state is _State.ENDED
        if done:
            response.state = _State.DONE
            self._unfinished.pop(response.response_id, None)
        return MarkEcho("played", record.response_id, response.played_bytes // ULAW_BYTES_PER_MS, done)

    # ------------------------------------------------------------------ queries

    def played_ms(self, response_id: ResponseId) -> int:
        """Audio of the response heard by the caller, per marks echoed before a clear (P4c); 0 if unknown."""
        response = self._responses.get(response_id)
        return 0 if response is None else response.played_bytes // ULAW_BYTES_PER_MS

    def sent_ms(self, response_id: ResponseId) -> int:
        """Audio of the response sent to Twilio so far; 0 if unknown."""
        response = self._responses.get(response_id)
        return 0 if response is None else response.sent_bytes // ULAW_BYTES_PER_MS

    @property
    def params(self) -> PlayoutParams:
        """The parameters this buffer was built with."""
        return self._params

    @property
    def generation(self) -> int:
        """Number of ``clear`` calls so far; frames and marks are tagged with it."""
        return self._generation

    @property
    def queued_ms(self) -> int:
        """Audio held and not yet sent, partial frames included."""
        return (self._queued_bytes + self._partial_bytes) // ULAW_BYTES_PER_MS

    def echo_overdue_s(self, now_s: float) -> float:
        """How long the oldest mark of the current generation has been due to be echoed (0 when none is): a
        Twilio that stops reading or playing shows as echoes falling behind (docs/operations.md §4)."""
        return max(0.0, now_s - self._echo_due[0][1]) if self._echo_due else 0.0

    @property
    def idle(self) -> bool:
        """Nothing queued, no partial frame held, and no mark of the current generation unacknowledged."""
        return not self._queue and self._partial_bytes == 0 and self._unacked_marks == 0

    def statistics(self) -> PlayoutStats:
        """A snapshot of the counters."""
        return PlayoutStats(
            frames_queued=self._frames_queued,
            queued_ms=self.queued_ms,
            sent_ms=self._sent_bytes // ULAW_BYTES_PER_MS,
            messages_sent=self._messages_sent,
            marks_sent=self._mark_seq,
            marks_played=self._marks_played,
            marks_stale=self._marks_stale,
            marks_unknown=self._marks_unknown,
            dropped_ms_on_clear=self._dropped_bytes_on_clear // ULAW_BYTES_PER_MS,
            underruns=self._underruns,
            underruns_paced_late=self._underruns_paced_late,
            clears=self._clears,
            generation=self._generation,
        )

    # ------------------------------------------------------------------ internals

    def _open(self, response_id: ResponseId) -> _Response:
        response = _Response(response_id, Framer(self._frame_bytes))
        self._responses[response_id] = response
        self._unfinished[response_id] = response
        return response

    def _reopen(self, response: _Response) -> None:
        if response.end_queued:
            self._queue.remove(_EndOfResponse(response.response_id))
            response.end_queued = False
        response.state = _State.OPEN
        response.final_mark = None
        self._unfinished[response.response_id] = response

    def _enqueue(self, frame: _Frame) -> None:
        self._queue.append(frame)
        self._frames_queued += 1
        self._queued_bytes += len(frame.ulaw)

    def _mid_response(self) -> bool:
        return any(r.sent_bytes > 0 and (r.state is _State.OPEN or r.end_queued) for r in self._unfinished.values())

    def _may_release(self, now_s: float) -> bool:
        ahead_s = self._play_end_s - now_s
        return ahead_s <= _EPSILON_S or ahead_s < self._lead_s - _EPSILON_S

    def _release_message(self, now_s: float) -> list[SendMedia | SendMark]:
        """Coalesce frames of one response from the head of the queue, up to ``max_message_ms``: once the lead has
        fallen below ``lead_ms`` a whole message goes (fewer, larger messages: each costs Twilio and every
        load generator a JSON parse, and each carries one mark)."""
        first = self._queue[0]
        assert isinstance(first, _Frame)
        response = self._responses[first.response_id]
        parts: list[bytes] = []
        size = 0
        while self._queue:
            frame = self._queue[0]
            if not isinstance(frame, _Frame) or frame.response_id != response.response_id:
                break
            if parts and size + len(frame.ulaw) > self._max_message_bytes:
                break
            self._queue.popleft()
            self._frames_queued -= 1
            self._queued_bytes -= len(frame.ulaw)
            parts.append(frame.ulaw)
            size += len(frame.ulaw)
            self._play_end_s = max(self._play_end_s, now_s) + len(frame.ulaw) / TWILIO_RATE_HZ
        ulaw = b"".join(parts)
        response.sent_bytes += size
        self._sent_bytes += size
        self._messages_sent += 1
        self._in_underrun = False
        media = SendMedia(ulaw, response.response_id, size // ULAW_BYTES_PER_MS)
        head = self._queue[0] if self._queue else None
        if isinstance(head, _EndOfResponse) and head.response_id == response.response_id:
            self._queue.popleft()
            return [media, self._final_mark(response, now_s)]
        return [media, self._mark(response, now_s)]

    def _mark(self, response: _Response, now_s: float) -> SendMark:
        name = MarkName(f"{self._params.mark_prefix}{self._generation}.{self._mark_seq}")
        self._mark_seq += 1
        self._marks[name] = _MarkRecord(response.response_id, self._generation, response.sent_bytes)
        self._unacked_marks += 1
        self._echo_due.append((name, max(self._play_end_s, now_s)))
        return SendMark(name)

    def _final_mark(self, response: _Response, now_s: float) -> SendMark:
        mark = self._mark(response, now_s)
        response.end_queued = False
        response.final_mark = mark.name
        return mark
