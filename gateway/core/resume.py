"""Resuming a dropped upstream while the caller stays on the line (docs/evi-protocol.md §7).

An abnormal close of a live conversation (:data:`~gateway.core.states.RESUMABLE_CLOSE_CODES`) is answered
by reopening the chat with its group id, a bounded number of times with a growing pause; the state table
bounds the whole attempt in time (``reconnect_window_s``). A normal close (1000, one we asked for) and a
close of a call that is ending or being moved are never resumed.
"""

from __future__ import annotations

from gateway.core.states import RESUMABLE_CLOSE_CODES, CallState, Input


class Resumption:
    """Counts resume attempts and says when the next one is due."""

    def __init__(self, backoff_s: tuple[float, ...], now: float) -> None:
        self._backoff_s = backoff_s
        self.attempts = 0
        self._next_s = now

    def classify(self, state: CallState, code: int | None, *, asked: bool, group_known: bool) -> Input:
        """What an upstream close means for the call in ``state``."""
        if asked and state is CallState.RECONNECTING:
            return Input.UPSTREAM_DROPPED  # the stalled session we closed ourselves: resume it (UPSTREAM_STALLED)
        if asked or code not in RESUMABLE_CLOSE_CODES:
            return Input.UPSTREAM_CLOSED
        if state is CallState.CONNECTING_UPSTREAM:
            return Input.UPSTREAM_LOST  # never ready: nothing to resume
        if state not in (CallState.ACTIVE, CallState.RECONNECTING):
            return Input.UPSTREAM_CLOSED  # ending or moving the call anyway
        if not group_known or (state is CallState.RECONNECTING and self.attempts >= len(self._backoff_s)):
            return Input.UPSTREAM_LOST
        return Input.UPSTREAM_DROPPED

    def dropped(self, state: CallState, now: float) -> None:
        """A drop was accepted: a first drop of a live session starts counting afresh; the next attempt waits."""
        if state is CallState.ACTIVE:
            self.attempts = 0
        self._next_s = now + self._backoff_s[min(self.attempts, len(self._backoff_s) - 1)]

    def take(self, now: float) -> bool:
        """True (and one attempt used) when an attempt is due now."""
        if now < self._next_s or self.attempts >= len(self._backoff_s):
            return False
        self.attempts += 1
        return True
