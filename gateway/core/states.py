"""The call's states and every legal transition, in one table (h11 style).

Each input to :class:`gateway.core.call.Call` is first classified into an :class:`Input`; the pair
``(state, input)`` then picks the next state from :data:`TRANSITIONS`. A pair missing from the table is
illegal: :func:`next_state` raises :class:`~gateway.errors.CallStateError` for local inputs (our own
adapter misusing the core) and returns ``None`` for remote ones, which the call handles as a protocol
violation. The README's diagram is generated from this table by :func:`to_mermaid`.
"""

from __future__ import annotations

import enum

from gateway.errors import CallStateError


class CallState(enum.Enum):
    """Where a call is in its life."""

    AWAITING_START = "awaiting start"
    CONNECTING_UPSTREAM = "connecting upstream"
    ACTIVE = "active"
    ENDING = "ending"
    CLOSED = "closed"


class Input(enum.Enum):
    """Classified inputs. ``local`` ones come from our adapter, the rest from a peer or the clock."""

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
    UPSTREAM_OPENED = "upstream opened"
    UPSTREAM_READY = "upstream ready"
    UPSTREAM_EVENT = "upstream event"
    UPSTREAM_FAULT = "upstream error"
    HANG_UP = "agent hang-up"
    UPSTREAM_CLOSED = "upstream closed"
    TICK = "tick"
    DEADLINE = "deadline"
    DRAINED = "drained"

    @property
    def local(self) -> bool:
        """True for inputs only our adapter can produce; misusing them is our bug."""
        return self in _LOCAL_INPUTS


_LOCAL_INPUTS = frozenset({Input.UPSTREAM_OPENED})

S = CallState
I = Input  # noqa: E741

TRANSITIONS: dict[tuple[CallState, Input], CallState] = {
    # twilio-media-streams.md §0: connected, then start, then media.
    (S.AWAITING_START, I.CONNECTED): S.AWAITING_START,
    (S.AWAITING_START, I.START): S.CONNECTING_UPSTREAM,
    (S.AWAITING_START, I.START_REJECTED): S.CLOSED,
    (S.AWAITING_START, I.TWILIO_IGNORED): S.AWAITING_START,
    (S.AWAITING_START, I.TWILIO_VIOLATION): S.CLOSED,
    (S.AWAITING_START, I.STOP): S.CLOSED,
    (S.AWAITING_START, I.TWILIO_CLOSED): S.CLOSED,
    (S.AWAITING_START, I.TICK): S.AWAITING_START,
    (S.AWAITING_START, I.DEADLINE): S.CLOSED,
    # Caller audio is held in a bounded pre-roll while the upstream connects.
    (S.CONNECTING_UPSTREAM, I.MEDIA): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.MARK): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.DTMF): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.TWILIO_IGNORED): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.TWILIO_VIOLATION): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.UPSTREAM_OPENED): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.UPSTREAM_READY): S.ACTIVE,
    (S.CONNECTING_UPSTREAM, I.UPSTREAM_EVENT): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.UPSTREAM_FAULT): S.ENDING,
    (S.CONNECTING_UPSTREAM, I.UPSTREAM_CLOSED): S.ENDING,
    (S.CONNECTING_UPSTREAM, I.STOP): S.CLOSED,
    (S.CONNECTING_UPSTREAM, I.TWILIO_CLOSED): S.CLOSED,
    (S.CONNECTING_UPSTREAM, I.TICK): S.CONNECTING_UPSTREAM,
    (S.CONNECTING_UPSTREAM, I.DEADLINE): S.ENDING,
    # The conversation.
    (S.ACTIVE, I.MEDIA): S.ACTIVE,
    (S.ACTIVE, I.MARK): S.ACTIVE,
    (S.ACTIVE, I.DTMF): S.ACTIVE,
    (S.ACTIVE, I.TWILIO_IGNORED): S.ACTIVE,
    (S.ACTIVE, I.TWILIO_VIOLATION): S.ACTIVE,
    (S.ACTIVE, I.UPSTREAM_EVENT): S.ACTIVE,
    (S.ACTIVE, I.UPSTREAM_FAULT): S.ENDING,
    (S.ACTIVE, I.HANG_UP): S.ENDING,
    (S.ACTIVE, I.UPSTREAM_CLOSED): S.ENDING,
    (S.ACTIVE, I.STOP): S.CLOSED,
    (S.ACTIVE, I.TWILIO_CLOSED): S.CLOSED,
    (S.ACTIVE, I.TICK): S.ACTIVE,
    (S.ACTIVE, I.DEADLINE): S.ENDING,
    # Ending: upstream is gone or going; let the caller hear what was already queued, then hang up.
    (S.ENDING, I.MEDIA): S.ENDING,
    (S.ENDING, I.MARK): S.ENDING,
    (S.ENDING, I.DTMF): S.ENDING,
    (S.ENDING, I.TWILIO_IGNORED): S.ENDING,
    (S.ENDING, I.TWILIO_VIOLATION): S.ENDING,
    (S.ENDING, I.UPSTREAM_OPENED): S.ENDING,
    (S.ENDING, I.UPSTREAM_READY): S.ENDING,
    (S.ENDING, I.UPSTREAM_EVENT): S.ENDING,
    (S.ENDING, I.UPSTREAM_FAULT): S.ENDING,
    (S.ENDING, I.HANG_UP): S.ENDING,
    (S.ENDING, I.UPSTREAM_CLOSED): S.ENDING,
    (S.ENDING, I.TICK): S.ENDING,
    (S.ENDING, I.DRAINED): S.CLOSED,
    (S.ENDING, I.DEADLINE): S.CLOSED,
    (S.ENDING, I.STOP): S.CLOSED,
    (S.ENDING, I.TWILIO_CLOSED): S.CLOSED,
}

# CLOSED absorbs everything: late inputs after the end are expected and harmless (websockets' receive_eof).
for _input in Input:
    TRANSITIONS[(S.CLOSED, _input)] = S.CLOSED


def next_state(state: CallState, event: Input) -> CallState | None:
    """The state after ``event`` in ``state``; ``None`` for an illegal remote input."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        if event.local:
            raise CallStateError(f"{event.value!r} is not allowed in state {state.value!r}") from None
        return None


def to_mermaid() -> str:
    """The state diagram (Mermaid ``stateDiagram-v2``), one arrow per (state, next) with its inputs."""
    edges: dict[tuple[CallState, CallState], list[str]] = {}
    for (src, event), dst in TRANSITIONS.items():
        if src is dst:
            continue
        edges.setdefault((src, dst), []).append(event.value)
    lines = ["stateDiagram-v2", f"    [*] --> {S.AWAITING_START.name}"]
    for (src, dst), events in edges.items():
        lines.append(f"    {src.name} --> {dst.name}: {', '.join(events)}")
    lines.append(f"    {S.CLOSED.name} --> [*]")
    return "\n".join(lines)
