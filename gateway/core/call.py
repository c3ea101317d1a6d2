"""The per-call core: sans-I/O, clock-free (DESIGN.md "Shape").

``Call`` takes Twilio text, upstream text and the current time, and returns the actions its adapters must
carry out. It never touches a socket or reads a clock; its states and transitions live in
:mod:`gateway.core.states`. Remote misbehaviour never raises: it is logged, counted, and, where the call
cannot go on, turned into close actions with a recorded end reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, assert_never

from gateway.codecs.framing import ULAW_BYTES_PER_MS, ulaw_bytes_to_ms
from gateway.codecs.g711 import ulaw_silence
from gateway.codecs.transcode import InboundTranscoder
from gateway.core.actions import Action, CloseTwilio, CloseUpstream, OpenUpstream, SendTwilio, SendUpstream
from gateway.core.inbound import InboundParams, InboundStream, PreRoll
from gateway.core.outbound import OutboundAudio
from gateway.core.playout import PlayoutParams, SendClear, SendMark, SendMedia
from gateway.core.states import CallState, Input, next_state
from gateway.core.stats import CallStats, EndReason
from gateway.errors import AudioFormatError, TwilioProtocolError, UpstreamProtocolError
from gateway.ids import CallSid, ResponseId, StreamSid
from gateway.wire import twilio_media as tw
from gateway.wire.stream_token import TokenVerdict
from gateway.wire.upstream import (
    AssistantAudio,
    AssistantText,
    AssistantTurnEnd,
    SessionStart,
    ToolCall,
    UpstreamCodec,
    UpstreamEvent,
    UpstreamFault,
    UpstreamNotice,
    UpstreamReady,
    UpstreamUnknown,
    UserInterrupted,
    UserTranscript,
)

log = logging.getLogger("gateway.call")

# twilio-media-streams.md §1.2: the only media format a <Connect><Stream> carries.
EXPECTED_MEDIA_FORMAT = ("audio/x-mulaw", 8000, 1)
# Keys of start.customParameters that become upstream session variables (set by our webhook).
CALL_VARIABLE_KEYS = ("caller_number", "called_number")
# evi-protocol.md §6: the built-in tool that ends the call after a farewell.
HANG_UP_TOOL = "hang_up"


class TokenRedeemer(Protocol):
    """Checks a stream token minted by the webhook (gateway.wire.stream_token.StreamTokens)."""

    def redeem(self, token: str, call_sid: str, now_s: float) -> TokenVerdict:
        """Verify and consume ``token`` for ``call_sid``."""
        ...


@dataclass(frozen=True, slots=True)
class CallParams:
    """What one call needs from the settings."""

    input_rate_hz: int = 8000
    preroll_ms: int = 2000
    start_timeout_s: float = 10.0
    upstream_connect_timeout_s: float = 10.0
    max_duration_s: float = 1800.0
    drain_timeout_s: float = 10.0
    playout: PlayoutParams = field(default_factory=PlayoutParams)
    inbound: InboundParams = field(default_factory=InboundParams)


class Call:
    """One phone call bridged to one upstream session."""

    def __init__(
        self,
        params: CallParams,
        codec: UpstreamCodec,
        tokens: TokenRedeemer | None = None,
        *,
        now: float,
    ) -> None:
        self.params = params
        self._codec = codec
        self._tokens = tokens
        self.state = CallState.AWAITING_START
        self.end_reason: EndReason | None = None
        self.stream_sid: StreamSid | None = None
        self.call_sid: CallSid | None = None
        self.custom_parameters: dict[str, str] = {}
        self.upstream_session_id: str | None = None
        self.upstream_group_id: str | None = None
        self._created_s = now
        self._started_s: float | None = None
        self._ending_since_s: float | None = None
        self._ended_s: float | None = None
        self._inbound = InboundStream(params.inbound)
        self._inbound_transcoder = InboundTranscoder(params.input_rate_hz)
        self._preroll = PreRoll(params.preroll_ms)
        self._outbound = OutboundAudio(params.playout)
        self._turn_ended = True
        self._upstream_requested = False
        self._hang_up_requested = False
        self._upstream_close_sent = False
        self._pending_end: tuple[EndReason, str] = (EndReason.UPSTREAM_CLOSED, "")
        self._end_detail = ""
        self._counts: dict[str, int] = {}
        self._faults: list[str] = []

    # ----------------------------------------------------------------- inputs from the Twilio socket

    def receive_twilio(self, text: str | bytes, now: float) -> list[Action]:
        """Handle one Media Stream frame."""
        if self.state is CallState.CLOSED:
            return []
        try:
            message = tw.parse_twilio_message(text)
        except TwilioProtocolError as exc:
            return self._twilio_violation(str(exc), now)
        match message:
            case tw.Media():
                return self._on_media(message, now)
            case tw.Mark():
                return self._on_mark(message, now)
            case tw.Start():
                return self._on_start(message, now)
            case tw.Connected():
                return self._apply(Input.CONNECTED, now)
            case tw.Dtmf():
                return self._on_dtmf(message, now)
            case tw.Stop():
                return self._on_stop(message, now)
            case tw.UnknownEvent():
                self._count("twilio_unknown_events")
                log.info("T< unknown event %r ignored", message.event)
                return self._apply(Input.TWILIO_IGNORED, now)
        assert_never(message)

    def twilio_closed(self, now: float) -> list[Action]:
        """The Media Stream socket closed (caller hung up, or Twilio dropped it)."""
        return self._apply(Input.TWILIO_CLOSED, now, reason=EndReason.TWILIO_CLOSED)

    def _on_start(self, message: tw.Start, now: float) -> list[Action]:
        if self.state is not CallState.AWAITING_START:
            return self._twilio_violation("second 'start' on one stream", now)
        fmt = message.media_format
        problem = None
        if (fmt.encoding, fmt.sample_rate_hz, fmt.channels) != EXPECTED_MEDIA_FORMAT:
            problem = f"unsupported mediaFormat {fmt.encoding}/{fmt.sample_rate_hz}/{fmt.channels}"
        elif self._tokens is not None:
            verdict = self._tokens.redeem(message.custom_parameters.get("token", ""), message.call_sid, now)
            if verdict is not TokenVerdict.OK:
                problem = f"stream token rejected: {verdict.name.lower()}"
        self.stream_sid = message.stream_sid
        self.call_sid = message.call_sid
        if problem is not None:
            log.warning("T< start rejected: %s (call %s)", problem, message.call_sid)
            return self._apply(
                Input.START_REJECTED, now, reason=EndReason.START_REJECTED, detail=problem, close_code=1008
            )
        self.custom_parameters = dict(message.custom_parameters)
        self._started_s = now
        self._upstream_requested = True
        return self._apply(Input.START, now, extra=[OpenUpstream(self._session_start())])

    def _on_media(self, message: tw.Media, now: float) -> list[Action]:
        if self.state in (CallState.AWAITING_START,):
            return self._twilio_violation("media before start", now)
        if message.stream_sid != self.stream_sid:
            self._count("twilio_wrong_stream_sid")
            log.warning("T< media for stream %s on stream %s dropped", message.stream_sid, self.stream_sid)
            return self._apply(Input.TWILIO_IGNORED, now)
        verdict = self._inbound.accept(message.timestamp_ms, message.chunk, len(message.payload))
        if verdict.action == "drop":
            return self._apply(Input.MEDIA, now)
        ulaw = message.payload
        if verdict.fill_ms:
            # twilio-media-streams.md §1.3 (31930): fill what Twilio discarded with silence, keeping time.
            ulaw = ulaw_silence(verdict.fill_ms * ULAW_BYTES_PER_MS) + ulaw
        pcm = self._inbound_transcoder.process(ulaw)
        extra: list[Action] = []
        if self.state is CallState.CONNECTING_UPSTREAM:
            self._preroll.push(pcm, ulaw_bytes_to_ms(len(ulaw)))
        elif self.state is CallState.ACTIVE:
            extra.append(SendUpstream(self._codec.encode_audio(pcm)))
        return self._apply(Input.MEDIA, now, extra=extra)

    def _on_mark(self, message: tw.Mark, now: float) -> list[Action]:
        if self.state is CallState.AWAITING_START:
            return self._twilio_violation("mark before start", now)
        echo = self._outbound.playout.mark_echoed(message.name, now)
        if echo.response_done:
            log.debug("T< response %s heard in full (%d ms)", echo.response_id, echo.played_ms)
        if self.state is CallState.ENDING and self._outbound.playout.idle:
            return self._apply(Input.DRAINED, now)
        return self._apply(Input.MARK, now)

    def _on_dtmf(self, message: tw.Dtmf, now: float) -> list[Action]:
        if self.state is CallState.AWAITING_START:
            return self._twilio_violation("dtmf before start", now)
        self._count("dtmf_digits")
        extra: list[Action] = []
        if self.state is CallState.ACTIVE:
            # A keypress reaches the agent as text (evi-protocol.md §2.3 user_input).
            extra.append(SendUpstream(self._codec.encode_user_text(f"[keypad {message.digit}]"), kind="user_text"))
        return self._apply(Input.DTMF, now, extra=extra)

    def _on_stop(self, message: tw.Stop, now: float) -> list[Action]:
        # twilio-media-streams.md P7: `stop` also comes from a REST redirect (transfer): tear down the
        # upstream only; never hang the call up because of it.
        log.info("T< stop (call %s)", message.call_sid)
        return self._apply(Input.STOP, now, reason=EndReason.TWILIO_STOP)

    def _twilio_violation(self, problem: str, now: float) -> list[Action]:
        # twilio-media-streams.md P8: one bad frame must not end a live call; before `start` the
        # stream is unusable (no streamSid), so it is closed.
        self._count("twilio_protocol_errors")
        closing = self.state is CallState.AWAITING_START
        log.warning("T< %s: %s", problem, "closing the stream" if closing else "ignored")
        return self._apply(
            Input.TWILIO_VIOLATION, now, reason=EndReason.TWILIO_PROTOCOL_ERROR, detail=problem, close_code=1008
        )

    # ------------------------------------------------------------------ inputs from the upstream

    def upstream_opened(self, now: float) -> list[Action]:
        """The upstream socket is open (session settings go out once it says it is ready)."""
        return self._apply(Input.UPSTREAM_OPENED, now)

    def upstream_closed(self, now: float, code: int | None = None, reason: str = "") -> list[Action]:
        """The upstream socket closed, or could not be opened (``code`` None)."""
        detail = f"upstream closed (code {code}{', ' + reason if reason else ''})"
        if self.state in (CallState.CLOSED, CallState.ENDING):
            return self._apply(Input.UPSTREAM_CLOSED, now)
        log.info("E< %s", detail)
        return self._begin_ending(Input.UPSTREAM_CLOSED, EndReason.UPSTREAM_CLOSED, detail, now)

    def receive_upstream(self, text: str | bytes, now: float) -> list[Action]:
        """Handle one upstream frame."""
        if self.state is CallState.CLOSED:
            return []
        try:
            event = self._codec.decode(text)
        except UpstreamProtocolError as exc:
            self._count("upstream_protocol_errors")
            log.warning("E< invalid message ignored: %s", exc)
            return self._apply(Input.UPSTREAM_EVENT, now)
        return self._on_upstream_event(event, now)

    def _on_upstream_event(self, event: UpstreamEvent, now: float) -> list[Action]:
        extra: list[Action] = []
        match event:
            case AssistantAudio():
                if self.state is CallState.ACTIVE:
                    self._turn_ended = False
                    try:
                        self._outbound.audio(ResponseId(event.response_id), event.wav, now)
                    except AudioFormatError as exc:
                        self._count("upstream_bad_audio")
                        log.warning("E< audio_output %s/%d dropped: %s", event.response_id, event.index, exc)
                    extra.extend(self._playout_actions(now))
            case UserInterrupted():
                self._count("interruptions")
                extra.extend(self._barge_in(now))
            case AssistantTurnEnd():
                self._turn_ended = True
                self._outbound.turn_end()
                extra.extend(self._playout_actions(now))
                if self._hang_up_requested and self.state is CallState.ACTIVE:
                    return extra + self._begin_ending(Input.HANG_UP, EndReason.HANG_UP, "agent hung up", now)
            case UserTranscript():
                if not event.interim:
                    self._count("user_turns")
                # DESIGN.md "Barge-in": once the upstream has finished generating it sends no
                # interruption, so a caller speaking over our remaining playout is cleared here.
                if self._turn_ended and not self._outbound.playout.idle:
                    extra.extend(self._barge_in(now))
            case UpstreamReady():
                return self._on_upstream_ready(event, now)
            case UpstreamFault():
                detail = f"upstream error {event.code} {event.slug}: {event.message} (request {event.request_id})"
                self._faults.append(f"{event.code} {event.slug}")
                log.warning("E< %s", detail)
                if self.state in (CallState.CONNECTING_UPSTREAM, CallState.ACTIVE):
                    return self._begin_ending(Input.UPSTREAM_FAULT, EndReason.UPSTREAM_ERROR, detail, now)
            case AssistantText():
                self._count("assistant_messages")
            case ToolCall():
                self._count("tool_calls")
                if event.name == HANG_UP_TOOL:
                    return self._on_hang_up(event, now)
                log.info("E< tool_call %s (%s) not handled by this gateway", event.name, event.tool_call_id)
            case UpstreamNotice():
                pass
            case UpstreamUnknown():
                self._count("upstream_unknown_messages")
                log.info("E< unknown message type %r ignored", event.kind)
        return self._apply(Input.UPSTREAM_EVENT, now, extra=extra)

    def _on_hang_up(self, event: ToolCall, now: float) -> list[Action]:
        """evi-protocol.md §6: the agent ends the call once its goodbye has been heard in full."""
        log.info("E< tool_call hang_up (%s): ending after the goodbye plays", event.tool_call_id)
        extra: list[Action] = []
        if not event.builtin and event.response_required:
            extra.append(SendUpstream(self._codec.encode_tool_response(event.tool_call_id, "ok"), kind="tool_response"))
        self._hang_up_requested = True
        if self._turn_ended and self.state is CallState.ACTIVE:
            return extra + self._begin_ending(Input.HANG_UP, EndReason.HANG_UP, "agent hung up", now)
        return self._apply(Input.UPSTREAM_EVENT, now, extra=extra)

    def _on_upstream_ready(self, event: UpstreamReady, now: float) -> list[Action]:
        if self.state is not CallState.CONNECTING_UPSTREAM:
            log.info("E< repeated session start ignored")
            return self._apply(Input.UPSTREAM_EVENT, now)
        self.upstream_session_id = event.session_id
        self.upstream_group_id = event.group_id
        log.info("E< session %s ready (group %s, request %s)", event.session_id, event.group_id, event.request_id)
        # evi-protocol.md §1.4: audio settings go out before any audio_input.
        settings = self._codec.encode_session_start(self._session_start())
        extra: list[Action] = [SendUpstream(settings, kind="session_settings")]
        extra.extend(SendUpstream(self._codec.encode_audio(pcm)) for pcm in self._preroll.drain())
        return self._apply(Input.UPSTREAM_READY, now, extra=extra)

    def _session_start(self) -> SessionStart:
        variables = {k: v for k in CALL_VARIABLE_KEYS if (v := self.custom_parameters.get(k))}
        if self.call_sid is not None:
            variables["call_sid"] = self.call_sid
        return SessionStart(
            input_rate_hz=self.params.input_rate_hz,
            channels=1,
            variables=variables,
            custom_session_id=self.call_sid,
        )

    # ------------------------------------------------------------------ the clock

    def tick(self, now: float) -> list[Action]:
        """Called every ~20 ms: pace playout, enforce deadlines."""
        if self.state is CallState.CLOSED:
            return []
        deadline = self._deadline_passed(now)
        if deadline is not None:
            reason, detail = deadline
            if self.state is CallState.ENDING:
                return self._apply(Input.DEADLINE, now)
            if self.state is CallState.AWAITING_START:
                return self._apply(Input.DEADLINE, now, reason=reason, detail=detail, close_code=1008)
            return self._begin_ending(Input.DEADLINE, reason, detail, now)
        extra = self._playout_actions(now)
        if self.state is CallState.ENDING and self._outbound.playout.idle:
            return self._apply(Input.DRAINED, now, extra=extra)
        return self._apply(Input.TICK, now, extra=extra)

    def _deadline_passed(self, now: float) -> tuple[EndReason, str] | None:
        p = self.params
        if self.state is CallState.AWAITING_START and now - self._created_s >= p.start_timeout_s:
            return EndReason.START_TIMEOUT, f"no valid start within {p.start_timeout_s:g} s"
        if self._started_s is None:
            return None
        if self.state is CallState.CONNECTING_UPSTREAM and now - self._started_s >= p.upstream_connect_timeout_s:
            return EndReason.UPSTREAM_TIMEOUT, f"upstream not ready within {p.upstream_connect_timeout_s:g} s"
        if self.state is CallState.ACTIVE and now - self._started_s >= p.max_duration_s:
            return EndReason.MAX_DURATION, f"call reached max duration {p.max_duration_s:g} s"
        if (
            self.state is CallState.ENDING
            and self._ending_since_s is not None
            and now - self._ending_since_s >= p.drain_timeout_s
        ):
            return EndReason.DRAIN_TIMEOUT, "playout did not drain in time"
        return None

    # ------------------------------------------------------------------ helpers

    def _playout_actions(self, now: float) -> list[Action]:
        if self.stream_sid is None:
            return []
        actions: list[Action] = []
        for decision in self._outbound.poll(now):
            actions.append(self._to_twilio(decision))
        return actions

    def _to_twilio(self, decision: SendMedia | SendMark | SendClear) -> SendTwilio:
        assert self.stream_sid is not None
        match decision:
            case SendMedia():
                return SendTwilio(tw.media_message(self.stream_sid, decision.ulaw), kind="media")
            case SendMark():
                return SendTwilio(tw.mark_message(self.stream_sid, decision.name), kind="mark")
            case SendClear():
                return SendTwilio(tw.clear_message(self.stream_sid), kind="clear")

    def _barge_in(self, now: float) -> list[Action]:
        # twilio-media-streams.md P3/P5: clear Twilio's buffer at once, drop queued and late audio.
        clears = self._outbound.interrupt(now)
        self._turn_ended = True
        return [self._to_twilio(c) for c in clears]

    def _begin_ending(self, event: Input, reason: EndReason, detail: str, now: float) -> list[Action]:
        """Stop the upstream; the caller still hears what is queued, then the stream closes."""
        self._pending_end = (reason, detail)
        self._ending_since_s = now
        self._outbound.turn_end()  # release the resampler tail of a cut-off response
        actions = self._apply(event, now, extra=self._close_upstream(reason))
        if self.state is CallState.ENDING and self._outbound.playout.idle:
            actions += self._apply(Input.DRAINED, now)
        return actions

    def _close_upstream(self, reason: EndReason) -> list[Action]:
        if not self._upstream_requested or self._upstream_close_sent:
            return []
        self._upstream_close_sent = True
        return [CloseUpstream(1000, reason.value)]

    def _apply(
        self,
        event: Input,
        now: float,
        *,
        extra: list[Action] | None = None,
        reason: EndReason | None = None,
        detail: str = "",
        close_code: int = 1000,
    ) -> list[Action]:
        actions = list(extra or [])
        target = next_state(self.state, event)
        if target is None:
            # A remote input the table does not allow here: log and ignore (the call goes on).
            self._count("out_of_order_inputs")
            log.info("= %s ignored in state %s", event.value, self.state.value)
            return []
        previous, self.state = self.state, target
        if target is CallState.CLOSED and previous is not CallState.CLOSED:
            if reason is None:
                reason, detail = self._pending_end
            actions += self._end(reason, detail, now, close_code=close_code)
        return actions

    def _end(self, reason: EndReason, detail: str, now: float, *, close_code: int = 1000) -> list[Action]:
        self.end_reason = reason
        self._end_detail = detail
        self._ended_s = now
        log.info("= call %s ended: %s %s", self.call_sid, reason.value, detail)
        actions = self._close_upstream(reason)
        if reason is not EndReason.TWILIO_CLOSED:
            actions.append(CloseTwilio(close_code, detail[:120] or reason.value))
        return actions

    def _count(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def statistics(self, now: float) -> CallStats:
        """A snapshot of everything counted about this call."""
        end_s = self._ended_s if self._ended_s is not None else now
        return CallStats(
            call_sid=self.call_sid,
            stream_sid=self.stream_sid,
            state=self.state.value,
            end_reason=self.end_reason.value if self.end_reason else None,
            end_detail=self._end_detail,
            duration_s=round(end_s - (self._started_s if self._started_s is not None else self._created_s), 3),
            upstream_session_id=self.upstream_session_id,
            upstream_group_id=self.upstream_group_id,
            upstream_faults=tuple(self._faults),
            counts=dict(self._counts),
            inbound=self._inbound.statistics(),
            preroll=self._preroll.statistics(),
            playout=self._outbound.playout.statistics(),
            outbound=self._outbound.statistics(),
        )
