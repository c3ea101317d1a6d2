"""A call's whole lifecycle as data (h11's rule: everything that moves the state machine lives here).

Two small machines, one table each:

- the **call** (:class:`CallState`): every input :class:`gateway.core.call.Call` receives is first
  classified into an :class:`Input`; ``(state, input)`` picks the next state from :data:`TRANSITIONS`.
  Some moves are triggered by a condition rather than an input (:data:`TRIGGERED`: the goodbye has
  arrived, playout has drained) or by the clock (:data:`DEADLINES`). What each state does with caller and
  agent audio is data too (:data:`CALLER_AUDIO`, :data:`AGENT_AUDIO`).
- the **upstream link** (:class:`LinkState`): whether an upstream socket was asked for, is open, or is
  being closed, so that exactly one close is ever sent (:data:`LINK_TRANSITIONS`).

A pair missing from a table is illegal. For the call, an illegal remote input is a protocol violation of
its side (``Call`` handles it; nothing is mutated); an illegal local input — our adapter misusing the core
— raises :class:`~gateway.errors.CallStateError`. :class:`Lifecycle` is the only place a state is
assigned. The README's diagram is generated from these tables by :func:`to_mermaid`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.errors import CallStateError


class CallState(enum.Enum):
    """Where a call is in its life."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (tables are hit per frame)

    AWAITING_START = "awaiting start"
    CONNECTING_UPSTREAM = "connecting upstream"
    ACTIVE = "active"
    RECONNECTING = "reconnecting"
    """The upstream dropped; the caller stays on the line while the chat is resumed (docs/evi-protocol.md §7)."""
    TRANSFERRING = "transferring"
    """The agent is handing the caller over; its hand-off line plays before the call is moved."""
    REDIRECTING = "redirecting"
    """Twilio was asked to move the call (docs/twilio-media-streams.md "REST call update"); its `stop` follows."""
    SAYING_GOODBYE = "saying goodbye"
    """The call is to end (the agent hung up, or the duration limit): the goodbye still arrives and plays."""
    ENDING = "ending"
    """The upstream is closed or closing; the caller hears what is queued, then the stream closes."""
    CLOSED = "closed"


class Input(enum.Enum):
    """Classified inputs of the call, from Twilio, the upstream, our adapter or the clock."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (tables are hit per frame)

    CONNECTED = "twilio connected"
    START = "twilio start"
    START_REJECTED = "twilio start rejected"
    MEDIA = "twilio media"
    MARK = "twilio mark"
    DTMF = "twilio dtmf"
    STOP = "twilio stop"
    TWILIO_IGNORED = "twilio unknown/ignored"
    TWILIO_VIOLATION = "twilio protocol error"
    TWILIO_CLOSED = "twilio closed"
    TWILIO_SILENT = "twilio silent"
    """No ``media`` for ``caller_silence_timeout_s``: the stream has stalled (docs/operations.md §4)."""
    TWILIO_FLOOD = "twilio flood"
    """Caller audio kept arriving faster than real time beyond its budget (docs/operations.md §4)."""
    TWILIO_STALLED = "twilio not reading"
    """Our frames to Twilio are not being read: a send or the outbound queue passed its bound."""
    AT_CAPACITY = "twilio start at capacity"
    """A valid ``start`` arrived but every call slot is taken (slots are held by calls, not sockets)."""
    UPSTREAM_READY = "upstream ready"
    UPSTREAM_EVENT = "upstream event"
    UPSTREAM_FAULT = "upstream error"
    HANG_UP = "agent hang-up"
    TRANSFER = "agent transfer"
    UPSTREAM_CLOSED = "upstream closed"
    """A normal close (1000, or one we asked for): the session is over."""
    UPSTREAM_DROPPED = "upstream dropped"
    """An abnormal close that may be resumed (a group to resume, attempts left)."""
    UPSTREAM_LOST = "upstream lost"
    """The upstream is gone for good: an abnormal close that cannot be resumed."""
    UPSTREAM_STALLED = "upstream stalled"
    """The upstream sent nothing while the caller spoke (docs/operations.md §4): closed and resumed as a drop."""
    TOOL_RESULT = "tool result"
    OPERATOR_SAY = "operator say"
    """A supervisor asks the agent to say something on the live call (``POST /calls/{call_sid}/say``)."""
    TRANSFER_FAILED = "transfer failed"
    SHUTDOWN = "gateway shutdown"
    """The gateway is draining and the grace has ended: the call is brought to a spoken end."""
    TICK = "tick"
    DEADLINE = "deadline"

    @property
    def from_twilio(self) -> bool:
        """True for inputs read off the Media Stream socket."""
        return self.value.startswith("twilio")


class Condition(enum.Enum):
    """Facts about the call's audio that trigger a transition when they hold (checked after every input)."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (tables are hit per frame)

    AGENT_FINISHED = "agent finished speaking"
    """Since this state began the agent finished a turn, or said nothing for the grace period."""
    PLAYOUT_IDLE = "playout drained"
    """Everything sent to Twilio has been played (its marks echoed) and nothing is queued."""
    HANDOFF_HEARD = "hand-off heard"
    """Both of the above: the agent's last words have reached the caller's ear."""


