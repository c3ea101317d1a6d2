"""What one call sounded like to both parties, rebuilt from what the gateway saw on the wire (recordings.md).

Pure: :class:`CallRecorder` is fed what the adapter reads from Twilio, writes to Twilio and reads from the
upstream, each with the gateway's time of reading or writing; it reads no clock and touches no file. It maps
the gateway's clock onto Twilio's media clock (recordings.md §2), replays the outbound messages through
Twilio's playback model (:class:`~gateway.core.twilio_playback.TwilioPlayback`, the one the caller emulator
plays through) to place what the caller heard, and tells from the mark echoes how much of each agent response
Twilio played: heard in full, or cut at the barge-in point (§4). :meth:`CallRecorder.render` returns the
stereo track (left the caller, right what the caller heard) and the transcript.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.codecs.framing import FRAME_MS, TWILIO_RATE_HZ, ULAW_BYTES_PER_MS
from gateway.codecs.g711 import ulaw_to_pcm16
from gateway.codecs.wav import parse_riff
from gateway.core.twilio_playback import TwilioPlayback
from gateway.errors import AudioFormatError, CallStateError, RemoteProtocolError
from gateway.wire import twilio_media as tw
from gateway.wire.upstream import (
    AssistantAudio,
    AssistantText,
    AssistantTurnEnd,
    ToolCall,
    UpstreamCodec,
    UserInterrupted,
    UserTranscript,
)

__all__ = [
    "HEARD_SLACK_MS",
    "MAX_AHEAD_MS",
    "RATE_HZ",
    "CallRecorder",
    "RenderedCall",
    "ToolCallSeen",
    "TranscriptEntry",
]

RATE_HZ = TWILIO_RATE_HZ
_SAMPLES_PER_MS = ULAW_BYTES_PER_MS  # one μ-law byte per 8 kHz sample
_FRAME_SAMPLES = FRAME_MS * _SAMPLES_PER_MS
HEARD_SLACK_MS = FRAME_MS
"""A response is heard in full when no more than this of its audio went unconfirmed (resampling rounds the
length of a response by a few samples, so its 8 kHz length is known only this well)."""

MAX_AHEAD_MS = 10_000.0
"""How far a caller frame's timestamp may run ahead of the gateway's clock (since the first frame it saw)."""

Heard = Literal["heard", "cut"]


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One line of the JSONL transcript (recordings.md §1); ``t_ms`` is on Twilio's media clock."""

    t_ms: float
    role: Literal["caller", "agent", "event"]
    text: str
    response_id: str | None = None
    heard: Heard | None = None
    """Agent lines: ``cut`` when a barge-in (or the end of the call) stopped it before all of it was played."""
    heard_ms: float | None = None
    """Agent lines: its audio that Twilio confirmed played, by mark echoes."""
    cut_at_ms: float | None = None
    """Agent lines that were cut: when (the ``clear`` of the barge-in, or the end of the call)."""
    response_latency_ms: float | None = None
    """Caller lines: from this final transcript to the first agent audio sent to Twilio in reply."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of this line (fields that do not apply left out)."""
        out: dict[str, Any] = {"t_ms": round(self.t_ms, 1), "role": self.role, "text": self.text}
        for key in ("response_id", "heard", "heard_ms", "cut_at_ms", "response_latency_ms"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 1) if isinstance(value, float) else value
        return out


@dataclass(frozen=True, slots=True)
class RenderedCall:
    """The result of :meth:`CallRecorder.render`."""

    stereo_pcm16: bytes
    """Interleaved little-endian PCM16 at :data:`RATE_HZ`: left the caller, right what the caller heard."""
    transcript: list[TranscriptEntry]
    duration_ms: float
    heard_ms: float
    """Agent audio in the right channel."""
    cut_ms: float
    """Agent audio sent to Twilio that a ``clear`` dropped, or that was still queued when the call ended."""

    def transcript_jsonl(self) -> str:
        """The transcript, one JSON object per line."""
        lines = (json.dumps(e.as_dict(), ensure_ascii=False, separators=(",", ":")) for e in self.transcript)
        return "".join(line + "\n" for line in lines)


@dataclass(frozen=True, slots=True)
class ToolCallSeen:
    """A tool call the upstream asked for, and the outcome of running it when the gateway ran it over HTTP."""

    name: str
    tool_call_id: str
    parameters: Any
    """The parameters as JSON, or the raw string when they are not JSON."""
    at_s: float
    outcome: str | None = None
    """``ok`` or a tool_error code for a tool the gateway called over HTTP; None for the rest."""


