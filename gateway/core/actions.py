"""What the core asks its adapters to do. Adapters execute these in order and decide nothing.

Audio-bearing actions show sizes, never payloads, in their ``repr`` (payloads are logged as sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.wire.upstream import SessionStart


@dataclass(frozen=True, slots=True)
class SendTwilio:
    """Send one text frame on the Media Stream socket."""

    text: str
    kind: str = "media"

    def __repr__(self) -> str:
        return f"SendTwilio({self.kind}, {len(self.text)} chars)"


@dataclass(frozen=True, slots=True)
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


Action = SendTwilio | SendUpstream | OpenUpstream | CloseUpstream | CloseTwilio