class EndReason(enum.Enum):
    """Why a call ended: the first cause, recorded when the call leaves the conversation (:data:`ENDWARD`)."""

    TWILIO_STOP = "twilio_stop"
    TWILIO_CLOSED = "twilio_closed"
    TWILIO_PROTOCOL_ERROR = "twilio_protocol_error"
    START_REJECTED = "start_rejected"
    START_TIMEOUT = "start_timeout"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_LOST = "upstream_lost"
    MAX_DURATION = "max_duration"
    HANG_UP = "hang_up"
    TRANSFERRED = "transferred"
    TRANSFER_FAILED = "transfer_failed"
    SHUTDOWN = "shutdown"
    CAPACITY = "capacity"
    TWILIO_SILENT = "twilio_silent"
    TWILIO_FLOOD = "twilio_flood"
    TWILIO_STALLED = "twilio_stalled"


S = CallState
I = Input  # noqa: E741
C = Condition

_LIVE = tuple(s for s in CallState if s not in (S.AWAITING_START, S.CLOSED))
_UPSTREAM_ENDS = (I.UPSTREAM_FAULT, I.UPSTREAM_CLOSED, I.UPSTREAM_DROPPED, I.UPSTREAM_LOST)
ENDWARD = frozenset({S.SAYING_GOODBYE, S.ENDING, S.CLOSED})
"""States past the conversation: the first move into one of them records the call's end reason."""


TRANSITIONS: dict[tuple[CallState, Input], CallState] = {
    # docs/twilio-media-streams.md §0: connected, then start, then media. Anything else first is refused,
    # and a refused Twilio input is a protocol violation, which before `start` closes the stream.
    (S.AWAITING_START, I.CONNECTED): S.AWAITING_START,
    (S.AWAITING_START, I.START): S.CONNECTING_UPSTREAM,
    (S.AWAITING_START, I.START_REJECTED): S.CLOSED,
    (S.AWAITING_START, I.AT_CAPACITY): S.CLOSED,
    (S.AWAITING_START, I.TWILIO_IGNORED): S.AWAITING_START,
    (S.AWAITING_START, I.TWILIO_VIOLATION): S.CLOSED,
    (S.AWAITING_START, I.STOP): S.CLOSED,
    (S.AWAITING_START, I.TWILIO_CLOSED): S.CLOSED,
    (S.AWAITING_START, I.TICK): S.AWAITING_START,
    (S.AWAITING_START, I.DEADLINE): S.CLOSED,
    (S.AWAITING_START, I.SHUTDOWN): S.CLOSED,
    # Caller audio is held in a bounded pre-roll while the upstream connects.
    (S.CONNECTING_UPSTREAM, I.UPSTREAM_READY): S.ACTIVE,
    (S.CONNECTING_UPSTREAM, I.DEADLINE): S.ENDING,
    # The conversation.
    (S.ACTIVE, I.HANG_UP): S.SAYING_GOODBYE,
    (S.ACTIVE, I.TRANSFER): S.TRANSFERRING,
    (S.ACTIVE, I.UPSTREAM_DROPPED): S.RECONNECTING,
    (S.ACTIVE, I.UPSTREAM_STALLED): S.RECONNECTING,
    (S.ACTIVE, I.DEADLINE): S.SAYING_GOODBYE,  # the gateway's own limit: a goodbye is spoken first
    (S.ACTIVE, I.SHUTDOWN): S.SAYING_GOODBYE,  # the drain's grace is over: likewise (operations.md §2)
    # docs/evi-protocol.md §7: resume the chat group; audio flows again once the new chat is ready.
    (S.RECONNECTING, I.UPSTREAM_READY): S.ACTIVE,
    (S.RECONNECTING, I.UPSTREAM_DROPPED): S.RECONNECTING,
    (S.RECONNECTING, I.DEADLINE): S.ENDING,
    # The hand-off line plays (see TRIGGERED); then Twilio is asked to move the call. Without the agent
    # the transfer still goes ahead.
    (S.TRANSFERRING, I.HANG_UP): S.TRANSFERRING,
    (S.TRANSFERRING, I.DEADLINE): S.REDIRECTING,
    # Twilio answers a redirect with `stop` (docs/twilio-media-streams.md P7); a failed one returns to the agent.
    (S.REDIRECTING, I.HANG_UP): S.REDIRECTING,
    (S.REDIRECTING, I.TRANSFER_FAILED): S.ACTIVE,
    (S.REDIRECTING, I.UPSTREAM_LOST): S.ENDING,
    (S.REDIRECTING, I.DEADLINE): S.ENDING,
    # The goodbye arrives and plays (see TRIGGERED).
    (S.SAYING_GOODBYE, I.HANG_UP): S.SAYING_GOODBYE,
    (S.SAYING_GOODBYE, I.DEADLINE): S.ENDING,
    # Ending: the upstream is gone or going; the caller hears what was queued (see TRIGGERED).
    (S.ENDING, I.UPSTREAM_READY): S.ENDING,
    (S.ENDING, I.HANG_UP): S.ENDING,
    (S.ENDING, I.DEADLINE): S.CLOSED,
}
# The upstream ending: fatal in the conversation, except that a drop is resumed and a transfer goes ahead.
for _state in (S.CONNECTING_UPSTREAM, S.ACTIVE, S.RECONNECTING, S.TRANSFERRING, S.REDIRECTING, S.SAYING_GOODBYE):
    for _event in _UPSTREAM_ENDS:
        _target = {S.TRANSFERRING: S.REDIRECTING, S.REDIRECTING: S.REDIRECTING}.get(_state, S.ENDING)
        TRANSITIONS.setdefault((_state, _event), _target)
