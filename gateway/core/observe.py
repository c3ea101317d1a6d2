"""What a call reports for metrics while it runs (operations.md §1): measurements the core returns as data.

The core reads no clock and owns no metrics library: it appends :class:`Observation` records here at the
moment something happens, stamped with the input's time, and the adapter takes them (``take()``) and feeds
them to whatever exports them. Counts of a whole call (end reason, duration, gaps, underruns) come from
:class:`~gateway.core.stats.CallStats` when the call ends instead.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_PENDING", "Observation", "Observations"]

MAX_PENDING = 1000
"""Observations kept when nobody takes them (no metrics configured): the oldest are dropped past this."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One measurement: ``kind`` names it, ``value`` is seconds for latencies and 1 for events."""

    kind: str
    """``response_latency_s``, ``tool_call``, ``upstream_error``, ``resume``, ``barge_in`` or ``transfer``."""
    value: float = 1.0
    labels: tuple[tuple[str, str], ...] = ()


class Observations:
    """A call's pending observations, and the turn timing they need."""

    def __init__(self) -> None:
        self._pending: list[Observation] = []
        self._turn_final_s: float | None = None
        self._turns_at_final = 0

    def take(self) -> list[Observation]:
        """Everything observed since the last ``take``, oldest first."""
        taken, self._pending = self._pending, []
        return taken

    def _add(self, observation: Observation) -> None:
        if len(self._pending) >= MAX_PENDING:
            del self._pending[0]
        self._pending.append(observation)

    def user_turn_final(self, now: float, agent_turns_started: int) -> None:
        """The upstream's final transcript of the caller's turn: the response latency starts here."""
        self._turn_final_s = now
        self._turns_at_final = agent_turns_started

    def agent_media_sent(self, now: float, agent_turns_started: int) -> None:
        """Agent audio went to Twilio: the first of a response begun after the caller's turn ends the wait."""
        if self._turn_final_s is not None and agent_turns_started > self._turns_at_final:
            self._add(Observation("response_latency_s", now - self._turn_final_s))
            self._turn_final_s = None

    def tool_call(self, name: str, outcome: str) -> None:
        """A function tool call was answered: ``outcome`` is ``ok`` or the tool_error code."""
        self._add(Observation("tool_call", labels=(("tool", name), ("outcome", outcome))))

    def upstream_error(self, code: str) -> None:
        """The upstream sent an error message."""
        self._add(Observation("upstream_error", labels=(("code", code),)))

    def resume(self, outcome: str) -> None:
        """A resume of a dropped upstream session: ``attempt``, ``resumed`` or ``failed``."""
        self._add(Observation("resume", labels=(("outcome", outcome),)))

    def barge_in(self) -> None:
        """The caller talked over the agent and its audio was cut."""
        self._add(Observation("barge_in"))

    def transfer(self, outcome: str) -> None:
        """A transfer to a person: ``started`` or ``failed``."""
        self._add(Observation("transfer", labels=(("outcome", outcome),)))
