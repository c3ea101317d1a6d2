"""Per-call byte and time budgets, and the liveness of both peers (docs/operations.md §4).

Nothing a peer sends may cost the process more than a stated bound: caller audio is accepted no faster than
real time plus a burst, the agent's audio is decoded up to a byte rate, and silence where the protocol
promises traffic is noticed. Everything here is arithmetic on the times the core is given; it decides
nothing about the call's state — :class:`gateway.core.call.Call` turns a verdict into an input of the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.codecs.g711 import audioop
from gateway.core.states import CallState, Input
from gateway.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BudgetParams:
    """The per-call bounds (settings ``caller_*``, ``agent_audio_*``, ``upstream_stall_*``)."""

    caller_burst_ms: int = 2000
    """Caller audio accepted ahead of real time (Twilio may deliver a held-up backlog at once)."""
    caller_flood_limit_ms: int = 10_000
    """Caller audio refused for arriving too fast, after which the call ends (``twilio_flood``)."""
    caller_silence_timeout_s: float = 10.0
    """A live stream with no ``media`` for this long has stalled (Twilio sends a frame every 20 ms, silence
    included: twilio-media-streams.md §1.3)."""
    agent_audio_bytes_per_s: int = 2 * 2**20
    """``audio_output`` bytes decoded per second, sustained (real speech at 48 kHz is ~0.13 MiB/s)."""
    agent_audio_burst_bytes: int = 8 * 2**20
    """``audio_output`` bytes that may arrive at once before the sustained rate applies."""
    max_audio_output_bytes: int = 4 * 2**20
    """Largest single ``audio_output`` message decoded (about 30 s of 48 kHz audio)."""
    mark_echo_timeout_s: float = 5.0
    """Twilio echoes a mark when the audio before it has played (twilio-media-streams.md §1.5); an echo this
    overdue means the caller's side stopped reading or playing."""
    upstream_stall_timeout_s: float = 10.0
    """The agent said nothing at all for this long while the caller spoke: the session has stalled."""
    upstream_stall_speech_ms: int = 1000
    """Caller speech since the agent's last message that makes its silence a stall, not a pause."""

    def __post_init__(self) -> None:
        for name in ("caller_burst_ms", "caller_flood_limit_ms", "agent_audio_bytes_per_s", "max_audio_output_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.agent_audio_burst_bytes < self.max_audio_output_bytes:
            raise ConfigError("agent_audio_burst_bytes must be >= max_audio_output_bytes (one message must fit)")


class TokenBucket:
    """``rate`` units per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("_burst", "_last_s", "_level", "_rate")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._level = burst
        self._last_s = now

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` if the bucket holds it at ``now``; False (nothing spent) otherwise."""
        if now > self._last_s:
            self._level = min(self._burst, self._level + (now - self._last_s) * self._rate)
            self._last_s = now
        if amount > self._level:
            return False
        self._level -= amount
        return True


# RMS of linear16 above which a caller frame counts as speech (-40 dBFS: phone-line noise sits well below).
SPEECH_RMS = 328


class UpstreamSilence:
    """Notices an upstream that has stalled: nothing from it while the caller speaks (docs/operations.md §4).

    An EVI session sends interim transcripts while the caller talks (docs/evi-protocol.md §5), so a session
    that sends nothing at all for ``upstream_stall_timeout_s`` although the caller has spoken at least
    ``upstream_stall_speech_ms`` meanwhile is stuck, even if its socket answers pings.
    """

    __slots__ = ("_heard_s", "_speech_ms", "_speech_needed_ms", "_timeout_s")

    def __init__(self, params: BudgetParams, now: float) -> None:
        self._timeout_s = params.upstream_stall_timeout_s
        self._speech_needed_ms = params.upstream_stall_speech_ms
        self._heard_s = now
        self._speech_ms = 0.0

    def heard(self, now: float) -> None:
        """The upstream sent something."""
        self._heard_s = now
        self._speech_ms = 0.0

    def caller_frame(self, pcm16: bytes, duration_ms: float) -> None:
        """A caller frame went to the upstream; count it if it is speech."""
        if audioop.rms(pcm16, 2) >= SPEECH_RMS:
            self._speech_ms += duration_ms

    def stalled(self, now: float) -> bool:
        """True when the upstream's silence has outlasted the bound while the caller spoke."""
        return self._speech_ms >= self._speech_needed_ms and now - self._heard_s >= self._timeout_s


# Upstream messages up to this size are always decoded (control messages, transcripts); larger ones spend the
# audio byte budget.
SMALL_MESSAGE_BYTES = 64 * 1024


class PeerWatch:
    """Both peers' budgets and liveness for one call."""

    def __init__(self, params: BudgetParams, now: float) -> None:
        self._params = params
        self._caller = TokenBucket(1000.0, params.caller_burst_ms, now)
        self.caller_refused_ms = 0.0
        """Caller audio refused for arriving faster than real time."""
        self._agent = TokenBucket(params.agent_audio_bytes_per_s, params.agent_audio_burst_bytes, now)
        self._last_media_s = now
        self._upstream = UpstreamSilence(params, now)
        self.caller_frame = self._upstream.caller_frame
        """A caller frame went to the upstream (``caller_frame(pcm16, duration_ms)``): counted if it is speech."""

    def started(self, now: float) -> None:
        """Twilio's ``start``: media is due from now on."""
        self._last_media_s = now

    def media(self, duration_ms: float, now: float) -> Literal["accept", "refuse", "flood"]:
        """A caller frame of ``duration_ms``: within the budget, refused, or the last straw (``flood``)."""
        self._last_media_s = now
        if self._caller.take(duration_ms, now):
            return "accept"
        self.caller_refused_ms += duration_ms
        return "flood" if self.caller_refused_ms >= self._params.caller_flood_limit_ms else "refuse"

    def upstream_message(self, size_bytes: int, now: float) -> bool:
        """True when an upstream message of ``size_bytes`` may be decoded now."""
        if size_bytes > self._params.max_audio_output_bytes:
            return False
        return size_bytes <= SMALL_MESSAGE_BYTES or self._agent.take(size_bytes, now)

    def heard_upstream(self, now: float) -> None:
        """The upstream sent a valid message."""
        self._upstream.heard(now)

    def due(
        self,
        now: float,
        state: CallState,
        *,
        echo_overdue_s: float,
        link_open: bool,
        tool_waiting: bool,
        group_known: bool,
    ) -> tuple[Input, str] | None:
        """The liveness input due at ``now``, with what happened: a stream without media, mark echoes far behind
        playback, or an upstream that says nothing while the caller speaks (a drop to resume when its chat group
        is known)."""
        p = self._params
        if state is not CallState.AWAITING_START and now - self._last_media_s >= p.caller_silence_timeout_s:
            return Input.TWILIO_SILENT, f"no media from Twilio for {p.caller_silence_timeout_s:g} s"
        if echo_overdue_s >= p.mark_echo_timeout_s:
            return Input.TWILIO_STALLED, f"mark echoes {echo_overdue_s:.1f} s behind playback"
        if state is CallState.ACTIVE and link_open and not tool_waiting and self._upstream.stalled(now):
            self._upstream.heard(now)  # one verdict per stall
            detail = f"upstream silent for {p.upstream_stall_timeout_s:g} s while the caller spoke"
            return (Input.UPSTREAM_STALLED if group_known else Input.UPSTREAM_LOST), detail
        return None
