"""The per-call core: sans-I/O, clock-free (docs/design.md "Shape").

``Call`` takes Twilio text, upstream text and the current time, and returns the actions its adapters must
carry out. It never touches a socket or reads a clock. Every input is classified, then decided by the tables
of :mod:`gateway.core.states` *before* anything is changed: an input the table refuses mutates nothing. The
agent's voice (playout, barge-in) is behind one interface, :class:`~gateway.core.outbound.OutboundAudio`.
Remote misbehaviour never raises: it is logged, counted, and, where the call cannot go on, turned into close
actions with a recorded end reason.
"""

from __future__ import annotations

import logging
from typing import assert_never

from gateway.codecs.framing import ULAW_BYTES_PER_MS, ulaw_bytes_to_ms
from gateway.codecs.g711 import ulaw_silence
from gateway.core.actions import Action, SendUpstream
from gateway.core.call_machine import CallMachine
from gateway.core.playout import PlayoutDecision, SendClear, SendMedia
from gateway.core.states import (
    AGENT_AUDIO,
    CALLER_AUDIO,
    CallState,
    Input,
    LinkInput,
    LinkState,
)
from gateway.core.tool_turns import CallIds
from gateway.core.tools import ToolOutcome
from gateway.errors import AudioFormatError, TwilioProtocolError, UpstreamProtocolError
from gateway.ids import ResponseId
from gateway.wire import twilio_media as tw
from gateway.wire.stream_token import TokenVerdict
from gateway.wire.upstream import (
    AssistantAudio,
    AssistantText,
    AssistantTurnEnd,
    ToolCall,
    UpstreamEvent,
    UpstreamFault,
    UpstreamNotice,
    UpstreamReady,
    UpstreamUnknown,
    UserInterrupted,
    UserTranscript,
)

log = logging.getLogger("gateway.call")

# docs/twilio-media-streams.md §1.2: the only media format a <Connect><Stream> carries.
EXPECTED_MEDIA_FORMAT = ("audio/x-mulaw", 8000, 1)
QUIET_TICK_FRAMES = 10
"""An active call is ticked every this many frames (200 ms), and in any other round only if its playout has
something due (:meth:`Call.tick_due`): its deadlines and watchdogs count seconds, and everything else that needs
the call (agent audio, a barge-in) is an input, not a tick."""
MAX_FAULTS_KEPT = 20
"""Upstream errors listed in a call's statistics (all of them are counted in the metrics)."""


