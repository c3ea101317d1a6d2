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
from collections.abc import Callable
from typing import assert_never

from gateway.codecs.framing import ULAW_BYTES_PER_MS, ulaw_bytes_to_ms
from gateway.codecs.g711 import ulaw_silence
from gateway.codecs.transcode import InboundTranscoder
from gateway.core.actions import (
    Action,
    CloseTwilio,
    CloseUpstream,
    OpenUpstream,
    RunTool,
    SendUpstream,
    TransferCall,
    to_twilio,
)
from gateway.core.inbound import InboundStream, PreRoll
from gateway.core.lines import DEFAULT_LINE, LineConfig, LineDirectory
from gateway.core.observe import Observations
from gateway.core.outbound import OutboundAudio
from gateway.core.params import CallParams, TokenRedeemer
from gateway.core.playout import PlayoutDecision, SendClear, SendMedia
from gateway.core.resume import Resumption
from gateway.core.states import (
    AGENT_AUDIO,
    APOLOGISE,
    CALLER_AUDIO,
    CLOSE_CODES,
    DEADLINES,
    CallState,
    Condition,
    EndReason,
    Input,
    Lifecycle,
    LinkInput,
    LinkState,
    Transition,
)
from gateway.core.stats import CallStats
from gateway.core.tools import HangUp, Reply, Run, ToolCalls, ToolOutcome, Transfer, call_context
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

# docs/twilio-media-streams.md §1.2: the only media format a <Connect><Stream> carries.
EXPECTED_MEDIA_FORMAT = ("audio/x-mulaw", 8000, 1)
# Keys of start.customParameters that become upstream session variables (set by our webhook).
CALL_VARIABLE_KEYS = ("caller_number", "called_number")

Work = Callable[[], list[Action]]
"""What an accepted input does besides moving the state; runs only after the table accepted the input."""