for _event in _UPSTREAM_ENDS:
    TRANSITIONS[(S.ENDING, _event)] = S.ENDING
# In every live state: Twilio's frames, upstream events, tool results and the clock move nothing, and the
# caller leaving ends the call at once (docs/twilio-media-streams.md P7: `stop` also follows a REST redirect).
for _state in _LIVE:
    for _event in (I.MEDIA, I.MARK, I.DTMF, I.TWILIO_IGNORED, I.TWILIO_VIOLATION, I.TICK, I.UPSTREAM_EVENT):
        TRANSITIONS[(_state, _event)] = _state
    TRANSITIONS[(_state, I.TOOL_RESULT)] = _state
    TRANSITIONS[(_state, I.OPERATOR_SAY)] = _state
    # A shutdown waits for a state it can end from with a goodbye; the drain repeats it (operations.md §2).
    TRANSITIONS.setdefault((_state, I.SHUTDOWN), _state)
    TRANSITIONS[(_state, I.STOP)] = S.CLOSED
    TRANSITIONS[(_state, I.TWILIO_CLOSED)] = S.CLOSED
    # docs/operations.md §4: a stream that floods, stalls or stops reading is closed at once; nobody hears it.
    TRANSITIONS[(_state, I.TWILIO_FLOOD)] = S.CLOSED
    TRANSITIONS[(_state, I.TWILIO_STALLED)] = S.CLOSED
    if _state not in (S.REDIRECTING, S.ENDING):  # these have their own deadlines; Twilio may stop media there
        TRANSITIONS[(_state, I.TWILIO_SILENT)] = S.CLOSED
# CLOSED absorbs everything: late inputs after the end are expected and harmless (websockets' receive_eof).
for _event in Input:
    TRANSITIONS[(S.CLOSED, _event)] = S.CLOSED

TRIGGERED: dict[tuple[CallState, Condition], CallState] = {
    # Move the caller once the hand-off line has been heard …
    (S.TRANSFERRING, C.HANDOFF_HEARD): S.REDIRECTING,
    # … hang up once the goodbye has been received in full (docs/evi-protocol.md §6) …
    (S.SAYING_GOODBYE, C.AGENT_FINISHED): S.ENDING,
    # … and close the stream once the caller has heard everything queued.
    (S.ENDING, C.PLAYOUT_IDLE): S.CLOSED,
}