class Call(CallMachine):
    """One phone call bridged to one upstream session: every input it takes (the engine is
    :class:`~gateway.core.call_machine.CallMachine`)."""

    # ----------------------------------------------------------------- inputs from the Twilio socket

    def receive_twilio(self, text: str | bytes, now: float) -> list[Action]:
        """Handle one Media Stream frame."""
        if self._life.state is CallState.CLOSED:
            return []
        try:
            obj = tw.load_twilio_object(text)
            fields = tw.plain_media(obj)
            if fields is None:
                message = tw.twilio_event(obj)
        except TwilioProtocolError as exc:
            return self._twilio_violation(str(exc), now)
        if fields is not None:  # the hot path: a good media frame, forwarded without building an event object
            return self._on_media(fields[0], fields[3], fields[4], fields[5], now)
        match message:
            case tw.Media():
                return self._on_media(message.stream_sid, message.chunk, message.timestamp_ms, message.payload, now)
            case tw.Mark():
                return self._handle(Input.MARK, now, lambda: self._on_mark(message))
            case tw.Start():
                return self._on_start(message, now)
            case tw.Connected():
                return self._handle(Input.CONNECTED, now)
            case tw.Dtmf():
                return self._handle(Input.DTMF, now, lambda: self._on_dtmf(message))
            case tw.Stop():
                if self.stream_sid is not None and message.stream_sid != self.stream_sid:
                    self._count("twilio_wrong_stream_sid")  # docs/twilio-media-streams.md P10: not our stream
                    log.warning("T< stop for another stream ignored")
                    return self._handle(Input.TWILIO_IGNORED, now)
                log.info("T< stop (call %s)", message.call_sid)
                return self._handle(Input.STOP, now)
            case tw.UnknownEvent():
                self._count("twilio_unknown_events")
                log.info("T< unknown event %r ignored", message.event)
                return self._handle(Input.TWILIO_IGNORED, now)
        assert_never(message)

    def twilio_closed(self, now: float) -> list[Action]:
        """The Media Stream socket closed (caller hung up, or Twilio dropped it)."""
        return self._handle(Input.TWILIO_CLOSED, now)

    def _on_start(self, message: tw.Start, now: float) -> list[Action]:
        if self._life.decide(Input.START) is None:
            return self._refused(Input.START, now)
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
            return self._handle(Input.START_REJECTED, now, detail=problem)
        if self._admission is not None and not self._admission.admit(message.call_sid):
            # Slots are held by calls that started, not by sockets (docs/operations.md §4).
            log.warning("T< start refused: every call slot is taken (call %s)", message.call_sid)
            return self._handle(Input.AT_CAPACITY, now, detail="every call slot is taken")
        self.custom_parameters = dict(message.custom_parameters)
        if self._lines is not None:
            self.line = self._lines.line_for(self.custom_parameters.get("called_number"))
        self._tools.configure(self.line, transfers_enabled=self.params.transfers_enabled)
        self._watch.started(now)
        return self._handle(Input.START, now)

    def _on_media(self, stream_sid: str, chunk: int, timestamp_ms: int, ulaw: bytes, now: float) -> list[Action]:
        if self._life.state is not CallState.AWAITING_START and stream_sid != self.stream_sid:
            # docs/twilio-media-streams.md P10: a frame of another stream is not ours to play or forward.
            self._count("twilio_wrong_stream_sid")
            log.warning("T< media for stream %s on stream %s dropped", stream_sid, self.stream_sid)
            return self._handle(Input.TWILIO_IGNORED, now)
        verdict = self._watch.media(len(ulaw) / ULAW_BYTES_PER_MS, now)
        if verdict == "accept":
            # _handle(Input.MEDIA, …) without building a closure per frame: decide first, then do the work; an
            # inert move (a frame while active) has nothing to commit.
            transition = self._life.decide(Input.MEDIA)
            if transition is None:
                return self._refused(Input.MEDIA, now)
            actions = self._caller_audio(chunk, timestamp_ms, ulaw)
            return actions if transition.inert else self._move(transition, now, actions)
        # docs/operations.md §4: caller audio beyond real time plus a burst is refused; past the limit the call ends.
        self._count("caller_frames_over_budget")
        if verdict == "refuse":
            if self._counts["caller_frames_over_budget"] == 1:
                log.warning("T< caller audio arrives faster than real time: refusing what exceeds the burst")
            return self._handle(Input.MEDIA, now)
        detail = f"caller audio {self._watch.caller_refused_ms / 1000:.1f} s ahead of real time"
        return self._watchdog(Input.TWILIO_FLOOD, now, detail)

    def _caller_audio(self, chunk: int, timestamp_ms: int, ulaw: bytes) -> list[Action]:
        verdict = self._inbound.accept(timestamp_ms, chunk, len(ulaw))
        if verdict.action == "drop":
            return []
        if verdict.fill_ms:
            # docs/twilio-media-streams.md §1.3 (31930): fill what Twilio discarded with silence, keeping time.
            ulaw = ulaw_silence(verdict.fill_ms * ULAW_BYTES_PER_MS) + ulaw
        pcm = self._inbound_transcoder.process(ulaw)
        route = CALLER_AUDIO[self._life.state]
        if route == "hold":
            self._preroll.push(pcm, ulaw_bytes_to_ms(len(ulaw)))
        elif route == "forward":
            self._watch.caller_frame(pcm, len(ulaw) / ULAW_BYTES_PER_MS)
            return [SendUpstream(self._codec.encode_audio(pcm))]
        else:
            self._count("caller_frames_dropped")  # e.g. while the upstream is being resumed
        return []

    def _on_mark(self, message: tw.Mark) -> list[Action]:
        echo = self._outbound.mark_echoed(message.name)
        if echo.response_done:
            log.debug("T< response %s heard in full (%d ms)", echo.response_id, echo.played_ms)
        return []

    def _on_dtmf(self, message: tw.Dtmf) -> list[Action]:
        self._count("dtmf_digits")
        if CALLER_AUDIO[self._life.state] != "forward":
            return []
        # A keypress reaches the agent as text (docs/evi-protocol.md §2.3 user_input).
        return [SendUpstream(self._codec.encode_user_text(f"[keypad {message.digit}]"), kind="user_text")]

    # ------------------------------------------------------------------ inputs from the upstream

    def upstream_opened(self, now: float) -> list[Action]:
        """The upstream socket is open (session settings go out once it says it is ready)."""
        self._life.link_event(LinkInput.OPENED)
        return []

    def upstream_closed(self, now: float, code: int | None = None, reason: str = "") -> list[Action]:
        """The upstream socket closed, or could not be opened or written to (``code`` None)."""
        asked = self._life.link is LinkState.CLOSING
        self._life.link_event(LinkInput.CLOSED)
        detail = f"upstream closed (code {code}{', ' + reason if reason else ''})"
        if self._life.state not in (CallState.ENDING, CallState.CLOSED):
            log.info("E< %s", detail)
        group_known = self.upstream_group_id is not None
        event = self._resume.classify(self._life.state, code, asked=asked, group_known=group_known)
        if event is Input.UPSTREAM_DROPPED:
            return self._handle(event, now, lambda: self._dropped(now), detail=detail)
        return self._handle(event, now, detail=detail)

    def _dropped(self, now: float) -> list[Action]:
        self._resume.dropped(self._life.state, now)
        return []

    def tool_finished(self, tool_call_id: str, outcome: ToolOutcome, now: float) -> list[Action]:
        """A :class:`~gateway.core.actions.RunTool` finished; its answer goes to the upstream if still open."""
        return self._handle(Input.TOOL_RESULT, now, lambda: self._tool_answer(tool_call_id, outcome))

    def _tool_answer(self, tool_call_id: str, outcome: ToolOutcome) -> list[Action]:
        actions, failed = self._tools.answer(tool_call_id, outcome, link_open=self._life.link is LinkState.OPEN)
        if failed:
            self._count("tool_errors")
        return actions

    def twilio_stalled(self, now: float, detail: str) -> list[Action]:
        """Twilio is not reading our frames: a send or the outbound queue passed its bound (docs/operations.md §4).
        The adapter aborts the socket; the call ends at once."""
        return self._watchdog(Input.TWILIO_STALLED, now, detail)

    def operator_say(self, text: str, now: float) -> list[Action] | None:
        """Have the agent say ``text`` verbatim now; None when it cannot (no live conversation to speak in)."""
        if self._life.state not in AGENT_AUDIO or self._life.link is not LinkState.OPEN:
            return None
        self._count("operator_messages")
        log.info("= operator message for call %s (%d chars)", self.call_sid, len(text))
        return self._handle(Input.OPERATOR_SAY, now, lambda: self._say(text))

    def shut_down(self, now: float) -> list[Action]:
        """The gateway is draining and its grace is over: say ``params.shutdown_message``, then end."""
        return self._handle(Input.SHUTDOWN, now, detail="the gateway is shutting down")

    def transfer_failed(self, now: float, detail: str) -> list[Action]:
        """The REST redirect of a :class:`~gateway.core.actions.TransferCall` failed."""
        log.warning("= transfer of call %s failed: %s", self.call_sid, detail)
        self.observed.transfer("failed")
        self._count("transfers_failed")
        if self._life.link is LinkState.OPEN:
            return self._handle(Input.TRANSFER_FAILED, now, detail=detail)
        return self._handle(Input.UPSTREAM_LOST, now, detail=f"transfer failed: {detail}")

    def receive_upstream(self, text: str | bytes, now: float) -> list[Action]:
        """Handle one upstream frame."""
        refused = self.upstream_size(len(text), now)
        if refused is not None:
            return refused
        try:
            event = self._codec.decode(text)
        except UpstreamProtocolError as exc:
            return self.upstream_undecodable(exc, now)
        return self.upstream_event(event, now)

    def upstream_size(self, size_bytes: int, now: float) -> list[Action] | None:
        """The first half of :meth:`receive_upstream`, for an adapter that decodes a big frame off its loop:
        None when a frame of ``size_bytes`` may be decoded (its budget is spent), else what refusing it does."""
        if self._life.state is CallState.CLOSED:
            return []
        if self._watch.upstream_message(size_bytes, now):
            return None
        # docs/operations.md §4: an oversized message, or audio faster than the byte budget, is not decoded.
        self._count("upstream_messages_over_budget")
        log.warning("E< %d-byte message over the audio budget dropped; the current response is cut", size_bytes)
        self._outbound.cut_current()
        return self._handle(Input.UPSTREAM_EVENT, now)

    def upstream_undecodable(self, problem: UpstreamProtocolError, now: float) -> list[Action]:
        """A frame the codec refused (the second half of :meth:`receive_upstream`)."""
        if self._life.state is CallState.CLOSED:
            return []
        self._count("upstream_protocol_errors")
        log.warning("E< invalid message ignored: %s", problem)
        return self._handle(Input.UPSTREAM_EVENT, now)

    def upstream_event(self, event: UpstreamEvent, now: float) -> list[Action]:
        """A decoded frame (the second half of :meth:`receive_upstream`). Frames still arriving on a socket the
        call asked to close belong to a session it has left (a stalled one being resumed, one that has said
        goodbye): they are counted and ignored, so none can revive that session."""
        if self._life.state is CallState.CLOSED:
            return []
        if self._life.link is LinkState.CLOSING:
            self._count("upstream_frames_after_close")
            return []
        return self._on_upstream_event(event, now)

    def _on_upstream_event(self, event: UpstreamEvent, now: float) -> list[Action]:
        self._watch.heard_upstream(now)
        match event:
            case AssistantAudio():
                return self._handle(Input.UPSTREAM_EVENT, now, lambda: self._agent_audio(event, now))
            case UserInterrupted():
                self._count("interruptions")
                interrupted = self._outbound.user_interrupted
                return self._handle(Input.UPSTREAM_EVENT, now, lambda: self._barge(interrupted(now)))
            case AssistantTurnEnd():
                return self._handle(Input.UPSTREAM_EVENT, now, lambda: self._twilio(self._outbound.agent_turn_end(now)))
            case UserTranscript():
                if not event.interim:
                    self._count("user_turns")
                    self.observed.user_turn_final(now, self._outbound.agent_turns[0])
                return self._handle(Input.UPSTREAM_EVENT, now, lambda: self._barge(self._outbound.user_spoke(now)))
            case UpstreamReady():
                return self._handle(Input.UPSTREAM_READY, now, lambda: self._on_upstream_ready(event))
            case UpstreamFault():
                detail = f"upstream error {event.code} {event.slug}: {event.message} (request {event.request_id})"
                if len(self._faults) < MAX_FAULTS_KEPT:  # the end-of-call line stays one bounded line
                    self._faults.append(f"{event.code[:32]} {event.slug[:64]}")
                self.observed.upstream_error(event.code)
                log.warning("E< %s", detail)
                # docs/evi-protocol.md §8: an error ends the call only if it is fatal or the session never started.
                if event.fatal or self._life.state is CallState.CONNECTING_UPSTREAM:
                    return self._handle(Input.UPSTREAM_FAULT, now, detail=detail)
            case ToolCall():
                self._count("tool_calls")
                return self._on_tool_call(event, now)
            case AssistantText():
                self._count("assistant_messages")
            case UpstreamNotice():
                pass
            case UpstreamUnknown():
                self._count("upstream_unknown_messages")
                log.info("E< unknown message type %r ignored", event.kind)
        return self._handle(Input.UPSTREAM_EVENT, now)

    def _barge(self, decisions: list[PlayoutDecision]) -> list[Action]:
        if any(isinstance(d, SendClear) for d in decisions):
            self.observed.barge_in()
        return self._twilio(decisions)

    def _agent_media(self, decisions: list[PlayoutDecision], now: float) -> list[Action]:
        if any(isinstance(d, SendMedia) for d in decisions):
            self.observed.agent_media_sent(now, self._outbound.agent_turns[0])
        return self._twilio(decisions)

    def _agent_audio(self, event: AssistantAudio, now: float) -> list[Action]:
        if self._life.state not in AGENT_AUDIO:
            return []
        try:
            return self._agent_media(self._outbound.agent_audio(ResponseId(event.response_id), event.wav, now), now)
        except AudioFormatError as exc:
            self._count("upstream_bad_audio")
            log.warning("E< audio_output %s/%d dropped: %s", event.response_id, event.index, exc)
            return []

    def _on_tool_call(self, event: ToolCall, now: float) -> list[Action]:
        """docs/evi-protocol.md §6: every function call is answered, now or when its endpoint replies."""
        ids = CallIds(self.call_sid, self.custom_parameters, self.upstream_session_id, self.upstream_group_id)
        route = self._tools.route(event, ids, may_transfer=self._life.decide(Input.TRANSFER) is not None)
        if route.transfer is not None:
            self._transfer = route.transfer
        return self._handle(route.event, now, lambda: route.actions, detail=route.detail)

    def _on_upstream_ready(self, event: UpstreamReady) -> list[Action]:
        if self.upstream_group_id is not None:
            self.observed.resume("resumed")
        if self.upstream_group_id is not None and event.group_id != self.upstream_group_id:
            self._count("upstream_resume_new_group")
            log.warning("E< resumed session has chat group %s, not %s", event.group_id, self.upstream_group_id)
        self.upstream_session_id = event.session_id
        self.upstream_group_id = event.group_id
        log.info("E< session %s ready (group %s, request %s)", event.session_id, event.group_id, event.request_id)
        return []

    # ------------------------------------------------------------------ the clock

    def tick_due(self, round_index: int, now: float) -> bool:
        """Whether the ticker's round ``round_index`` (any per-call offset added), at ``now``, must tick this call:
        every round outside ``active``; while active, every :data:`QUIET_TICK_FRAMES`-th round, and any round in
        which the outbound audio has something to pace (a tick between them would change nothing)."""
        return (
            round_index % QUIET_TICK_FRAMES == 0 or self._life.state is not CallState.ACTIVE or self._outbound.due(now)
        )

    def tick(self, now: float) -> list[Action]:
        """Called every ~20 ms, or less often while active (:meth:`tick_due`): pace playout, enforce the state's
        deadline and the watchdogs."""
        if self._life.state is CallState.CLOSED:
            return []
        overdue = self._life.overdue(now, self._timeouts_s)
        if overdue is not None:
            transition, reason, detail = overdue
            log.info("= deadline in state %s: %s", transition.source.value, detail)
            return self._move(transition, now, [], reason=reason, detail=detail)
        due = self._watch.due(
            now,
            self._life.state,
            echo_overdue_s=self._outbound.echo_overdue_s(now),
            link_open=self._life.link is LinkState.OPEN,
            tool_waiting=self._tools.waiting,
            group_known=self.upstream_group_id is not None,
        )
        if due is not None and self._life.decide(due[0]) is not None:
            return self._watchdog(due[0], now, due[1])
        return self._handle(Input.TICK, now, lambda: self._on_tick(now))

    def _on_tick(self, now: float) -> list[Action]:
        actions = self._agent_media(self._outbound.poll(now), now)
        if self._life.state is CallState.RECONNECTING:
            actions += self._try_resume(now)
        return actions
