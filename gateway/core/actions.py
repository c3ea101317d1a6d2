"""What the core asks its adapters to do. Adapters execute these in order and decide nothing.

Audio-bearing actions show sizes, never payloads, in their ``repr`` (payloads are logged as sizes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.playout import PlayoutDecision, SendClear, SendMark, SendMedia
from gateway.core.tools import ToolEndpoint
from gateway.wire import twilio_media as tw
from gateway.wire.upstream import SessionStart


# The two per-frame actions are not frozen (a frozen dataclass costs ~0.3 µs more to build); read-only by
# convention, like every action.
@dataclass(slots=True)
class SendTwilio:
    """Send one text frame on the Media Stream socket."""

    text: str
    kind: str = "media"
    response_id: str | None = None
    """Whose audio a ``media`` frame carries (the call recorder attributes heard audio by it)."""

    def __repr__(self) -> str:
        return f"SendTwilio({self.kind}, {len(self.text)} chars)"


@dataclass(slots=True)
class SendUpstream:
    """Send one text frame to the upstream (EVI)."""

    text: str
    kind: str = "audio"

    def __repr__(self) -> str:
        return f"SendUpstream({self.kind}, {len(self.text)} chars)"


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open the upstream session; report back with ``upstream_opened`` or ``upstream_closed``."""

    session: SessionStart


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Close the upstream socket (idempotent)."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CloseTwilio:
    """Close the Media Stream socket. With nothing after ``</Connect>`` this ends the phone call."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RunTool:
    """POST a function tool call to its endpoint; report back with ``Call.tool_finished`` (never nothing).

    The request is cancelled if the call ends first. ``context`` is the ``call`` object of the endpoint
    contract (``call_sid``, ``from``, ``to``, ``chat_id``, ``chat_group_id``).
    """

    tool_call_id: str
    endpoint: ToolEndpoint
    parameters: Any
    context: Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class TransferCall:
    """Move the live call to ``target`` (E.164 or ``sip:``) with a REST update carrying ``<Dial>``.

    Twilio then sends ``stop``; report a failure with ``Call.transfer_failed``.
    """

    call_sid: str
    destination: str
    """The name the model chose, for logs."""
    target: str


def to_twilio(stream_sid: str, decisions: Iterable[PlayoutDecision]) -> Iterator[SendTwilio]:
    """The playout buffer's decisions as Media Stream frames (docs/twilio-media-streams.md §2)."""
    for decision in decisions:
        match decision:
            case SendMedia():
                media = tw.media_message(stream_sid, decision.ulaw)
                yield SendTwilio(media, kind="media", response_id=decision.response_id)
            case SendMark():
                yield SendTwilio(tw.mark_message(stream_sid, decision.name), kind="mark")
            case SendClear():
                yield SendTwilio(tw.clear_message(stream_sid), kind="clear")


Action = SendTwilio | SendUpstream | OpenUpstream | CloseUpstream | CloseTwilio | RunTool | TransferCall