@dataclass(frozen=True, slots=True)
class Deadline:
    """How long a state may last: ``timeout_param`` (a ``CallParams`` field, seconds) counted ``since``."""

    timeout_param: str
    since: Literal["created", "started", "ready", "entered"]
    """``created``: the socket was accepted; ``started``: Twilio's ``start``; ``ready``: the first upstream
    session was ready; ``entered``: this state began."""
    reason: EndReason | None
    """The end reason when the deadline is the first cause; None where the call is already ending."""
    detail: str
    """What happened, with ``{timeout_s}`` for the limit (appended to the end detail if not the first cause)."""


DEADLINES: dict[CallState, Deadline] = {
    S.AWAITING_START: Deadline(
        "start_timeout_s", "created", EndReason.START_TIMEOUT, "no valid start within {timeout_s:g} s"
    ),
    S.CONNECTING_UPSTREAM: Deadline(
        "upstream_connect_timeout_s", "started", EndReason.UPSTREAM_TIMEOUT, "upstream not ready within {timeout_s:g} s"
    ),
    S.ACTIVE: Deadline("max_duration_s", "ready", EndReason.MAX_DURATION, "call reached max duration {timeout_s:g} s"),
    S.RECONNECTING: Deadline(
        "reconnect_window_s", "entered", EndReason.UPSTREAM_LOST, "upstream not resumed within {timeout_s:g} s"
    ),
    S.TRANSFERRING: Deadline("handoff_timeout_s", "entered", None, "hand-off line not heard within {timeout_s:g} s"),
    S.REDIRECTING: Deadline(
        "redirect_timeout_s", "entered", EndReason.TRANSFER_FAILED, "no stop within {timeout_s:g} s of the redirect"
    ),
    S.SAYING_GOODBYE: Deadline("goodbye_timeout_s", "entered", None, "goodbye not received within {timeout_s:g} s"),
    S.ENDING: Deadline("drain_timeout_s", "entered", None, "playout did not drain in {timeout_s:g} s"),
}

END_REASONS: dict[Input, EndReason] = {
    I.START_REJECTED: EndReason.START_REJECTED,
    I.TWILIO_VIOLATION: EndReason.TWILIO_PROTOCOL_ERROR,
    I.STOP: EndReason.TWILIO_STOP,
    I.TWILIO_CLOSED: EndReason.TWILIO_CLOSED,
    I.UPSTREAM_FAULT: EndReason.UPSTREAM_ERROR,
    I.UPSTREAM_CLOSED: EndReason.UPSTREAM_CLOSED,
    I.UPSTREAM_DROPPED: EndReason.UPSTREAM_LOST,
    I.UPSTREAM_LOST: EndReason.UPSTREAM_LOST,
    I.HANG_UP: EndReason.HANG_UP,
    I.SHUTDOWN: EndReason.SHUTDOWN,
    I.AT_CAPACITY: EndReason.CAPACITY,
    I.TWILIO_SILENT: EndReason.TWILIO_SILENT,
    I.TWILIO_FLOOD: EndReason.TWILIO_FLOOD,
    I.TWILIO_STALLED: EndReason.TWILIO_STALLED,
}
"""The end reason an input gives when it moves the call towards its end (deadlines give their own) …"""

END_REASONS_IN: dict[tuple[CallState, Input], EndReason] = {
    (S.REDIRECTING, I.STOP): EndReason.TRANSFERRED,
    (S.REDIRECTING, I.UPSTREAM_LOST): EndReason.TRANSFER_FAILED,
}
"""… except where the state gives the input another meaning."""

CLOSE_CODES: dict[EndReason, int] = {
    EndReason.START_REJECTED: 1008,
    EndReason.TWILIO_PROTOCOL_ERROR: 1008,
    EndReason.START_TIMEOUT: 1008,
    EndReason.SHUTDOWN: 1001,
    EndReason.CAPACITY: 1013,
    EndReason.TWILIO_FLOOD: 1008,
}
"""WebSocket close code of the Media Stream per end reason (RFC 6455 §7.4.1: 1008 policy violation, 1001 going
away, 1013 try again later); else 1000."""

APOLOGISE: frozenset[EndReason] = frozenset(
    {EndReason.UPSTREAM_ERROR, EndReason.UPSTREAM_TIMEOUT, EndReason.UPSTREAM_LOST, EndReason.TRANSFER_FAILED}
)
"""End reasons the caller is told about (a short recorded apology) instead of hearing the line go dead."""

