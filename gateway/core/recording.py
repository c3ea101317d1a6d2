"""What one call sounded like to both parties, rebuilt from what the gateway saw (docs/recordings.md).

Pure: :class:`CallRecording` is fed the frames the adapter reads and writes, each with the time it saw
them, and reads no clock and touches no file. At the end :meth:`CallRecording.render` maps the gateway's
clock onto Twilio's media clock (§2: the offset is the smallest ``arrival − timestamp`` over the caller's
frames), replays the gateway's outbound messages through a model of Twilio's playback buffer (audio plays
in order, in real time, from when it arrives; ``clear`` drops what has not played yet) and returns a stereo
8 kHz PCM16 track — left the caller, right what the caller heard — and the transcript, each agent response
marked heard or cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.codecs.framing import ULAW_BYTES_PER_MS
from gateway.codecs.g711 import ulaw_to_pcm16
from gateway.errors import RemoteProtocolError
from gateway.wire.twilio_media import Mark as MarkEchoEvent
from gateway.wire.twilio_media import (
    Media,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    parse_gateway_message,
    parse_twilio_message,
)
from gateway.wire.upstream import (
    AssistantAudio,
    AssistantText,
    AssistantTurnEnd,
    ToolCall,
    UpstreamCodec,
    UserInterrupted,
    UserTranscript,
)

__all__ = ["RATE_HZ", "CallRecording", "RenderedCall", "TranscriptEntry"]

RATE_HZ = 8000
_SAMPLES_PER_MS = RATE_HZ // 1000
assert ULAW_BYTES_PER_MS == _SAMPLES_PER_MS  # one μ-law byte per sample


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One line of the JSONL transcript; ``t_ms`` is on Twilio's media clock."""

    t_ms: float
    role: Literal["caller", "agent", "event"]
    text: str
    response_id: str | None = None
    heard: Literal["heard", "cut"] | None = None
    """Agent turns only: ``cut`` when a ``clear`` (barge-in) or the end of the call dropped some of it."""
    heard_ms: float | None = None
    """Agent turns only: how much of its audio the caller heard."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of this line (absent fields left out)."""
        out: dict[str, Any] = {"t_ms": round(self.t_ms, 1), "role": self.role, "text": self.text}
        if self.response_id is not None:
            out["response_id"] = self.response_id
        if self.heard is not None:
            out["heard"] = self.heard
        if self.heard_ms is not None:
            out["heard_ms"] = round(self.heard_ms, 1)
        return out


@dataclass(frozen=True, slots=True)
class RenderedCall:
    """The result of :meth:`CallRecording.render`."""

    stereo_pcm16: bytes
    """Interleaved little-endian PCM16 at :data:`RATE_HZ`: left the caller, right what the caller heard."""
    transcript: list[TranscriptEntry]
    duration_ms: float
    heard_ms: float
    cut_ms: float
    """Agent audio the gateway sent that ``clear`` (or the end of the call) dropped before it played."""

    def transcript_jsonl(self) -> str:
        """The transcript, one JSON object per line."""
        lines = (json.dumps(e.as_dict(), ensure_ascii=False, separators=(",", ":")) for e in self.transcript)
        return "".join(line + "\n" for line in lines)


@dataclass(slots=True)
class _Response:
    response_id: str
    first_s: float
    texts: list[str] = field(default_factory=list)
    turn_ended: bool = False
    cut: bool = False
    heard_samples: int = 0


@dataclass(slots=True)
class _Chunk:
    start: int  # sample on the media clock
    pcm: np.ndarray
    owner: str | None


# Outbound and upstream facts, in the order seen: (kind, time s, payload).
_Event = tuple[str, float, Any]


