"""Why a call ended, and the one snapshot of its counters that is logged when it does."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.core.inbound import InboundStats, PreRollStats
from gateway.core.outbound import OutboundStats
from gateway.core.playout import PlayoutStats


class EndReason(enum.Enum):
    """Why a call ended."""

    TWILIO_STOP = "twilio_stop"
    TWILIO_CLOSED = "twilio_closed"
    TWILIO_PROTOCOL_ERROR = "twilio_protocol_error"
    START_REJECTED = "start_rejected"
    START_TIMEOUT = "start_timeout"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    MAX_DURATION = "max_duration"
    HANG_UP = "hang_up"
    DRAIN_TIMEOUT = "drain_timeout"


@dataclass(frozen=True, slots=True)
class CallStats:
    """Everything counted about one call (the fields of its end-of-call log line)."""

    call_sid: str | None
    stream_sid: str | None
    state: str
    end_reason: str | None
    end_detail: str
    duration_s: float
    upstream_session_id: str | None
    upstream_group_id: str | None
    upstream_faults: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)
    inbound: InboundStats | None = None
    preroll: PreRollStats | None = None
    playout: PlayoutStats | None = None
    outbound: OutboundStats | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (nested dataclasses flattened to dicts)."""
        return asdict(self)