CALLER_AUDIO: dict[CallState, Literal["hold", "forward", "drop"]] = {
    S.CONNECTING_UPSTREAM: "hold",
    S.ACTIVE: "forward",
    S.RECONNECTING: "drop",
    S.TRANSFERRING: "forward",
    S.REDIRECTING: "drop",
    S.SAYING_GOODBYE: "forward",
    S.ENDING: "drop",
}
"""What each state does with caller audio (and keypresses, which are forwarded only where audio is)."""

AGENT_AUDIO: frozenset[CallState] = frozenset({S.ACTIVE, S.TRANSFERRING, S.SAYING_GOODBYE})
"""States in which upstream audio is queued for the caller; elsewhere it is dropped."""

RESUMABLE_CLOSE_CODES: frozenset[int | None] = frozenset({None, 1001, 1006, 1011, 1012, 1013, 1014})
"""Upstream closes worth resuming (RFC 6455 §7.4.1: going away, abnormal, server error, restart, try again
later, bad gateway; None: the socket failed without a close frame). 1000 and policy closes are final."""


# ---------------------------------------------------------------------------------- the upstream link


class LinkState(enum.Enum):
    """The upstream socket, as far as the call knows."""

    __hash__ = object.__hash__  # members are singletons: identity hashing, in C (tables are hit per frame)

    IDLE = "not asked for"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    """We asked for it to close (it may still be connecting: the adapter closes it once it opens)."""
    CLOSED = "closed"


class LinkInput(enum.Enum):
    """What moves the link: our own decisions (open, close) and our adapter's reports (opened, closed)."""

    OPEN = "open"
    OPENED = "opened"
    CLOSE = "close"
    CLOSED = "closed"


L = LinkState
LI = LinkInput

LINK_TRANSITIONS: dict[tuple[LinkState, LinkInput], LinkState] = {
    (L.IDLE, LI.OPEN): L.CONNECTING,
    (L.IDLE, LI.CLOSE): L.IDLE,
    (L.CONNECTING, LI.OPENED): L.OPEN,
    (L.CONNECTING, LI.CLOSE): L.CLOSING,
    (L.CONNECTING, LI.CLOSED): L.CLOSED,
    (L.OPEN, LI.CLOSE): L.CLOSING,
    (L.OPEN, LI.CLOSED): L.CLOSED,
    (L.CLOSING, LI.OPENED): L.CLOSING,
    (L.CLOSING, LI.CLOSE): L.CLOSING,
    (L.CLOSING, LI.CLOSED): L.CLOSED,
    (L.CLOSED, LI.CLOSE): L.CLOSED,
    (L.CLOSED, LI.OPEN): L.CONNECTING,  # a new socket, resuming the chat (docs/evi-protocol.md §7)
}
"""Every report the adapter can legally make; anything else (e.g. ``opened`` twice) is our bug."""


# ---------------------------------------------------------------------------------- the one assigner


@dataclass(frozen=True, slots=True)
class Transition:
    """One decided move of the call, not yet made."""

    source: CallState
    target: CallState
    cause: Input | Condition
    inert: bool = False
    """A self-loop that records nothing and after which no condition can trigger a move (its state has none in
    :data:`TRIGGERED`): committing it changes nothing, so a caller may skip the commit (a media frame is one)."""

    @property
    def moves(self) -> bool:
        """True when the state changes."""
        return self.source is not self.target


_TRIGGERS: dict[CallState, tuple[Transition, ...]] = {}
for (_state, _condition), _target in TRIGGERED.items():
    _TRIGGERS[_state] = (*_TRIGGERS.get(_state, ()), Transition(_state, _target, _condition))
_RECORDED_CAUSES = frozenset({Input.START, Input.UPSTREAM_READY})
"""Inputs whose commit records when they happened (``Lifecycle.since_s``), even as a self-loop."""
# Every decided move, built once: deciding an input allocates nothing (a call sees ~100 inputs a second).
_MOVES: dict[tuple[CallState, Input], Transition] = {
    key: Transition(key[0], t, key[1], inert=key[0] is t and key[1] not in _RECORDED_CAUSES and key[0] not in _TRIGGERS)
    for key, t in TRANSITIONS.items()
}


MAX_DETAIL_CHARS = 600
"""The end detail is cut here: it may quote a peer (an EVI error message), and the end-of-call line is bounded."""


