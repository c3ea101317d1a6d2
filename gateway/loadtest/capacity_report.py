"""What `gateway bench capacity` measured, and its table: per path and level, the latency each way, frames
lost, CPU per call-second, messages to Twilio per second of speech, RSS per call, underruns."""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.loadtest.capacity_paired import PairedRun, format_paired
from gateway.loadtest.relay import LATENCY_BIN_NS

__all__ = [
    "GOAL_CALLS_PER_CORE",
    "GOAL_CPU_RATIO",
    "GOAL_MESSAGES_PER_SPEECH_S",
    "CapacityReport",
    "LevelResult",
    "PathResult",
    "format_table",
    "percentile_ms",
    "reply_latencies_ns",
]

GOAL_CPU_RATIO = 1.25
GOAL_CALLS_PER_CORE = 200
GOAL_MESSAGES_PER_SPEECH_S = 20.0
MAX_REPLY_LATENCY_NS = 2_000_000_000
"""A reply heard later than this after the sink began it is not matched to it (counted as unheard)."""
_NOISY_SHARE = 0.1
LOAD_BOUND_SHARE = 0.85
"""A load generator past this share of its CPU delays what it sends and reads: latency measured then is partly
its own."""


@dataclass(frozen=True, slots=True)
class PathResult:
    """One path (gateway or relay) at one level. ``in_*``: caller send → EVI-side receive of each frame;
    ``out_*``: EVI-side send of a reply's first ``audio_output`` → the caller receiving its first audio."""

    calls: int
    connected: int
    closed_early: int
    frames_sent: int
    frames_received: int
    frames_lost: int
    in_p50_ms: float | None
    in_p99_ms: float | None
    in_max_ms: float | None
    out_p50_ms: float | None
    out_p99_ms: float | None
    out_max_ms: float | None
    replies_started: int
    replies_unheard: int
    cpu_ms_per_call_s: float
    calls_per_core: float | None
    messages_to_twilio: int
    messages_per_speech_s: float | None
    """Every message the server sent to the callers in the window (media, mark, clear) per second heard."""
    rss_mib: float
    rss_kib_per_call: float
    """The server's resident memory during the window minus before dialling, over the calls."""
    server_core_share: float
    callers_core_share: float
    sinks_core_share: float
    others_core_share: float
    """CPU used on this machine by anything but the benchmark during the window: noise when not ~0."""
    underruns: int
    underrun_ms: float
    heard_s: float
    sequence_gaps: int
    caller_max_lag_ms: float
    dial_errors: int
    dial_error: str | None


@dataclass(frozen=True, slots=True)
class LevelResult:
    """Both paths at one level, and the verdict on the gateway."""

    calls: int
    relay: PathResult
    gateway: PathResult
    added_in_p50_ms: float | None
    added_in_p99_ms: float | None
    added_out_p50_ms: float | None
    added_out_p99_ms: float | None
    cpu_ratio: float | None
    ok: bool
    why: str
    attempts: int = 1
    limit_ms: float = 10.0
    """The p99 limit the level was judged by."""

    def machine_bound(self) -> list[str]:
        """What, beside the gateway, missed the limit at this level: the floor relay itself, or a load
        generator near the end of its CPU (then the level says more about the machine than the gateway)."""
        notes = []
        relay = self.relay
        if any(p99 is not None and p99 >= self.limit_ms for p99 in (relay.in_p99_ms, relay.out_p99_ms)):
            notes.append("the floor relay missed it too")
        load = max(r.callers_core_share + r.sinks_core_share for r in (relay, self.gateway))
        if load >= LOAD_BOUND_SHARE:
            notes.append(f"the load generator used {load:.0%} of its CPU")
        return notes


