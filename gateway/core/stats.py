"""The one snapshot of a call's counters that is logged when it ends (its end reason: gateway.core.states)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.core.inbound import InboundStats, PreRollStats
from gateway.core.outbound import OutboundStats
from gateway.core.playout import PlayoutStats


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