class Lifecycle:
    """The call's and the link's current states, when each began, and the end reason; nothing else."""

    def __init__(self, now: float) -> None:
        self.state = CallState.AWAITING_START
        self.link = LinkState.IDLE
        self.end_reason: EndReason | None = None
        self.end_detail = ""
        self._anchors_s: dict[str, float] = {"created": now, "entered": now}

    # -- the call

    def decide(self, event: Input) -> Transition | None:
        """The move ``event`` makes now; ``None`` when the table refuses it. Changes nothing."""
        return _MOVES.get((self.state, event))

    def triggered(self, holds: Callable[[Condition], bool]) -> Transition | None:
        """The move a condition that holds now triggers, if any (``holds`` is asked only for the conditions
        the current state has moves for). Changes nothing."""
        for transition in _TRIGGERS.get(self.state, ()):
            assert isinstance(transition.cause, Condition)
            if holds(transition.cause):
                return transition
        return None

    def overdue(self, now: float, timeouts_s: Mapping[str, float]) -> tuple[Transition, EndReason | None, str] | None:
        """The deadline move if the current state has outlived its deadline at ``now``. Changes nothing.

        ``timeouts_s`` maps each :attr:`Deadline.timeout_param` to its value in seconds.
        """
        deadline = DEADLINES.get(self.state)
        if deadline is None:
            return None
        timeout_s = timeouts_s[deadline.timeout_param]
        since_s = self._anchors_s.get(deadline.since, self._anchors_s["entered"])
        if now - since_s < timeout_s:
            return None
        transition = self.decide(Input.DEADLINE)
        assert transition is not None, f"DEADLINES lists {self.state} but TRANSITIONS has no deadline move"
        return transition, deadline.reason, deadline.detail.format(timeout_s=timeout_s)

    def commit(self, transition: Transition, now: float, reason: EndReason | None = None, detail: str = "") -> None:
        """Make a decided move. The first move into :data:`ENDWARD` records the end reason (``reason``, else
        the input's from :data:`END_REASONS`) and ``detail``; a later move's detail is appended."""
        if transition.source is not self.state:
            raise CallStateError(f"stale transition from {transition.source.value!r}; the call is {self.state.value!r}")
        cause = transition.cause
        if cause is Input.START:
            self._anchors_s["started"] = now
        elif cause is Input.UPSTREAM_READY:
            self._anchors_s.setdefault("ready", now)
        if transition.moves:
            self._anchors_s["entered"] = now
            if transition.target in ENDWARD and self.end_reason is None:
                if reason is None and isinstance(cause, Input):
                    reason = END_REASONS_IN.get((transition.source, cause)) or END_REASONS.get(cause)
                self.end_reason = reason
                self.end_detail = detail[:MAX_DETAIL_CHARS]
            elif transition.target in ENDWARD and detail:
                joined = f"{self.end_detail}; {detail}" if self.end_detail else detail
                self.end_detail = joined[:MAX_DETAIL_CHARS]
        self.state = transition.target

    @property
    def entered_s(self) -> float:
        """When the current state began."""
        return self._anchors_s["entered"]

    def since_s(self, anchor: Literal["created", "started", "ready", "entered"]) -> float | None:
        """When ``anchor`` happened (None for ``started``/``ready`` before Twilio's start / the first session)."""
        return self._anchors_s.get(anchor)

    # -- the link

    def link_event(self, event: LinkInput) -> bool:
        """Move the link; True when ``close`` must now be sent (the first close of a live link)."""
        target = LINK_TRANSITIONS.get((self.link, event))
        if target is None:
            raise CallStateError(f"upstream {event.value!r} is not allowed while the link is {self.link.value!r}")
        source, self.link = self.link, target
        return event is LinkInput.CLOSE and source in (L.CONNECTING, L.OPEN)


def next_state(state: CallState, event: Input) -> CallState | None:
    """The state after ``event`` in ``state``; ``None`` for an illegal input."""
    return TRANSITIONS.get((state, event))


def to_mermaid() -> str:
    """The state diagram (Mermaid ``stateDiagram-v2``): one arrow per (state, next) with its causes."""
    edges: dict[tuple[CallState, CallState], list[str]] = {}
    for (src, event), dst in TRANSITIONS.items():
        if src is not dst:
            edges.setdefault((src, dst), []).append(event.value)
    for (src, condition), dst in TRIGGERED.items():
        edges.setdefault((src, dst), []).append(f"when {condition.value}")
    lines = ["stateDiagram-v2", f"    [*] --> {S.AWAITING_START.name}"]
    for (src, dst), causes in edges.items():
        lines.append(f"    {src.name} --> {dst.name}: {', '.join(causes)}")
    lines.append(f"    {S.CLOSED.name} --> [*]")
    return "\n".join(lines)