@dataclass(slots=True, eq=False)
class _Response:
    response_id: str
    began_s: float
    texts: list[str] = field(default_factory=list)
    expected_samples: float = 0.0
    """Its audio from the upstream, in 8 kHz samples."""
    sent_samples: int = 0
    played_samples: int = 0
    """How far Twilio confirmed playing it: the sent position of its last mark echoed before any clear."""
    complete: bool = False
    """No more of it will come from the upstream (its turn ended, another response began, or it was cut off)."""
    heard: Heard | None = None
    cut_s: float | None = None


@dataclass(frozen=True, slots=True)
class _MarkSent:
    response: _Response
    position_samples: int
    clears: int
    """Clears sent before this mark: an echo that comes back after another clear was flushed, not played."""


@dataclass(slots=True)
class _CallerTurn:
    text: str
    at_s: float
    latency_ms: float | None = None


class CallRecorder:
    """Collects one call's observations; :meth:`render` turns them into the two channels and the transcript.

    With ``keep_audio=False`` only what the post-call summary needs is kept (turn latencies, tool calls): no
    audio, no Twilio frame is parsed, and :meth:`render` refuses.
    """

    def __init__(self, codec: UpstreamCodec | None = None, *, keep_audio: bool = True) -> None:
        self.keep_audio = keep_audio
        self._codec = codec
        self._first_s: float | None = None
        self._last_s: float | None = None
        self._offset_ms: float | None = None
        self._ended_s: float | None = None
        self._stream_sid: str | None = None
        self._inbound: list[tuple[int, bytes]] = []
        self._outbound: list[tuple[float, bytes | None, str | None]] = []
        """(sent time, μ-law or None for a ``clear``, response id): what Twilio was asked to play."""
        self._responses: dict[str, _Response] = {}
        self._open: list[_Response] = []
        self._marks: dict[str, _MarkSent] = {}
        self._mark_owner: _Response | None = None
        self._clears = 0
        self._caller_turns: list[_CallerTurn] = []
        self._awaiting: _CallerTurn | None = None
        self._interruptions_s: list[float] = []
        self._tool_calls: list[ToolCallSeen] = []
        self.ignored_frames = 0
        """Frames that could not be parsed: the call deals with them; the recording skips them."""

    # ------------------------------------------------------------------ Twilio's side, typed

    def caller_media(self, timestamp_ms: int, ulaw: bytes, received_s: float) -> None:
        """A caller frame: its ``media.timestamp``, its μ-law payload, and when the gateway read it. A timestamp
        further ahead of the time since the first fact than :data:`MAX_AHEAD_MS` is not Twilio's clock: skipped."""
        self._seen(received_s)
        assert self._first_s is not None
        if timestamp_ms < 0 or timestamp_ms > (received_s - self._first_s) * 1000 + MAX_AHEAD_MS:
            self.ignored_frames += 1
            return
        if self.keep_audio:
            self._inbound.append((timestamp_ms, ulaw))
        offset_ms = received_s * 1000 - timestamp_ms
        if self._offset_ms is None or offset_ms < self._offset_ms:
            self._offset_ms = offset_ms

    def sent_media(self, ulaw: bytes, sent_s: float, response_id: str | None) -> None:
        """Agent audio written to Twilio; ``response_id`` is whose audio it is (None for the gateway's own)."""
        self._seen(sent_s)
        response = self._responses.get(response_id) if response_id is not None else None
        if self.keep_audio:
            self._outbound.append((sent_s, ulaw, response_id))
        if response is not None:
            response.sent_samples += len(ulaw)
            waiting = self._awaiting
            if waiting is not None and response.began_s >= waiting.at_s:
                waiting.latency_ms = (sent_s - waiting.at_s) * 1000
                self._awaiting = None
        self._mark_owner = response

    def sent_mark(self, name: str, sent_s: float) -> None:
        """A ``mark`` written to Twilio: it tells how far the audio before it has played once it is echoed."""
        self._seen(sent_s)
        owner = self._mark_owner
        if owner is not None:
            self._marks[name] = _MarkSent(owner, owner.sent_samples, self._clears)

    def sent_clear(self, sent_s: float) -> None:
        """A ``clear`` written to Twilio (a barge-in): what has not played is gone; unfinished responses are cut."""
        self._seen(sent_s)
        if self.keep_audio:
            self._outbound.append((sent_s, None, None))
        self._clears += 1
        self._mark_owner = None
        self._settle(sent_s, cut_unfinished=True)

    def mark_echoed(self, name: str, received_s: float) -> None:
        """Twilio echoed a mark: played, unless a clear went out after the mark (then it was flushed,
        twilio-media-streams.md P6)."""
        self._seen(received_s)
        sent = self._marks.pop(name, None)
        if sent is None or sent.clears != self._clears:
            return
        response = sent.response
        response.played_samples = max(response.played_samples, sent.position_samples)
        self._settle(received_s)

    def twilio_ended(self, now_s: float) -> None:
        """The Twilio socket closed (or the gateway closed it): nothing queued after this was heard."""
        if self._ended_s is None:
            self._ended_s = now_s

    # ------------------------------------------------------------------ the upstream's side, typed

    def agent_said(self, response_id: str | None, text: str, now_s: float) -> None:
        """Text of an agent response (it arrives before that response's audio)."""
        rid = response_id if response_id is not None else f"text-{len(self._responses)}"
        self._begin(rid, now_s).texts.append(text)

    def agent_audio(self, response_id: str, duration_ms: float, now_s: float) -> None:
        """Audio of a response came from the upstream; late audio of a response already cut is not counted."""
        response = self._responses.get(response_id)
        if response is not None and response.heard == "cut":
            return
        response = self._begin(response_id, now_s)
        response.expected_samples += duration_ms * _SAMPLES_PER_MS

    def agent_turn_end(self, now_s: float) -> None:
        """The upstream finished generating the agent's turn."""
        self._seen(now_s)
        for response in self._open:
            response.complete = True
        self._settle(now_s)

    def caller_said(self, text: str, now_s: float) -> None:
        """A final transcript of what the caller said: the response latency runs from here."""
        self._seen(now_s)
        turn = _CallerTurn(text, now_s)
        self._caller_turns.append(turn)
        self._awaiting = turn

    def caller_interrupted(self, now_s: float) -> None:
        """The upstream reports a barge-in: it stops generating, so the responses still open are decided now."""
        self._seen(now_s)
        self._interruptions_s.append(now_s)
        self._settle(now_s, cut_unfinished=True)

    def tool_call(self, name: str, tool_call_id: str, parameters_json: str, now_s: float) -> None:
        """The upstream asked for a tool."""
        self._seen(now_s)
        try:
            parameters: Any = json.loads(parameters_json)
        except ValueError:
            parameters = parameters_json
        self._tool_calls.append(ToolCallSeen(name, tool_call_id, parameters, now_s))

    def tool_finished(self, tool_call_id: str, outcome: str) -> None:
        """The gateway's HTTP call of a tool ended with ``outcome`` (``ok`` or a tool_error code)."""
        for i, seen in enumerate(self._tool_calls):
            if seen.tool_call_id == tool_call_id and seen.outcome is None:
                self._tool_calls[i] = ToolCallSeen(seen.name, seen.tool_call_id, seen.parameters, seen.at_s, outcome)
                return

    # ------------------------------------------------------------------ wire text

    def twilio_read(self, text: str | bytes, now_s: float) -> None:
        """A frame read from Twilio: its media and mark echoes (nothing, without ``keep_audio``)."""
        if not self.keep_audio:
            return
        try:
            event = tw.parse_twilio_message(text)
        except RemoteProtocolError:
            self.ignored_frames += 1
            return
        match event:
            case tw.Start():
                self._seen(now_s)
                self._stream_sid = event.stream_sid
            case tw.Media() if event.stream_sid == self._stream_sid:
                self.caller_media(event.timestamp_ms, event.payload, now_s)
            case tw.Mark() if event.stream_sid == self._stream_sid:
                self.mark_echoed(event.name, now_s)

    def twilio_sent(self, text: str, now_s: float, *, kind: str, response_id: str | None = None) -> None:
        """A frame written to Twilio; ``kind`` and ``response_id`` as the core labelled it."""
        if not self.keep_audio:
            if kind == "media":  # the summary needs when a response's first audio went out, not its bytes
                self.sent_media(b"", now_s, response_id)
            return
        try:
            message = tw.parse_gateway_message(text)
        except RemoteProtocolError:
            self.ignored_frames += 1
            return
        match message:
            case tw.OutboundMedia():
                self.sent_media(message.ulaw, now_s, response_id)
            case tw.OutboundMark():
                self.sent_mark(message.name, now_s)
            case tw.OutboundClear():
                self.sent_clear(now_s)

    def upstream_read(self, text: str | bytes, now_s: float) -> None:
        """A frame read from the upstream, decoded with the call's codec."""
        if self._codec is None:
            return
        try:
            event = self._codec.decode(text)
        except RemoteProtocolError:
            self.ignored_frames += 1
            return
        match event:
            case AssistantText():
                self.agent_said(event.response_id, event.text, now_s)
            case AssistantAudio():
                try:
                    wave = parse_riff(event.wav)
                except AudioFormatError:  # the call drops such a chunk too
                    return
                ms = len(wave.data) / wave.block_align * 1000 / wave.rate_hz if wave.rate_hz > 0 else 0.0
                self.agent_audio(event.response_id, ms, now_s)
            case AssistantTurnEnd():
                self.agent_turn_end(now_s)
            case UserTranscript() if not event.interim:
                self.caller_said(event.text, now_s)
            case UserInterrupted():
                self.caller_interrupted(now_s)
            case ToolCall():
                self.tool_call(event.name, event.tool_call_id, event.parameters_json, now_s)

    # ------------------------------------------------------------------ what was learnt

    @property
    def response_latencies_ms(self) -> list[float]:
        """Per answered caller turn: final transcript → first agent audio sent to Twilio (as in the metrics)."""
        return [round(t.latency_ms, 1) for t in self._caller_turns if t.latency_ms is not None]

    @property
    def tool_calls(self) -> list[ToolCallSeen]:
        """The tool calls the upstream asked for, in order."""
        return list(self._tool_calls)

    def media_ms(self, now_s: float) -> float:
        """Gateway time ``now_s`` on Twilio's media clock (§2); before any caller frame, the first fact is 0."""
        if self._offset_ms is not None:
            return now_s * 1000 - self._offset_ms
        return (now_s - (self._first_s if self._first_s is not None else now_s)) * 1000

    def render(self, end_s: float | None = None) -> RenderedCall:
        """Both channels and the transcript. Audio queued after ``end_s`` (default: when the Twilio socket
        closed; else all of it) was never heard."""
        if not self.keep_audio:
            raise CallStateError("render() of a CallRecorder made with keep_audio=False")
        end_s = self._ended_s if end_s is None else end_s
        end_sample = None if end_s is None else max(0, round(self.media_ms(end_s) * _SAMPLES_PER_MS))
        heard, first_heard, cut_samples = self._play(end_sample)
        left_end = max((ts * _SAMPLES_PER_MS + len(u) for ts, u in self._inbound), default=0)
        right_end = max((start + len(ulaw) for start, ulaw in heard), default=0)
        total = max(left_end, right_end, end_sample or 0)
        stereo = np.zeros((total, 2), dtype="<i2")
        for ts, ulaw in self._inbound:
            start = ts * _SAMPLES_PER_MS
            stereo[start : start + len(ulaw), 0] = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2")
        heard_samples = 0
        for start, ulaw in heard:
            stereo[start : start + len(ulaw), 1] = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2")
            heard_samples += len(ulaw)
        end_at = end_s if end_s is not None else (self._last_s or 0.0)
        return RenderedCall(
            stereo_pcm16=stereo.tobytes(),
            transcript=self._transcript(first_heard, end_at),
            duration_ms=total / _SAMPLES_PER_MS,
            heard_ms=heard_samples / _SAMPLES_PER_MS,
            cut_ms=cut_samples / _SAMPLES_PER_MS,
        )

    # ------------------------------------------------------------------ internals

    def _seen(self, now_s: float) -> None:
        if self._first_s is None:
            self._first_s = now_s
        self._last_s = now_s

    def _begin(self, response_id: str, now_s: float) -> _Response:
        self._seen(now_s)
        response = self._responses.get(response_id)
        if response is None:
            for earlier in self._open:  # the upstream speaks one response after another
                earlier.complete = True
            response = self._responses[response_id] = _Response(response_id, now_s)
            self._open.append(response)
        return response

    def _settle(self, now_s: float, *, cut_unfinished: bool = False) -> None:
        """Decide the responses played in full; with ``cut_unfinished`` (a barge-in) the rest are cut now."""
        still_open = []
        for response in self._open:
            response.heard = _outcome(response, final=cut_unfinished)
            if response.heard == "cut":
                response.cut_s = now_s
            elif response.heard is None:
                still_open.append(response)
        self._open = still_open

    def _play(self, end_sample: int | None) -> tuple[list[tuple[int, bytes]], dict[str, int], int]:
        """Replay the outbound messages through Twilio's playback model, one 20 ms frame at a time: a message
        written at media time t joins the queue before the first frame starting at or after t (§2).
        Returns the heard pieces (start sample, μ-law), where each response began to be heard, and the
        samples sent but never played."""
        playback = TwilioPlayback(FRAME_MS)
        events = [(round(self.media_ms(s) * _SAMPLES_PER_MS), ulaw, rid) for s, ulaw, rid in self._outbound]
        last_frame = None if end_sample is None else math.ceil(end_sample / _FRAME_SAMPLES)
        heard: list[tuple[int, bytes]] = []
        first_heard: dict[str, int] = {}
        starts: list[tuple[int, str]] = []  # (audio fed before it, response) for responses not heard yet
        fed = consumed = 0  # audio fed to the model; audio it played or dropped
        frame = i = 0
        while last_frame is None or frame < last_frame:
            frame_start = frame * _FRAME_SAMPLES
            while i < len(events) and events[i][0] <= frame_start:
                _at, ulaw, rid = events[i]
                i += 1
                if ulaw is None:
                    playback.clear()
                    consumed, starts = fed, []
                elif ulaw:
                    if rid is not None and rid not in first_heard and all(r != rid for _, r in starts):
                        starts.append((fed, rid))
                    playback.media(ulaw)
                    fed += len(ulaw)
            if playback.queued_ms == 0:
                if i == len(events):
                    break
                skip_to = max(frame + 1, math.ceil(events[i][0] / _FRAME_SAMPLES))
                if last_frame is not None:
                    skip_to = min(skip_to, last_frame)
                playback.play_silence(skip_to - frame)
                frame = skip_to
                continue
            played = playback.play()
            if played.audio_bytes:
                heard.append((frame_start, played.ulaw[: played.audio_bytes]))
                for position, rid in starts:
                    if position < consumed + played.audio_bytes:
                        first_heard[rid] = frame_start + position - consumed
                starts = [(p, r) for p, r in starts if r not in first_heard]
                consumed += played.audio_bytes
            frame += 1
        if end_sample is not None:
            heard = [(start, ulaw[: max(0, end_sample - start)]) for start, ulaw in heard if start < end_sample]
        return heard, first_heard, playback.cleared_bytes + round(playback.queued_ms * _SAMPLES_PER_MS)

    def _transcript(self, first_heard: dict[str, int], end_s: float) -> list[TranscriptEntry]:
        entries = [
            TranscriptEntry(self.media_ms(t.at_s), "caller", t.text, response_latency_ms=t.latency_ms)
            for t in self._caller_turns
        ]
        entries += [TranscriptEntry(self.media_ms(s), "event", "caller interrupted") for s in self._interruptions_s]
        for response in self._responses.values():
            if not response.texts:
                continue  # audio without text: the gateway's own apology, in the WAV only
            heard = response.heard or _outcome(response, final=True)
            cut_s = response.cut_s if response.cut_s is not None else end_s
            start = first_heard.get(response.response_id)
            if start is not None:  # where the caller began to hear it
                t_ms = start / _SAMPLES_PER_MS
            else:  # never heard: where it was cut (else, text alone, where it came)
                t_ms = self.media_ms(cut_s if heard == "cut" else response.began_s)
            entries.append(
                TranscriptEntry(
                    t_ms,
                    "agent",
                    " ".join(t for t in response.texts if t),
                    response_id=response.response_id,
                    heard=heard,
                    heard_ms=response.played_samples / _SAMPLES_PER_MS,
                    cut_at_ms=self.media_ms(cut_s) if heard == "cut" else None,
                )
            )
        entries.sort(key=lambda e: e.t_ms)
        return entries


def _outcome(response: _Response, *, final: bool) -> Heard | None:
    """``heard`` once its audio is all in and the mark echoes confirm all but :data:`HEARD_SLACK_MS` of it
    played. ``final`` (a barge-in, the end of the call: nothing more of it will play): ``cut`` unless it had
    audio and all of that played; otherwise None, not decided yet."""
    played_all = response.played_samples >= response.expected_samples - HEARD_SLACK_MS * _SAMPLES_PER_MS
    if response.complete and played_all:
        return "heard"
    if final:
        return "heard" if played_all and response.expected_samples > 0 else "cut"
    return None