class Call:
    """One phone call bridged to one upstream session."""

    def __init__(
        self,
        params: CallParams,
        codec: UpstreamCodec,
        tokens: TokenRedeemer | None = None,
        *,
        now: float,
        lines: LineDirectory | None = None,
    ) -> None:
        self.params = params
        self._codec = codec
        self._tokens = tokens
        self._lines = lines
        self.line: LineConfig = DEFAULT_LINE
        self._tools = ToolCalls(codec, {}, {}, transfers_enabled=False)
        self._transfer: TransferCall | None = None
        self._agent_mark = (0, 0)
        self._resume = Resumption(params.reconnect_backoff_s, now)
        self._life = Lifecycle(now)
        self._timeouts_s = {d.timeout_param: float(getattr(params, d.timeout_param)) for d in DEADLINES.values()}
        self.stream_sid: StreamSid | None = None
        self.call_sid: CallSid | None = None
        self.custom_parameters: dict[str, str] = {}
        self.upstream_session_id: str | None = None
        self.upstream_group_id: str | None = None
        self._ended_s: float | None = None
        self._inbound = InboundStream(params.inbound)
        self._inbound_transcoder = InboundTranscoder(params.input_rate_hz)
        self._preroll = PreRoll(params.preroll_ms)
        self._outbound = OutboundAudio(params.playout)
        self.observed = Observations()
        """Measurements for metrics (latencies, tool calls, errors), taken by the adapter."""
        self._counts: dict[str, int] = {}
        self._faults: list[str] = []

    @property
    def state(self) -> CallState:
        """Where the call is (assigned only by :class:`~gateway.core.states.Lifecycle`)."""
        return self._life.state

    @property
    def end_reason(self) -> EndReason | None:
        """Why the call ended (the first cause), once it is ending."""
        return self._life.end_reason

    # ----------------------------------------------------------------- inputs from the Twilio socket

    def receive_twilio(self, text: str | bytes, now: float) -> list[Action]:
        """Handle one Media Stream frame."""
        if self._life.state is CallState.CLOSED:
            return []
        try:
            message = tw.parse_twilio_message(text)
        except TwilioProtocolError as exc:
            return self._twilio_violation(str(exc), now)
        match message:
            case tw.Media():
                return self._on_media(message, now)
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
        self.custom_parameters = dict(message.custom_parameters)
        if self._lines is not None:
            self.line = self._lines.line_for(self.custom_parameters.get("called_number"))
        line = self.line
        self._tools = ToolCalls(self._codec, line.tools, line.transfer, transfers_enabled=self.params.transfers_enabled)
        return self._handle(Input.START, now)

    def _on_media(self, message: tw.Media, now: float) -> list[Action]:
        if self._life.state is not CallState.AWAITING_START and message.stream_sid != self.stream_sid:
            # docs/twilio-media-streams.md P10: a frame of another stream is not ours to play or forward.
            self._count("twilio_wrong_stream_sid")
            log.warning("T< media for stream %s on stream %s dropped", message.stream_sid, self.stream_sid)
            return self._handle(Input.TWILIO_IGNORED, now)
        return self._handle(Input.MEDIA, now, lambda: self._caller_audio(message))

    def _caller_audio(self, message: tw.Media) -> list[Action]:
        verdict = self._inbound.accept(message.timestamp_ms, message.chunk, len(message.payload))
        if verdict.action == "drop":
            return []
        ulaw = message.payload
        if verdict.fill_ms:
            # docs/twilio-media-streams.md §1.3 (31930): fill what Twilio discarded with silence, keeping time.
            ulaw = ulaw_silence(verdict.fill_ms * ULAW_BYTES_PER_MS) + ulaw
        pcm = self._inbound_transcoder.process(ulaw)
        route = CALLER_AUDIO[self._life.state]
        if route == "hold":
            self._preroll.push(pcm, ulaw_bytes_to_ms(len(ulaw)))
        elif route == "forward":
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

    def _twilio_violation(self, problem: str, now: float) -> list[Action]:
        # docs/twilio-media-streams.md P8: one bad frame must not end a live call; before `start` the
        # stream is unusable (no streamSid), so the table closes it.
        self._count("twilio_protocol_errors")
        closing = self._life.decide(Input.TWILIO_VIOLATION)
        ends = closing is not None and closing.target is CallState.CLOSED
        log.warning("T< %s: %s", problem, "closing the stream" if ends else "ignored")
        return self._handle(Input.TWILIO_VIOLATION, now, detail=problem)

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

    def _try_resume(self, now: float) -> list[Action]:
        """In RECONNECTING: open a resumed session when the backoff has passed and no attempt is running."""
        if self._life.link is not LinkState.CLOSED or not self._resume.take(now):
            return []
        self._count("upstream_resume_attempts")
        self.observed.resume("attempt")
        log.info("E> resuming chat group %s (attempt %d)", self.upstream_group_id, self._resume.attempts)
        self._life.link_event(LinkInput.OPEN)
        return [OpenUpstream(self._session_start(resume=True))]

    def tool_finished(self, tool_call_id: str, outcome: ToolOutcome, now: float) -> list[Action]:
        """A :class:`~gateway.core.actions.RunTool` finished; its answer goes to the upstream if still open."""
        return self._handle(Input.TOOL_RESULT, now, lambda: self._tool_answer(tool_call_id, outcome))

    def _tool_answer(self, tool_call_id: str, outcome: ToolOutcome) -> list[Action]:
        finished = self._tools.finished(tool_call_id, outcome)
        if finished is None:
            return []
        name, answer = finished
        self.observed.tool_call(name, "ok" if outcome.ok else outcome.code or "error")
        if not outcome.ok:
            self._count("tool_errors")
            log.warning("E> tool_error for %s: %s %s", tool_call_id, outcome.code, outcome.error)
        if self._life.link is not LinkState.OPEN:
            log.info("E> answer to tool call %s dropped: the upstream is not open", tool_call_id)
            return []
        return [SendUpstream(answer, kind="tool_error" if not outcome.ok else "tool_response")]

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
        if self._life.state is CallState.CLOSED:
            return []
        try:
            event = self._codec.decode(text)
        except UpstreamProtocolError as exc:
            self._count("upstream_protocol_errors")
            log.warning("E< invalid message ignored: %s", exc)
            return self._handle(Input.UPSTREAM_EVENT, now)
        return self._on_upstream_event(event, now)

    def _on_upstream_event(self, event: UpstreamEvent, now: float) -> list[Action]:
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
                self._faults.append(f"{event.code} {event.slug}")
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
        decision = self._tools.decide(
            event.name, event.tool_call_id, event.parameters_json, builtin=event.builtin, reply=event.response_required
        )
        log.info("E< tool_call %s (%s, %s)", event.name, event.tool_call_id, type(decision).__name__.lower())
        match decision:
            case HangUp():
                self.observed.tool_call(event.name, "ok")
                reply = decision.reply
                return self._handle(Input.HANG_UP, now, lambda: _tool_reply(reply), detail="agent hung up")
            case Transfer():
                if self._life.decide(Input.TRANSFER) is None:
                    self.observed.tool_call(event.name, "transfer_not_possible")
                    return self._handle(Input.UPSTREAM_EVENT, now, lambda: _tool_reply(decision.refused))
                self.observed.tool_call(event.name, "ok")
                self.observed.transfer("started")
                assert self.call_sid is not None
                self._transfer = TransferCall(self.call_sid, decision.destination, decision.target)
                detail = f"transfer to {decision.destination}"
                return self._handle(Input.TRANSFER, now, lambda: _tool_reply(decision.accepted), detail=detail)
            case Run():
                context = call_context(
                    self.call_sid, self.custom_parameters, self.upstream_session_id, self.upstream_group_id
                )
                run = RunTool(event.tool_call_id, decision.endpoint, decision.parameters, context)
                return self._handle(Input.UPSTREAM_EVENT, now, lambda: [run])
            case Reply():
                if decision.text is not None:
                    self.observed.tool_call(event.name, decision.code or "ok")
                text = decision.text
                return self._handle(Input.UPSTREAM_EVENT, now, lambda: _tool_reply(text))
        assert_never(decision)

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

    def _session_start(self, *, resume: bool = False) -> SessionStart:
        variables = dict(self.line.variables)
        variables.update({k: v for k in CALL_VARIABLE_KEYS if (v := self.custom_parameters.get(k))})
        if self.call_sid is not None:
            variables["call_sid"] = self.call_sid
        return SessionStart(
            input_rate_hz=self.params.input_rate_hz,
            channels=1,
            variables=variables,
            custom_session_id=self.call_sid,
            config_id=self.line.config_id,
            resume_group_id=self.upstream_group_id if resume else None,
        )

    # ------------------------------------------------------------------ the clock

    def tick(self, now: float) -> list[Action]:
        """Called every ~20 ms: pace playout, enforce the state's deadline."""
        if self._life.state is CallState.CLOSED:
            return []
        overdue = self._life.overdue(now, self._timeouts_s)
        if overdue is not None:
            transition, reason, detail = overdue
            log.info("= deadline in state %s: %s", transition.source.value, detail)
            return self._move(transition, now, [], reason=reason, detail=detail)
        return self._handle(Input.TICK, now, lambda: self._on_tick(now))

    def _on_tick(self, now: float) -> list[Action]:
        actions = self._agent_media(self._outbound.poll(now), now)
        if self._life.state is CallState.RECONNECTING:
            actions += self._try_resume(now)
        return actions

    # ------------------------------------------------------------------ deciding and moving

    def _handle(self, event: Input, now: float, work: Work | None = None, *, detail: str = "") -> list[Action]:
        """Decide ``event`` by the table first; only an accepted input does its work and moves the call."""
        transition = self._life.decide(event)
        if transition is None:
            return self._refused(event, now)
        return self._move(transition, now, work() if work is not None else [], detail=detail)

    def _refused(self, event: Input, now: float) -> list[Action]:
        # A refused Twilio input is a protocol violation of the Twilio side (before `start`, that closes the
        # stream); a refused upstream input is logged and ignored. Nothing else is changed.
        if event.from_twilio and event is not Input.TWILIO_VIOLATION:
            return self._twilio_violation(f"{event.value} in state {self._life.state.value}", now)
        self._count("out_of_order_inputs")
        log.info("= %s ignored in state %s", event.value, self._life.state.value)
        return []

    def _move(
        self,
        transition: Transition,
        now: float,
        actions: list[Action],
        *,
        reason: EndReason | None = None,
        detail: str = "",
    ) -> list[Action]:
        """Commit ``transition``, run the target state's entry actions, then any moves a condition triggers."""
        while True:
            self._life.commit(transition, now, reason, detail)
            if transition.moves:
                actions += self._entered(transition, now)
            triggered = self._life.triggered(lambda condition: self._holds(condition, now))
            if triggered is None:
                return actions
            transition, reason, detail = triggered, None, ""

    def _holds(self, condition: Condition, now: float) -> bool:
        match condition:
            case Condition.PLAYOUT_IDLE:
                return self._outbound.idle
            case Condition.AGENT_FINISHED:
                return self._agent_finished(now)
            case Condition.HANDOFF_HEARD:
                return self._outbound.idle and self._agent_finished(now)
        assert_never(condition)

    def _agent_finished(self, now: float) -> bool:
        """Since the state began, the agent ended a turn, or started none within the grace period."""
        if not self._outbound.agent_turn_over:
            return False
        started, ended = self._outbound.agent_turns
        if ended > self._agent_mark[1]:
            return True
        return started == self._agent_mark[0] and now - self._life.entered_s >= self.params.agent_silence_grace_s

    def _entered(self, transition: Transition, now: float) -> list[Action]:
        """Entry actions: what reaching a state asks of the sockets."""
        match transition.target:
            case CallState.CONNECTING_UPSTREAM:
                self._life.link_event(LinkInput.OPEN)
                return [OpenUpstream(self._session_start())]
            case CallState.ACTIVE if transition.source is CallState.REDIRECTING:
                # The transfer failed: the agent carries on, and says so.
                resume = SendUpstream(self._codec.encode_resume(), kind="resume_assistant")
                say = SendUpstream(self._codec.encode_assistant_text(self.line.transfer_failed_message), kind="say")
                return [resume, say]
            case CallState.ACTIVE:
                # docs/evi-protocol.md §1.4: audio settings go out before any audio_input, then the pre-roll.
                settings = self._codec.encode_session_start(self._session_start())
                held = [SendUpstream(self._codec.encode_audio(pcm)) for pcm in self._preroll.drain()]
                return [SendUpstream(settings, kind="session_settings"), *held]
            case CallState.RECONNECTING:
                return self._try_resume(now)
            case CallState.TRANSFERRING | CallState.SAYING_GOODBYE:
                self._agent_mark = self._outbound.agent_turns
                if transition.target is CallState.SAYING_GOODBYE and transition.cause is Input.DEADLINE:
                    return self._say(self.line.max_duration_message)
                if transition.target is CallState.SAYING_GOODBYE and transition.cause is Input.SHUTDOWN:
                    return self._say(self.params.shutdown_message)
                return []
            case CallState.REDIRECTING:
                assert self._transfer is not None
                log.info("= moving call %s to %s", self.call_sid, self._transfer.destination)
                self._count("transfers")
                pause = [SendUpstream(self._codec.encode_pause(), kind="pause_assistant")]
                return [*(pause if self._life.link is LinkState.OPEN else []), self._transfer]
            case CallState.ENDING:
                self._outbound.upstream_gone()
                actions = self._close_upstream()
                if self._life.end_reason in APOLOGISE and self.params.apology_ulaw:
                    actions += self._twilio(self._outbound.play_prompt(self.params.apology_ulaw, now))
                return actions
            case CallState.CLOSED:
                return self._closed(transition, now)
            case CallState.AWAITING_START:
                return []
        assert_never(transition.target)

    def _say(self, text: str) -> list[Action]:
        if self._life.link is not LinkState.OPEN or not text:
            return []
        return [SendUpstream(self._codec.encode_assistant_text(text), kind="say")]

    def _closed(self, transition: Transition, now: float) -> list[Action]:
        self._ended_s = now
        reason = self._life.end_reason or EndReason.UPSTREAM_CLOSED
        detail = self._life.end_detail
        log.info("= call %s ended: %s %s", self.call_sid, reason.value, detail)
        actions = self._close_upstream()
        if transition.cause is not Input.TWILIO_CLOSED:
            # The close reason is our own end-reason word (ASCII, far below RFC 6455's 123 bytes): a peer's text
            # (EVI's error messages, URLs) never travels to the other peer.
            actions.append(CloseTwilio(CLOSE_CODES.get(reason, 1000), reason.value))
        return actions

    def _close_upstream(self) -> list[Action]:
        reason = self._life.end_reason or EndReason.UPSTREAM_CLOSED
        return [CloseUpstream(1000, reason.value)] if self._life.link_event(LinkInput.CLOSE) else []

    def _twilio(self, decisions: list[PlayoutDecision]) -> list[Action]:
        if self.stream_sid is None or not decisions:
            return []
        return list(to_twilio(self.stream_sid, decisions))

    def _count(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def statistics(self, now: float) -> CallStats:
        """A snapshot of everything counted about this call."""
        end_s = self._ended_s if self._ended_s is not None else now
        began_s = self._life.since_s("started")
        if began_s is None:
            began_s = self._life.since_s("created")
        assert began_s is not None
        return CallStats(
            call_sid=self.call_sid,
            stream_sid=self.stream_sid,
            state=self.state.value,
            end_reason=self.end_reason.value if self.end_reason else None,
            end_detail=self._life.end_detail,
            duration_s=round(end_s - began_s, 3),
            upstream_session_id=self.upstream_session_id,
            upstream_group_id=self.upstream_group_id,
            upstream_faults=tuple(self._faults),
            counts=dict(self._counts),
            inbound=self._inbound.statistics(),
            preroll=self._preroll.statistics(),
            playout=self._outbound.playout_statistics(),
            outbound=self._outbound.statistics(),
        )


def _tool_reply(text: str | None) -> list[Action]:
    """An encoded ``tool_response``/``tool_error`` as the frame to send (none for None)."""
    if text is None:
        return []
    kind = "tool_error" if '"tool_error"' in text[:40] else "tool_response"
    return [SendUpstream(text, kind=kind)]