@dataclass
class CapacityReport:
    """The whole sweep."""

    config: dict[str, Any]
    machine: dict[str, Any]
    levels: list[LevelResult] = field(default_factory=list)
    stopped: str = ""
    paired: list[PairedRun] = field(default_factory=list)
    """``--paired``: windows with both servers loaded at once (CPU only)."""

    def limit(self) -> LevelResult | None:
        """The passing level with the most calls."""
        return max((lvl for lvl in self.levels if lvl.ok), key=lambda lvl: lvl.calls, default=None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, with the verdict."""
        best = self.limit()
        per_core = best.gateway.calls_per_core if best else None
        ratio = best.cpu_ratio if best else None
        return {
            "config": self.config,
            "machine": self.machine,
            "levels": [asdict(lvl) for lvl in self.levels],
            "paired": [asdict(run) for run in self.paired],
            "stopped": self.stopped,
            "limit_calls": best.calls if best else None,
            "calls_per_core": per_core,
            "cpu_ratio_at_limit": ratio,
            "goal": {
                "cpu_ratio_max": GOAL_CPU_RATIO,
                "calls_per_core_min": GOAL_CALLS_PER_CORE,
                "met": bool(per_core and ratio and per_core >= GOAL_CALLS_PER_CORE and ratio <= GOAL_CPU_RATIO),
            },
        }


def percentile_ms(histogram: dict[int, int], fraction: float) -> float | None:
    """The ``fraction`` quantile of a histogram of ``LATENCY_BIN_NS`` bins, at the bin's middle."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = fraction * (total - 1), 0
    for bin_index in sorted(histogram):
        seen += histogram[bin_index]
        if seen > rank:
            return (bin_index + 0.5) * LATENCY_BIN_NS / 1e6
    return None  # unreachable: seen reaches total


def reply_latencies_ns(started_ns: list[int], heard_ns: list[int]) -> tuple[list[int], list[int]]:
    """Match one call's reply starts (EVI side) with the first audio the caller heard of each: every heard
    reply goes to the latest start before it, each start at most once. Returns the latencies and the starts
    not heard within ``MAX_REPLY_LATENCY_NS``."""
    starts = sorted(started_ns)
    used: set[int] = set()
    latencies = []
    for heard in sorted(heard_ns):
        at = bisect.bisect_right(starts, heard) - 1
        if at >= 0 and at not in used and heard - starts[at] <= MAX_REPLY_LATENCY_NS:
            used.add(at)
            latencies.append(heard - starts[at])
    return latencies, [start for at, start in enumerate(starts) if at not in used]


# ----------------------------------------------------------------------------------------- the table

_HEADER = (
    f"{'calls':>5}  {'path':<8}{'in p50':>7}{'p99':>6}{'max':>6}{'out p50':>8}{'p99':>6}{'max':>6}  "
    f"{'lost/sent':<14}{'cpu ms/call·s':>14}{'calls/core':>11}{'msgs/s':>7}{'KiB/call':>9}"
    f"{'core':>6}{'load-gen':>9}{'other':>6}{'underruns':>10}"
)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _path_line(name: str, r: PathResult) -> str:
    return (
        f"{r.calls:>5}  {name:<8}{_f(r.in_p50_ms):>7}{_f(r.in_p99_ms, 1):>6}{_f(r.in_max_ms, 0):>6}"
        f"{_f(r.out_p50_ms, 1):>8}{_f(r.out_p99_ms, 1):>6}{_f(r.out_max_ms, 0):>6}  "
        f"{f'{r.frames_lost}/{r.frames_sent}':<14}{_f(r.cpu_ms_per_call_s, 3):>14}{_f(r.calls_per_core, 0):>11}"
        f"{_f(r.messages_per_speech_s, 1):>7}{r.rss_kib_per_call:>9.0f}"
        f"{r.server_core_share:>6.0%}{r.callers_core_share + r.sinks_core_share:>9.0%}"
        f"{r.others_core_share:>6.0%}{r.underruns:>10}"
    )


def level_lines(level: LevelResult) -> str:
    """Both paths of one level and the verdict, as the progress output and the table print them."""
    verdict = ("ok" if level.ok else f"FAIL: {level.why}") + (
        f" (attempt {level.attempts})" if level.attempts > 1 else ""
    )
    if not level.ok and (bound := level.machine_bound()):
        verdict += f"; machine-bound: {', '.join(bound)}"
    added = (
        f"in p50 {_f(level.added_in_p50_ms)} / p99 {_f(level.added_in_p99_ms)} ms, "
        f"out p50 {_f(level.added_out_p50_ms, 1)} / p99 {_f(level.added_out_p99_ms, 1)} ms"
    )
    return (
        f"{_path_line('relay', level.relay)}\n{_path_line('gateway', level.gateway)}\n"
        f"{'':>7}gateway − relay: {added}; CPU × {_f(level.cpu_ratio)}   {verdict}"
    )


def _title(report: CapacityReport) -> str:
    c = report.config
    return (
        f"gateway bench capacity: {report.machine['cpus']} CPUs, Python {report.machine['python']}; "
        f"{c['window_s']:g} s window per run; per call a {c['reply_s']:g} s reply every {c['reply_every_s']:g} s "
        f"in {c['reply_chunk_ms']} ms audio_output chunks; servers on {c.get('event_loop', 'asyncio')}, "
        f"load generator on {report.machine.get('load_event_loop', 'asyncio')}"
    )


def format_table(report: CapacityReport) -> str:
    """The sweep as a plain-text table with the verdict."""
    c = report.config
    data = report.as_dict()
    if report.paired:
        return "\n".join([_title(report), f"pinning: {report.machine.get('pinning', 'off')}",
                          *format_paired(report.paired)]) + "\n"  # fmt: skip
    lines = [
        _title(report),
        "in: caller send → EVI-side receive of each frame; out: EVI-side send of a reply → the caller hearing it "
        "(ms); msgs/s: messages to Twilio per second of speech; KiB/call: server RSS added per call",
        "core: the server's share of one CPU; load-gen: callers + sink; other: anything else on the machine (noise)",
        f"pinning: {report.machine.get('pinning', 'off')}",
        _HEADER,
        *(level_lines(level) for level in sorted(report.levels, key=lambda lvl: lvl.calls)),
        f"stopped: {report.stopped}",
    ]
    noise = max(
        (share for lvl in report.levels for share in (lvl.relay.others_core_share, lvl.gateway.others_core_share)),
        default=0.0,
    )
    if noise > _NOISY_SHARE:
        lines.append(
            f"warning: other processes used up to {noise:.0%} of a CPU during a window: "
            "latency and CPU figures are noisy"
        )
    if data["limit_calls"] is None:
        lines.append(f"limit: no level passed (p99 < {c['max_p99_ms']:g} ms each way, 0 frames lost)")
    else:
        lines.append(
            f"limit: {data['limit_calls']} calls with p99 < {c['max_p99_ms']:g} ms each way and 0 frames lost; "
            f"there the gateway's CPU per call-second allows {_f(data['calls_per_core'], 0)} calls per core and is "
            f"{_f(data['cpu_ratio_at_limit'])} × the floor relay's (goal ≤ {GOAL_CPU_RATIO:g} ×, "
            f"≥ {GOAL_CALLS_PER_CORE} calls/core: {'met' if data['goal']['met'] else 'not met'})"
        )
    failed = sorted((lvl for lvl in report.levels if not lvl.ok), key=lambda lvl: lvl.calls)
    if failed and (bound := failed[0].machine_bound()):
        lines.append(
            f"at {failed[0].calls} calls, the first level that failed, {' and '.join(bound)}: that limit is the "
            "machine's as much as the gateway's"
        )
    return "\n".join(lines) + "\n"
