"""Load-test reports in text: the live progress line, the summary table, and the JSON report.

Owns how a :class:`~gateway.loadtest.runner.LoadTestResult` reads to a person at a terminal (one progress
line on stderr, one table on stdout) and to a program (``--json-out``: the run's settings, the metric
distributions, every call with every turn, and active calls over time).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from gateway.loadtest.metrics import METRICS, CallResult, Stats, stats, summarize
from gateway.loadtest.runner import LoadTestResult, Progress, webhook_url_for

__all__ = ["ProgressLine", "end_label", "report_dict", "summary_table", "write_json"]

REPORT_VERSION = 1
_MAX_FAILURES_LISTED = 10


def end_label(call: CallResult) -> str:
    """How a call ended, in words: who hung up, the close code, or where dialling failed."""
    if call.end == "caller_hangup":
        return "caller hung up"
    if call.end == "gateway_closed":
        return f"gateway closed ({call.close_code})"
    if call.end == "dial_error":
        status = f" HTTP {call.dial_status}" if call.dial_status is not None else ""
        return f"dial error at {call.dial_stage}{status}"
    return call.end


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"


def summary_table(result: LoadTestResult) -> str:
    """The run in a few lines: calls ok/failed, how they ended, p50/p95/p99/max of every metric, failures."""
    calls = result.calls
    failed = [c for c in calls if not c.ok]
    cfg = result.config
    lines = [
        f"gateway loadtest → {webhook_url_for(cfg.target)}",
        f"{len(calls)} calls: {len(calls) - len(failed)} ok, {len(failed)} failed in {result.duration_s:.1f} s "
        f"(concurrency {cfg.concurrency}, peak {max((n for _, n in result.concurrency_timeline), default=0)}, "
        f"seed {cfg.seed})",
    ]
    ends = Counter(end_label(c) for c in calls)
    lines.append("ended: " + ", ".join(f"{label} × {n}" for label, n in ends.most_common()))
    if result.stopped_early:
        lines.append(f"warning: {result.stopped_early}")
    if cfg.network.active:
        net = cfg.network
        lines.append(
            f"network: jitter ≤{net.extra_jitter_ms:g} ms, burst {net.burst_hold_ms}/{net.burst_every_ms} ms, "
            f"drop ratio {net.drop_ratio:g}, drop every {net.drop_every_n or '-'} (run {net.drop_run})"
        )
    width = max(len(label) for label in METRICS.values())
    lines.append("")
    lines.append(f"{'metric':<{width}}  {'n':>5}  {'p50':>7}  {'p95':>7}  {'p99':>7}  {'max':>7}")
    for key, st in summarize(calls).items():
        cells = (_fmt(st.p50), _fmt(st.p95), _fmt(st.p99), _fmt(st.max))
        lines.append(f"{METRICS[key]:<{width}}  {st.n:>5}  " + "  ".join(f"{c:>7}" for c in cells))
    missed = sum(t.barge_in_missed for c in calls for t in c.turns)
    no_answer = sum(1 for c in calls for t in c.turns if t.kind != "dtmf" and t.response_latency_ms is None)
    lag = stats([c.max_tick_late_ms for c in calls if c.end != "dial_error"])
    lines.append("")
    lines.append(f"turns without a heard reply: {no_answer}; barge-ins with no agent speech to barge into: {missed}")
    if lag.max is not None and lag.max > 100:
        lines.append(f"warning: the load generator fell behind by up to {lag.max:.0f} ms; results may be skewed")
    if failed:
        lines.append("")
        lines.append("failures:")
        for call in failed[:_MAX_FAILURES_LISTED]:
            lines.append(f"  call {call.index} ({call.scenario}): {end_label(call)}: {call.failure}")
        if len(failed) > _MAX_FAILURES_LISTED:
            lines.append(f"  … and {len(failed) - _MAX_FAILURES_LISTED} more (see the JSON report)")
    return "\n".join(lines) + "\n"


def _stats_dict(st: Stats) -> dict[str, Any]:
    return dataclasses.asdict(st)


def report_dict(result: LoadTestResult) -> dict[str, Any]:
    """The whole run as plain JSON-able data."""
    cfg = result.config
    return {
        "version": REPORT_VERSION,
        "target": webhook_url_for(cfg.target),
        "settings": {
            "calls": cfg.calls,
            "concurrency": cfg.concurrency,
            "ramp_up_s": cfg.ramp_up_s,
            "duration_s": cfg.duration_s,
            "seed": cfg.seed,
            "max_call_s": cfg.max_call_s,
            "signed": cfg.auth_token is not None,
            "network": {k: v for k, v in dataclasses.asdict(cfg.network).items() if k != "seed"},
        },
        "scenarios": [
            {
                "name": s.name,
                "recording": str(s.recording_path),
                "scenario_file": None if s.scenario_path is None else str(s.scenario_path),
                "recording_ms": s.recording_ms,
                "turns": [
                    {
                        "kind": t.kind,
                        "start_ms": t.source_start_ms,
                        "end_ms": t.source_end_ms,
                        "pause_before_ms": t.pause_before_ms,
                        "barge_in_after_ms": t.barge_in_after_ms,
                        "dtmf": t.dtmf,
                    }
                    for t in s.turns
                ],
            }
            for s in cfg.scenarios
        ],
        "duration_s": result.duration_s,
        "stopped_early": result.stopped_early,
        "calls_ok": sum(c.ok for c in result.calls),
        "calls_failed": sum(not c.ok for c in result.calls),
        "summary": {key: _stats_dict(st) for key, st in summarize(result.calls).items()},
        "concurrency_timeline": [list(point) for point in result.concurrency_timeline],
        "calls": [dataclasses.asdict(c) for c in result.calls],
    }


def write_json(result: LoadTestResult, path: str | Path) -> None:
    """Write :func:`report_dict` to ``path``."""
    Path(path).write_text(json.dumps(report_dict(result), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


class ProgressLine:
    """One line on ``stream`` telling how the run is going; redrawn in place on a terminal."""

    def __init__(self, stream: TextIO, total: int | None, *, tty: bool) -> None:
        self.stream = stream
        self.total = total
        self.tty = tty
        self._last_text = ""

    def render(self, progress: Progress, elapsed_s: float) -> str:
        """The line for ``progress`` after ``elapsed_s`` seconds."""
        total = "" if self.total is None else f"/{self.total}"
        p50 = stats(progress.latencies_ms).p50
        latency = "-" if p50 is None else f"{p50:.0f} ms"
        return (
            f"loadtest {elapsed_s:5.0f} s: {progress.started}{total} started, {progress.finished} finished "
            f"({progress.failed} failed), {progress.active} active, p50 latency {latency}"
        )

    def show(self, progress: Progress, elapsed_s: float) -> None:
        """Draw the line (on a terminal in place; elsewhere only when it changed)."""
        text = self.render(progress, elapsed_s)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        elif text.split(":", 1)[1] != self._last_text.split(":", 1)[-1]:
            self.stream.write(text + "\n")
        self._last_text = text
        self.stream.flush()

    def done(self) -> None:
        """End the line so the next output starts on a fresh one."""
        if self.tty and self._last_text:
            self.stream.write("\n")
            self.stream.flush()
