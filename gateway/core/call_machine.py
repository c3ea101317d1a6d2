"""The engine of a call: its state, the table's decisions, the entry actions of each state, its counters.

:class:`CallMachine` holds everything a call knows and is the only code that moves it: an input is decided
by the tables of :mod:`gateway.core.states` first (:meth:`CallMachine._handle`), and only an accepted input
does its work and runs the target state's entry actions (:meth:`CallMachine._entered`).
:class:`gateway.core.call.Call` adds the inputs: it classifies each frame and timer into an :class:`Input`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import assert_never

from gateway.codecs.transcode import InboundTranscoder
from gateway.core.actions import Action, CloseTwilio, CloseUpstream, OpenUpstream, SendUpstream, TransferCall, to_twilio
from gateway.core.budgets import PeerWatch
from gateway.core.inbound import InboundStream, PreRoll
from gateway.core.lines import DEFAULT_LINE, LineConfig, LineDirectory, session_for
from gateway.core.observe import Observations
from gateway.core.outbound import OutboundAudio
from gateway.core.params import Admission, CallParams, TokenRedeemer
from gateway.core.playout import PlayoutDecision
from gateway.core.resume import Resumption
from gateway.core.states import (
    APOLOGISE,
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
from gateway.core.tool_turns import ToolTurns
from gateway.ids import CallSid, StreamSid
from gateway.wire.upstream import (
    SessionStart,
    UpstreamCodec,
)

log = logging.getLogger("gateway.call")

Work = Callable[[], list[Action]]
"""What an accepted input does besides moving the state; runs only after the table accepted the input."""


class CallMachine:
    """A call's state and the one way it moves (subclassed by :class:`gateway.core.call.Call`)."""

    def __init__(
        self,
        params: CallParams,
        codec: UpstreamCodec,
        tokens: TokenRedeemer | None = None,
        *,
        now: float,
        lines: LineDirectory | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.params = params
        self._codec = codec
        self._tokens = tokens
        self._lines = lines
        self._admission = admission
        self.line: LineConfig = DEFAULT_LINE
        self.observed = Observations()
        """Measurements for metrics (latencies, tool calls, errors), taken by the adapter."""
        self._tools = ToolTurns(codec, self.observed)
        # docs/operations.md §4: what either peer may cost this call, and whether each is still alive.
        self._watch = PeerWatch(params.budgets, now)
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
        self._counts: dict[str, int] = {}
        self._faults: list[str] = []

    @property
    def state(self) -> CallState:
        """Where the call is (assigned only by :class:`~gateway.core.states.Lifecycle`)."""
        return self._life.state

    @property
    def codec(self) -> UpstreamCodec:
        """The upstream's codec (stateless: an adapter may decode a big frame with it off its loop)."""
        return self._codec

    @property
    def end_reason(self) -> EndReason | None:
        """Why the call ended (the first cause), once it is ending."""
        return self._life.end_reason

    def _twilio_violation(self, problem: str, now: float) -> list[Action]:
        # docs/twilio-media-streams.md P8: one bad frame must not end a live call; before `start` the
        # stream is unusable (no streamSid), so the table closes it.
        self._count("twilio_protocol_errors")
        closing = self._life.decide(Input.TWILIO_VIOLATION)
        ends = closing is not None and closing.target is CallState.CLOSED
        log.warning("T< %s: %s", problem, "closing the stream" if ends else "ignored")
        return self._handle(Input.TWILIO_VIOLATION, now, detail=problem)

    def _try_resume(self, now: float) -> list[Action]:
        """In RECONNECTING: open a resumed session when the backoff has passed and no attempt is running."""
        if self._life.link is not LinkState.CLOSED or not self._resume.take(now):
            return []
        self._count("upstream_resume_attempts")
        self.observed.resume("attempt")
        log.info("E> resuming chat group %s (attempt %d)", self.upstream_group_id, self._resume.attempts)
        self._life.link_event(LinkInput.OPEN)
        return [OpenUpstream(self._session_start(resume=True))]

    def _watchdog(self, event: Input, now: float, detail: str) -> list[Action]:
        """A budget or liveness input (docs/operations.md §4): taken where the table has a move for it, else
        nothing happens."""
        if self._life.decide(event) is None:
            return []
        self._count(event.name.lower())
        log.warning("%s %s: %s", "E<" if event.name.startswith("UPSTREAM") else "T<", detail, event.value)
        return self._handle(event, now, detail=detail)

    def _session_start(self, *, resume: bool = False) -> SessionStart:
        group_id = self.upstream_group_id if resume else None
        rate_hz = self.params.input_rate_hz
        return session_for(
            self.line, self.custom_parameters, self.call_sid, input_rate_hz=rate_hz, resume_group_id=group_id
        )

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
        if transition.inert and transition.source is self._life.state and not detail:
            return actions  # nothing to commit, enter or trigger (states.Transition.inert)
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
                held = []
                for pcm in self._preroll.drain():
                    self._watch.caller_frame(pcm, len(pcm) * 500 / self.params.input_rate_hz)
                    held.append(SendUpstream(self._codec.encode_audio(pcm)))
                return [SendUpstream(settings, kind="session_settings"), *held]
            case CallState.RECONNECTING if transition.cause is Input.UPSTREAM_STALLED:
                # The stalled session is closed by us; once it is gone the chat group is resumed as after a drop.
                self._resume.dropped(CallState.ACTIVE, now)
                return [CloseUpstream(1011, "upstream_stalled")] if self._life.link_event(LinkInput.CLOSE) else []
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
