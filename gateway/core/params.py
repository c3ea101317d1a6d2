"""What one call needs from the settings, and what it needs from the webhook's stream tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.core.budgets import BudgetParams
from gateway.core.inbound import InboundParams
from gateway.core.playout import PlayoutParams
from gateway.wire.stream_token import TokenVerdict


class Admission(Protocol):
    """Gives a started call one of the gateway's call slots (docs/operations.md §4)."""

    def admit(self, call_sid: str) -> bool:
        """Take a slot for ``call_sid`` (the one the webhook reserved for it, else a free one); False when full."""
        ...


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
    max_duration_s: float = 1830.0
    """The gateway's own limit, counted from the first upstream session (a grace period after EVI's 1800 s)."""
    goodbye_timeout_s: float = 10.0
    """Once the call is to end, how long its goodbye may take to arrive before the call ends anyway."""
    agent_silence_grace_s: float = 1.5
    """Waiting for the agent's goodbye or hand-off line: if it says nothing for this long, it has finished."""
    reconnect_window_s: float = 10.0
    """How long a dropped upstream may take to be resumed before the call ends with an apology."""
    reconnect_backoff_s: tuple[float, ...] = (0.0, 1.0, 2.0)
    """Delay before each resume attempt (its length is the number of attempts)."""
    transfers_enabled: bool = False
    """``transfer_call`` can work: Twilio REST credentials are configured."""
    handoff_timeout_s: float = 8.0
    """A transfer waits at most this long for the hand-off line to be heard."""
    redirect_timeout_s: float = 15.0
    """After the REST redirect, how long Twilio may take to send ``stop``."""
    apology_ulaw: bytes = b""
    """8 kHz μ-law the caller hears when the call fails (upstream lost, transfer failed)."""
    drain_timeout_s: float = 10.0
    shutdown_message: str = "This line has to close now. Please call again. Goodbye."
    """Said to a call still live when the gateway's drain grace ends (operations.md §2)."""
    playout: PlayoutParams = field(default_factory=PlayoutParams)
    inbound: InboundParams = field(default_factory=InboundParams)
    budgets: BudgetParams = field(default_factory=BudgetParams)