class CallRecording:
    """Collects one call's observations; :meth:`render` turns them into audio and a transcript."""

    def __init__(self, codec: UpstreamCodec | None = None) -> None:
        self._codec = codec
        self._inbound: list[tuple[int, bytes]] = []
        self._offset_ms: float | None = None
        self._events: list[_Event] = []
        self._responses: dict[str, _Response] = {}
        self._current: str | None = None
        self.tool_calls: list[tuple[float, ToolCall]] = []
        self.marks_sent = 0
        self.marks_echoed = 0
        self.ignored_frames = 0
        """Frames that could not be parsed; the call deals with them, the recording skips them."""

    # ------------------------------------------------------------------ typed facts

    def caller_media(self, timestamp_ms: int, ulaw: bytes, now_s: float) -> None:
        """A caller frame: its media timestamp, its μ-law payload, when the gateway read it."""
        self._inbound.append((timestamp_ms, ulaw))
        offset = now_s * 1000 - timestamp_ms
        if self._offset_ms is None or offset < self._offset_ms:
            self._offset_ms = offset

    def sent_media(self, ulaw: bytes, now_s: float) -> None:
        """Agent audio the gateway wrote to Twilio at ``now_s``."""
        self._events.append(("media", now_s, (ulaw, self._current)))

    def sent_clear(self, now_s: float) -> None:
        """The gateway wrote ``clear``: Twilio drops what it has not played."""
        self._events.append(("clear", now_s, None))

    def sent_mark(self) -> None:
        """The gateway wrote a ``mark``."""
        self.marks_sent += 1

    def mark_echoed(self) -> None:
        """Twilio echoed a mark."""
        self.marks_echoed += 1

    def agent_audio(self, response_id: str, now_s: float) -> None:
        """Audio of ``response_id`` arrived from the upstream: the media sent from now on is its."""
        self._response(response_id, now_s)
        self._current = response_id

    def agent_text(self, response_id: str | None, text: str, now_s: float) -> None:
        """Text of one agent response."""
        rid = response_id if response_id is not None else f"text-{len(self._responses)}"
        self._response(rid, now_s).texts.append(text)

    def agent_turn_end(self, now_s: float) -> None:
        """The upstream finished generating the current turn."""
        self._events.append(("turn_end", now_s, None))

    def caller_text(self, text: str, now_s: float) -> None:
        """A final transcript of what the caller said."""
        self._events.append(("caller", now_s, text))

    def interrupted(self, now_s: float) -> None:
        """The upstream reported that the caller barged in."""
        self._events.append(("interruption", now_s, None))

    def tool_call(self, call: ToolCall, now_s: float) -> None:
        """The upstream asked for a tool."""
        self.tool_calls.append((now_s, call))

    def _response(self, rid: str, now_s: float) -> _Response:
        response = self._responses.get(rid)
        if response is None:
            response = self._responses[rid] = _Response(rid, now_s)
            self._events.append(("response", now_s, rid))
        return response

    # ------------------------------------------------------------------ raw frames

    def twilio_read(self, text: str | bytes, now_s: float) -> None:
        """A frame read from Twilio (only media and mark echoes matter here)."""
        try:
            event = parse_twilio_message(text)
        except RemoteProtocolError:
            self.ignored_frames += 1
            return
        if isinstance(event, Media):
            self.caller_media(event.timestamp_ms, event.payload, now_s)
        elif isinstance(event, MarkEchoEvent):
            self.mark_echoed()

    def twilio_written(self, text: str, now_s: float) -> None:
        """A frame the gateway wrote to Twilio."""
        try:
            message = parse_gateway_message(text)
        except RemoteProtocolError:
            self.ignored_frames += 1
            return
        match message:
            case OutboundMedia():
                self.sent_media(message.ulaw, now_s)
            case OutboundMark():
                self.sent_mark()
            case OutboundClear():
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
            case AssistantAudio():
                self.agent_audio(event.response_id, now_s)
            case AssistantText():
                self.agent_text(event.response_id, event.text, now_s)
            case AssistantTurnEnd():
                self.agent_turn_end(now_s)
            case UserTranscript() if not event.interim:
                self.caller_text(event.text, now_s)
            case UserInterrupted():
                self.interrupted(now_s)
            case ToolCall():
                self.tool_call(event, now_s)

    # ------------------------------------------------------------------ the result

    def media_ms(self, now_s: float) -> float:
        """Gateway time ``now_s`` on Twilio's media clock (§2); before any caller frame, the first event is 0."""
        if self._offset_ms is not None:
            return now_s * 1000 - self._offset_ms
        first = self._events[0][1] if self._events else now_s
        return (now_s - first) * 1000

    def render(self, end_s: float | None = None) -> RenderedCall:
        """Both channels and the transcript; audio after ``end_s`` (the call's end) was never heard."""
        left_end = max((ts * _SAMPLES_PER_MS + len(u) for ts, u in self._inbound), default=0)
        total = left_end
        if end_s is not None:
            total = max(total, int(round(self.media_ms(end_s) * _SAMPLES_PER_MS)))
        chunks, transcript, cut_samples = self._play(total)
        total = max(total, max((c.start + len(c.pcm) for c in chunks), default=0))
        stereo = np.zeros((total, 2), dtype="<i2")
        for ts, ulaw in self._inbound:
            start = ts * _SAMPLES_PER_MS
            if start >= 0 and ulaw:
                pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2")
                stereo[start : start + len(pcm), 0] = pcm
        heard = 0
        for chunk in chunks:
            stereo[chunk.start : chunk.start + len(chunk.pcm), 1] = chunk.pcm
            heard += len(chunk.pcm)
        return RenderedCall(
            stereo_pcm16=stereo.tobytes(),
            transcript=transcript,
            duration_ms=total / _SAMPLES_PER_MS,
            heard_ms=heard / _SAMPLES_PER_MS,
            cut_ms=cut_samples / _SAMPLES_PER_MS,
        )

    def _play(self, total: int) -> tuple[list[_Chunk], list[TranscriptEntry], int]:
        """Replay the outbound messages through Twilio's playback buffer; mark responses cut."""
        for response in self._responses.values():
            response.cut, response.turn_ended, response.heard_samples = False, False, 0
        chunks: list[_Chunk] = []
        transcript: list[TranscriptEntry] = []
        cut_samples = 0
        queue_end = 0
        first_play: dict[str, int] = {}
        turn: list[str] = []  # responses of the turn being generated
        for kind, now_s, payload in self._events:
            at = int(round(self.media_ms(now_s) * _SAMPLES_PER_MS))
            if kind == "media":
                ulaw, owner = payload
                if not ulaw:
                    continue
                start = max(at, queue_end, 0)
                chunks.append(_Chunk(start, np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2"), owner))
                queue_end = start + len(ulaw)
                if owner is not None:
                    first_play.setdefault(owner, start)
            elif kind == "clear":
                cut_samples += self._drop_after(chunks, at)
                queue_end = min(queue_end, max(at, 0))
                for rid in turn:
                    response = self._responses[rid]
                    if not response.turn_ended and (rid == turn[-1] or rid not in first_play):
                        response.cut = True
                turn = []
            elif kind == "response":
                turn.append(payload)
            elif kind == "turn_end":
                for rid in turn:
                    self._responses[rid].turn_ended = True
                turn = []
            elif kind in ("caller", "interruption"):
                role: Literal["caller", "event"] = "caller" if kind == "caller" else "event"
                text = payload if kind == "caller" else "caller interrupted"
                transcript.append(TranscriptEntry(at / _SAMPLES_PER_MS, role, text))
        cut_samples += self._drop_after(chunks, total)
        transcript += self._agent_entries(chunks, first_play)
        transcript.sort(key=lambda e: e.t_ms)
        return [c for c in chunks if len(c.pcm)], transcript, cut_samples

    def _agent_entries(self, chunks: list[_Chunk], first_play: dict[str, int]) -> list[TranscriptEntry]:
        """One transcript entry per agent response, placed where its audio began to play."""
        for chunk in chunks:
            if chunk.owner is not None:
                self._responses[chunk.owner].heard_samples += len(chunk.pcm)
        entries = []
        for rid, response in self._responses.items():
            start = first_play.get(rid)
            t_ms = start / _SAMPLES_PER_MS if start is not None else self.media_ms(response.first_s)
            entries.append(
                TranscriptEntry(
                    t_ms,
                    "agent",
                    " ".join(t for t in response.texts if t),
                    response_id=rid,
                    heard="cut" if response.cut else "heard",
                    heard_ms=response.heard_samples / _SAMPLES_PER_MS,
                )
            )
        return entries

    def _drop_after(self, chunks: list[_Chunk], at: int) -> int:
        """Drop the audio placed at or after sample ``at`` (not played yet); its responses are cut."""
        dropped = 0
        for chunk in reversed(chunks):
            end = chunk.start + len(chunk.pcm)
            if end <= at:
                break
            keep = max(0, at - chunk.start)
            if keep < len(chunk.pcm):
                dropped += len(chunk.pcm) - keep
                chunk.pcm = chunk.pcm[:keep]
                if chunk.owner is not None:
                    self._responses[chunk.owner].cut = True
        return dropped
