"""Testing helpers shipped with the package (structlog style): drive a :class:`Call` with no sockets.

:class:`CallDriver` plays Twilio and the upstream against one ``Call`` on a simulated clock, using the real
wire builders, and keeps every action the call returned so tests can read them back as parsed messages.
What the call sends to Twilio goes through Twilio's playback model
(:class:`~gateway.simulator.twilio_playback.TwilioPlayback`), which plays one frame per tick, so marks are
echoed back when playback reaches them — not at once — and ``clear`` echoes every pending mark.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pydantic

from gateway.codecs.framing import FRAME_MS, ULAW_BYTES_PER_MS
from gateway.codecs.wav import write_wav
from gateway.core.actions import (
    Action,
    CloseTwilio,
    CloseUpstream,
    OpenUpstream,
    RunTool,
    SendTwilio,
    SendUpstream,
    TransferCall,
)
from gateway.core.call import Call
from gateway.core.lines import LineDirectory
from gateway.core.params import CallParams, TokenRedeemer
from gateway.core.tools import ToolOutcome
from gateway.simulator.twilio_playback import MarkEcho, TwilioPlayback
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw
from gateway.wire.evi_codec import EviCodec


class CallDriver:
    """One call, a fake clock, and a log of everything it asked for."""

    def __init__(
        self,
        params: CallParams | None = None,
        tokens: TokenRedeemer | None = None,
        *,
        call_sid: str = "CA" + "1" * 32,
        stream_sid: str = "MZ" + "2" * 32,
        account_sid: str = "AC" + "3" * 32,
        start_s: float = 1000.0,
        lines: LineDirectory | None = None,
    ) -> None:
        self.now = start_s
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.account_sid = account_sid
        self.call = Call(params or CallParams(), EviCodec(), tokens, now=self.now, lines=lines)
        self.actions: list[Action] = []
        self._seq = 0
        self._chunk = 0
        self._media_ms = 0
        self.playback = TwilioPlayback(FRAME_MS)
        """Twilio's playback buffer: what the caller has heard, on the media clock of :meth:`advance`."""
        self._echoes: list[MarkEcho] = []
        self.rounds = 0
        """20 ms rounds of the clock so far (:meth:`advance`)."""

    def _record(self, actions: list[Action]) -> list[Action]:
        self.actions.extend(actions)
        for action in actions:
            if isinstance(action, SendTwilio):
                self._echoes += self.playback.receive(tw.parse_gateway_message(action.text))
        return actions

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ---------------------------------------------------------------- Twilio side

    def twilio(self, text: str | bytes) -> list[Action]:
        """Deliver one raw Media Stream frame."""
        return self._record(self.call.receive_twilio(text, self.now))

    def start(self, custom_parameters: dict[str, str] | None = None, **media_format: Any) -> list[Action]:
        """``connected`` then ``start`` (twilio-media-streams.md §1.1–§1.2)."""
        actions = self.twilio(tw.connected_message())
        actions += self.twilio(
            tw.start_message(
                sequence_number=self._next_seq(),
                stream_sid=self.stream_sid,
                account_sid=self.account_sid,
                call_sid=self.call_sid,
                custom_parameters=custom_parameters or {},
                **media_format,
            )
        )
        return actions

    def media(self, ulaw: bytes, *, timestamp_ms: int | None = None, stream_sid: str | None = None) -> list[Action]:
        """One caller frame; timestamps follow the audio unless given."""
        self._chunk += 1
        ts = self._media_ms if timestamp_ms is None else timestamp_ms
        self._media_ms = ts + len(ulaw) // ULAW_BYTES_PER_MS
        return self.twilio(
            tw.inbound_media_message(
                sequence_number=self._next_seq(),
                stream_sid=stream_sid or self.stream_sid,
                chunk=self._chunk,
                timestamp_ms=ts,
                ulaw=ulaw,
            )
        )

    def mark(self, name: str) -> list[Action]:
        """Twilio echoes a mark."""
        return self.twilio(
            tw.mark_echo_message(sequence_number=self._next_seq(), stream_sid=self.stream_sid, name=name)
        )

    def deliver_echoes(self) -> list[Action]:
        """Deliver the mark echoes Twilio owes the call by now (immediate ones, or reached by playback)."""
        actions: list[Action] = []
        while self._echoes:
            echo = self._echoes.pop(0)
            actions += self.mark(echo.name)
        return actions

    def dtmf(self, digit: str) -> list[Action]:
        """The caller presses a key."""
        return self.twilio(tw.dtmf_message(sequence_number=self._next_seq(), stream_sid=self.stream_sid, digit=digit))

    def stop(self) -> list[Action]:
        """Twilio ends the stream."""
        return self.twilio(
            tw.stop_message(
                sequence_number=self._next_seq(),
                stream_sid=self.stream_sid,
                account_sid=self.account_sid,
                call_sid=self.call_sid,
            )
        )

    # ---------------------------------------------------------------- upstream side

    def upstream(self, message: evi.EviModel | str) -> list[Action]:
        """Deliver one upstream frame (a model, or raw text)."""
        text = message if isinstance(message, str) else message.to_json()
        return self._record(self.call.receive_upstream(text, self.now))

    def ready(self, chat_id: str = "chat-1", chat_group_id: str = "group-1") -> list[Action]:
        """The upstream socket opens and says hello (evi-protocol.md §1.4)."""
        actions = self._record(self.call.upstream_opened(self.now))
        metadata = evi.ChatMetadata(chat_id=chat_id, chat_group_id=chat_group_id, request_id="req-1")
        return actions + self.upstream(metadata)

    def upstream_closed(self, code: int | None = 1000, reason: str = "") -> list[Action]:
        """The upstream socket closes (``code`` None: it failed, or could not be opened)."""
        return self._record(self.call.upstream_closed(self.now, code, reason))

    def tool_finished(self, tool_call_id: str, outcome: ToolOutcome) -> list[Action]:
        """A tool endpoint answered (or failed)."""
        return self._record(self.call.tool_finished(tool_call_id, outcome, self.now))

    def transfer_failed(self, detail: str = "HTTP 404") -> list[Action]:
        """Twilio refused the REST redirect."""
        return self._record(self.call.transfer_failed(self.now, detail))

    def say(self, response_id: str, pcm16: bytes, rate_hz: int, *, index: int = 0) -> list[Action]:
        """One ``audio_output`` chunk (a whole WAV file)."""
        data = base64.b64encode(write_wav(pcm16, rate_hz)).decode("ascii")
        return self.upstream(evi.AudioOutput(id=response_id, index=index, data=data))

    # ---------------------------------------------------------------- the clock

    def advance(self, duration_ms: float) -> list[Action]:
        """Let time pass in 20 ms rounds, ticking the call when the adapter's ticker would (``Call.tick_due``);
        each round Twilio plays one frame and the echoes due reach the call."""
        actions: list[Action] = []
        end = self.now + duration_ms / 1000
        while self.now + FRAME_MS / 1000 <= end + 1e-9:
            self.now += FRAME_MS / 1000
            self.rounds += 1
            if self.call.tick_due(self.rounds, self.now):
                actions += self._record(self.call.tick(self.now))
            actions += self.deliver_echoes()
            self._echoes += self.playback.play().echoes
            actions += self.deliver_echoes()
        self.now = end
        return actions

    # ---------------------------------------------------------------- reading back

    def to_twilio(self, actions: list[Action] | None = None) -> list[tw.TwilioGatewayMessage]:
        """Twilio frames the call sent, parsed strictly (each must be a documented shape)."""
        return [
            tw.parse_gateway_message(a.text)
            for a in (self.actions if actions is None else actions)
            if isinstance(a, SendTwilio)
        ]

    def to_upstream(self, actions: list[Action] | None = None) -> list[dict[str, Any]]:
        """Upstream frames the call sent, as JSON objects."""
        return [
            json.loads(a.text) for a in (self.actions if actions is None else actions) if isinstance(a, SendUpstream)
        ]

    def heard_ulaw(self, actions: list[Action] | None = None) -> bytes:
        """All μ-law audio sent to the caller, in order (what the caller has *played* is in :attr:`playback`)."""
        return b"".join(m.ulaw for m in self.to_twilio(actions) if isinstance(m, tw.OutboundMedia))

    def kinds(self, actions: list[Action] | None = None) -> list[str]:
        """A compact view of actions: 'media', 'mark', 'clear', 'audio', 'session_settings', 'open', …"""
        out = []
        for a in self.actions if actions is None else actions:
            match a:
                case SendTwilio() | SendUpstream():
                    out.append(a.kind)
                case OpenUpstream():
                    out.append("open")
                case CloseUpstream():
                    out.append("close_upstream")
                case CloseTwilio():
                    out.append("close_twilio")
                case RunTool():
                    out.append("run_tool")
                case TransferCall():
                    out.append("transfer")
        return out


def user_final(text: str, *, end_ms: int = 500) -> evi.UserMessage:
    """EVI's final transcript of the caller's turn (``user_message``, not interim)."""
    return evi.UserMessage(
        message=evi.ChatMessage(role="user", content=text),
        models=evi.Inference(),
        time=evi.MillisecondInterval(begin=0, end=end_ms),
        from_text=False,
        interim=False,
    )


def undeclared_fields(model: Any, path: str = "") -> list[str]:
    """Paths of every pydantic model (nested ones too) that kept fields it does not declare.

    The official SDK's models accept unknown fields silently; with this check an SDK type becomes a strict
    oracle for what we send or serve (docs/evi-protocol.md §10).
    """
    found: list[str] = []
    if isinstance(model, pydantic.BaseModel):
        if model.model_extra:
            found.append(f"{path or '<root>'}: {sorted(model.model_extra)}")
        for name in type(model).model_fields:
            found.extend(undeclared_fields(getattr(model, name), f"{path}.{name}"))
    elif isinstance(model, list):
        for i, item in enumerate(model):
            found.extend(undeclared_fields(item, f"{path}[{i}]"))
    return found
