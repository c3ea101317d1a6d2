"""Network trouble between Twilio and the gateway, as the caller emulator injects it, deterministic by seed.

Owns the per-frame decisions for one call's outgoing media: drop the frame (Twilio discards caller audio
when the path to the gateway is congested, warning 31930, twilio-media-streams.md §1.3 and §5.1) or delay
it (random jitter, and periodic bursts where frames are held and then released all at once). Frames are
never reordered: a WebSocket is one TCP stream, so a late frame holds back everything after it. Dropped
frames leave a hole in ``media.timestamp``; later frames keep their media-clock values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.errors import ConfigError

__all__ = ["FramePlan", "FramePlanner", "NetworkTrouble", "parse_burst", "parse_drop_pattern"]


@dataclass(frozen=True, slots=True)
class NetworkTrouble:
    """What goes wrong on the caller's uplink. All zero (the default) is a clean network.

    ``extra_jitter_ms``: each frame is delayed by a uniform random 0..extra_jitter_ms (order kept).
    ``burst_every_ms`` / ``burst_hold_ms``: from ``burst_every_ms`` on, every ``burst_every_ms`` the
    frames of the next ``burst_hold_ms`` are held, then sent at once.
    ``drop_ratio``: each frame is dropped with this probability.
    ``drop_every_n`` / ``drop_run``: the last ``drop_run`` frames of every ``drop_every_n`` are dropped
    (``drop_every_n=10`` drops the 10th, 20th, … frame).
    ``chunk_skips``: whether ``media.chunk`` skips with the timestamp over a dropped frame (unconfirmed
    which one Twilio does, §1.3), or keeps counting the frames actually sent.
    """

    extra_jitter_ms: float = 0.0
    burst_every_ms: int = 0
    burst_hold_ms: int = 0
    drop_ratio: float = 0.0
    drop_every_n: int = 0
    drop_run: int = 1
    chunk_skips: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.extra_jitter_ms < 0:
            raise ConfigError(f"extra_jitter_ms must not be negative, got {self.extra_jitter_ms}")
        if self.burst_every_ms < 0 or self.burst_hold_ms < 0:
            raise ConfigError(f"burst every/hold must not be negative, got {self.burst_every_ms}/{self.burst_hold_ms}")
        if (self.burst_every_ms == 0) != (self.burst_hold_ms == 0):
            raise ConfigError("burst needs both an interval and a hold time (or neither)")
        if self.burst_hold_ms >= self.burst_every_ms > 0:
            raise ConfigError(
                f"burst hold {self.burst_hold_ms} ms must be shorter than its interval {self.burst_every_ms} ms"
            )
        if not 0.0 <= self.drop_ratio < 1.0:
            raise ConfigError(f"drop_ratio must be in [0, 1), got {self.drop_ratio}")
        if self.drop_every_n < 0:
            raise ConfigError(f"drop_every_n must not be negative, got {self.drop_every_n}")
        if self.drop_every_n and not 1 <= self.drop_run < self.drop_every_n:
            raise ConfigError(f"drop_run must be 1..{self.drop_every_n - 1} for drop_every_n={self.drop_every_n}")

    @property
    def active(self) -> bool:
        """True when anything at all is injected."""
        return bool(self.extra_jitter_ms or self.burst_every_ms or self.drop_ratio or self.drop_every_n)

    def planner(self, frame_ms: int) -> FramePlanner:
        """A fresh planner for one call (same seed, same decisions)."""
        return FramePlanner(self, frame_ms)


@dataclass(frozen=True, slots=True)
class FramePlan:
    """The fate of one media frame: dropped, or sent ``extra_delay_ms`` after its tick."""

    drop: bool
    extra_delay_ms: float


class FramePlanner:
    """Decides frame by frame, in frame order; drops and jitter use separate random streams."""

    def __init__(self, trouble: NetworkTrouble, frame_ms: int) -> None:
        self.trouble = trouble
        self.frame_ms = frame_ms
        self._drop_rng = random.Random(f"{trouble.seed}:drop")
        self._jitter_rng = random.Random(f"{trouble.seed}:jitter")

    def plan(self, frame_index: int) -> FramePlan:
        """Plan frame ``frame_index`` (0-based); call once per frame, in order."""
        t = self.trouble
        drop = False
        if t.drop_every_n and frame_index % t.drop_every_n >= t.drop_every_n - t.drop_run:
            drop = True
        if t.drop_ratio and self._drop_rng.random() < t.drop_ratio:
            drop = True
        delay_ms = self._jitter_rng.uniform(0.0, t.extra_jitter_ms) if t.extra_jitter_ms else 0.0
        media_ms = frame_index * self.frame_ms
        if t.burst_every_ms and media_ms >= t.burst_every_ms:
            into_ms = media_ms % t.burst_every_ms
            if into_ms < t.burst_hold_ms:
                delay_ms += t.burst_hold_ms - into_ms
        return FramePlan(drop, delay_ms)


def parse_drop_pattern(text: str) -> tuple[int, int]:
    """``"10"`` → drop every 10th frame; ``"10:3"`` → drop 3 frames of every 10. Returns (every_n, run)."""
    every, _, run = text.partition(":")
    try:
        every_n, run_n = int(every), int(run) if run else 1
    except ValueError:
        raise ConfigError(f"drop pattern {text!r} is not N or N:RUN (whole numbers)") from None
    if every_n < 2 or not 1 <= run_n < every_n:
        raise ConfigError(f"drop pattern {text!r} needs N >= 2 and 1 <= RUN < N")
    return every_n, run_n


def parse_burst(text: str) -> tuple[int, int]:
    """``"5000:300"`` → every 5000 ms hold frames for 300 ms. Returns (every_ms, hold_ms)."""
    every, sep, hold = text.partition(":")
    try:
        every_ms, hold_ms = int(every), int(hold)
    except ValueError:
        raise ConfigError(f"burst {text!r} is not EVERY_MS:HOLD_MS (whole numbers)") from None
    if not sep or not 0 < hold_ms < every_ms:
        raise ConfigError(f"burst {text!r} needs 0 < HOLD_MS < EVERY_MS")
    return every_ms, hold_ms
