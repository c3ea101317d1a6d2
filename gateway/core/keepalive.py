"""The keepalive of one WebSocket, sans I/O: when to ping, and when a missing pong means the peer is gone.

RFC 6455 §5.5.2–5.5.3: either side may send a Ping, and the other must answer with a Pong "as soon as is
practical"; an unsolicited Pong is allowed and answers nothing. The schedule here is fixed: a ping every
``interval_s`` from the socket's opening, its pong due within ``timeout_s``. It does not restart on every frame
received (that costs a timer reset per frame, 50 a second per call on a Media Stream); a Media Stream's own
liveness, media every 20 ms, is the core's caller-silence watchdog (docs/operations.md §4).
"""

from __future__ import annotations

import enum


class KeepaliveVerdict(enum.Enum):
    """What :meth:`Keepalive.poll` asks of the socket."""

    PING = "ping"
    """Send a ping now."""
    DEAD = "dead"
    """The last ping's pong is overdue: the peer is gone; abort the socket."""


class Keepalive:
    """One socket's ping schedule; the time is an argument and the verdicts are the adapter's to carry out."""

    def __init__(self, interval_s: float, timeout_s: float, now: float) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError(f"keepalive interval and timeout must be > 0, got {interval_s} and {timeout_s}")
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._next_ping_s = now + interval_s
        self._pong_due_s: float | None = None
        self.pings_sent = 0

    def poll(self, now: float) -> KeepaliveVerdict | None:
        """The verdict at ``now``: ping, dead, or nothing to do. Poll at least a few times per interval."""
        if self._pong_due_s is not None:
            if now < self._pong_due_s:
                return None
            self._pong_due_s = self._next_ping_s = float("inf")  # said once: the socket is to be aborted
            return KeepaliveVerdict.DEAD
        if now < self._next_ping_s:
            return None
        self._pong_due_s = now + self.timeout_s
        self._next_ping_s = now + self.interval_s
        self.pings_sent += 1
        return KeepaliveVerdict.PING

    def pong(self) -> None:
        """A pong arrived: the outstanding ping, if any, is answered (an unsolicited pong answers nothing)."""
        self._pong_due_s = None

    @property
    def awaiting_pong(self) -> bool:
        """A ping is out and its pong has not come."""
        return self._pong_due_s is not None
