"""The WebSocket keepalive schedule (RFC 6455 §5.5.2–5.5.3), without a socket."""

from __future__ import annotations

import pytest

from gateway.core.keepalive import Keepalive, KeepaliveVerdict

PING, DEAD = KeepaliveVerdict.PING, KeepaliveVerdict.DEAD


def verdicts(keepalive: Keepalive, start_s: float, end_s: float, step_s: float = 0.1) -> list[tuple[float, str]]:
    """Every verdict of a poll each ``step_s`` in ``[start_s, end_s)``, with when it came."""
    out = []
    for k in range(round((end_s - start_s) / step_s)):
        now = round(start_s + k * step_s, 6)
        verdict = keepalive.poll(now)
        if verdict is not None:
            out.append((now, verdict.value))
    return out


def test_pings_come_every_interval_from_the_opening_while_pongs_answer_them() -> None:
    """A ping at each interval from the socket's opening, none before; an answered ping is followed by the next."""
    keepalive = Keepalive(1.0, 0.5, now=10.0)
    assert verdicts(keepalive, 10.0, 10.9) == []
    assert keepalive.poll(11.0) is PING
    waiting = [keepalive.awaiting_pong]
    keepalive.pong()
    assert waiting + [keepalive.awaiting_pong] == [True, False]
    assert verdicts(keepalive, 11.1, 12.0) == []
    assert keepalive.poll(12.0) is PING
    assert keepalive.pings_sent == 2


def test_a_pong_late_by_the_timeout_means_dead_said_once() -> None:
    """No pong within the timeout: dead at the timeout, not before, and only once (the socket is then aborted)."""
    keepalive = Keepalive(1.0, 0.5, now=0.0)
    assert keepalive.poll(1.0) is PING
    assert verdicts(keepalive, 1.1, 1.5) == []
    assert keepalive.poll(1.5) is DEAD
    assert verdicts(keepalive, 1.6, 5.0) == []


def test_a_ping_waits_for_its_pong_rather_than_piling_up() -> None:
    """While a pong is awaited no further ping is sent, even when polls are sparse; a late poll pings once."""
    keepalive = Keepalive(1.0, 2.0, now=0.0)
    assert verdicts(keepalive, 0.0, 2.9) == [(1.0, "ping")]
    keepalive.pong()
    assert keepalive.poll(7.3) is PING and keepalive.poll(7.4) is None
    assert keepalive.pings_sent == 2


def test_an_unsolicited_pong_is_harmless() -> None:
    """RFC 6455 §5.5.3: a pong with no ping out answers nothing and changes the schedule not at all."""
    keepalive = Keepalive(1.0, 0.5, now=0.0)
    keepalive.pong()
    assert keepalive.poll(0.5) is None and keepalive.poll(1.0) is PING


@pytest.mark.parametrize(("interval_s", "timeout_s"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_a_schedule_needs_positive_times(interval_s: float, timeout_s: float) -> None:
    """A zero or negative interval or timeout is refused."""
    with pytest.raises(ValueError, match="must be > 0"):
        Keepalive(interval_s, timeout_s, now=0.0)
