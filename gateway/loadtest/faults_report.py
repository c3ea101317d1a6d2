"""The verdicts, table and JSON of ``gateway bench faults``.

Per scenario (one row):

- **crashed**: the gateway's process died during the scenario (or, for the last one, did not exit 0 when
  stopped with SIGINT), or its log gained a line that shows an exception nobody handled: any JSON line at level
  ``error`` or ``critical``, any line carrying a traceback (the ``exception`` field of the JSON format), and any
  line at all containing ``Traceback (most recent call last)``, ``Unhandled`` or ``Exception ignored`` (what
  Python itself writes to stderr for an exception no code caught). The gateway runs with ``GATEWAY_LOG_FORMAT=json``
  at level WARNING, so every record is one JSON object with its level.
- **disturbed**: canary calls (scenarios 1-5) that were cut, went unanswered for a turn, saw a protocol violation
  or could not connect; for the soak, normal calls that did not hear their agent or did not end normally.
- **leaks**: after the scenario's peers are gone, the gateway did not come back to idle within
  :data:`IDLE_WAIT_S`: ``gateway_active_calls`` and ``gateway_pending_streams`` at 0, ``/healthz`` active calls 0,
  asyncio tasks at most :data:`TASK_SLACK` above the idle baseline taken at start, open file descriptors at most
  :data:`FD_SLACK` above it. The soak also fails if its fds or tasks grew from its start to its end by more than
  those slacks, or its RSS grew by more than :data:`RSS_SECOND_HALF_MIB` over the second half of its calls (the
  first half warms caches and allocator arenas).

Any of these, or a scenario that could not run or tried nothing, makes the exit status 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FD_SLACK",
    "IDLE_WAIT_S",
    "RSS_SECOND_HALF_MIB",
    "TASK_SLACK",
    "FaultsReport",
    "Sample",
    "ScenarioResult",
    "crash_lines",
    "describe_crash",
    "format_table",
]

IDLE_WAIT_S = 25.0
"""How long the gateway has to come back to idle after a scenario (a call may take its drain_timeout_s to end)."""
FD_SLACK = 4
TASK_SLACK = 2
RSS_SECOND_HALF_MIB = 4.0
_CRASH_MARKERS = ("Traceback (most recent call last)", "Unhandled", "Exception ignored")
_MIB = 2**20
_OUR_PATH = re.compile(r'"[^"]*/(gateway/[^"]+)"')


@dataclass(frozen=True, slots=True)
class Sample:
    """The gateway's process and /metrics at one moment."""

    rss_bytes: int
    fds: int
    tasks: int | None
    active_calls: int
    pending_streams: int

    @property
    def rss_mib(self) -> float:
        return self.rss_bytes / _MIB


@dataclass
class ScenarioResult:
    """One row of the table."""

    name: str
    title: str
    tried: int = 0
    tried_unit: str = "messages"
    crashed: bool = False
    crash_lines: list[str] = field(default_factory=list)
    canaries: int = 0
    disturbed: int = 0
    disturbed_why: list[str] = field(default_factory=list)
    leaks: bool = False
    leak_why: list[str] = field(default_factory=list)
    before: Sample | None = None
    after: Sample | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        """Whether this row makes the run fail."""
        return self.crashed or self.disturbed > 0 or self.leaks or self.error is not None or self.tried == 0

    def reasons(self) -> list[str]:
        """Why it failed, one phrase each (empty when it passed)."""
        out = []
        if self.error is not None:
            out.append(f"did not complete: {self.error}")
        if self.tried == 0:
            out.append("tried nothing")
        if self.crashed:
            kinds = sorted({describe_crash(line) for line in self.crash_lines})
            out.append(f"gateway crashed ({len(self.crash_lines)} lines): {' | '.join(kinds[:3])}")
        if self.disturbed:
            out.append(f"{self.disturbed} calls disturbed: {'; '.join(self.disturbed_why[:3])}")
        if self.leaks:
            out.append("leak: " + "; ".join(self.leak_why))
        return out


@dataclass
class FaultsReport:
    """The whole run."""

    config: dict[str, Any]
    machine: dict[str, Any]
    scenarios: list[ScenarioResult] = field(default_factory=list)
    out_dir: str = ""
    duration_s: float = 0.0
    gateway_exit_status: int | None = None

    @property
    def failed(self) -> bool:
        return any(s.failed for s in self.scenarios) or not self.scenarios

    def exit_status(self) -> int:
        """0 when every scenario passed, else 1."""
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (``verdict`` is ``pass`` or ``fail``)."""
        scenarios = []
        for s in self.scenarios:
            row = asdict(s)
            row["failed"], row["reasons"] = s.failed, s.reasons()
            scenarios.append(row)
        return {
            "verdict": "fail" if self.failed else "pass",
            "duration_s": round(self.duration_s, 1),
            "out_dir": self.out_dir,
            "gateway_exit_status": self.gateway_exit_status,
            "config": self.config,
            "machine": self.machine,
            "scenarios": scenarios,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"


def crash_lines(lines: Iterable[str]) -> list[str]:
    """The lines of a gateway log that show an unhandled exception (see the module docstring)."""
    found = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if any(marker in text for marker in _CRASH_MARKERS):
            found.append(text)
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if isinstance(entry, dict) and (
            str(entry.get("level", "")).lower() in ("error", "critical") or entry.get("exception")
        ):
            found.append(text)
    return found


def describe_crash(line: str) -> str:
    """One crash line in a few words: level, logger and message, the exception's last line and the innermost
    frame in the gateway's own code."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line[:200]
    if not isinstance(entry, dict):
        return line[:200]
    head = f"{entry.get('level')} {entry.get('logger')} {str(entry.get('message', ''))[:100]!r}"
    exception = str(entry.get("exception") or "")
    if not exception:
        return head
    rows = [row.lstrip("|+- ").strip() for row in exception.splitlines()]  # exception groups indent with | and +
    ours = [row for row in rows if row.startswith("File ") and "/gateway/" in row and "/site-packages/" not in row]
    errors = [row for row in rows if re.match(r"[\w.]*(Error|Exception|Exit|Interrupt)\b", row)]
    where = " at " + _OUR_PATH.sub(r"\1", ours[-1].removeprefix("File ")) if ours else ""
    return f"{head}: {(errors or rows or [''])[-1][:160]}{where}"


def _mib(before: Sample | None, after: Sample | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{before.rss_mib:.1f}→{after.rss_mib:.1f}"


def _pair(before: int | None, after: int | None) -> str:
    return "-" if before is None or after is None else f"{before}→{after}"


def format_table(report: FaultsReport) -> str:
    """The table: one row per scenario, its notes indented below it, then the verdict."""
    header = (
        f"{'scenario':<16} {'tried':>18}  {'crashed':<7}  {'disturbed':<9}  {'leaks':<5}  "
        f"{'rss MiB':<11}  {'fds':<7}  {'tasks':<7}  {'s':>5}"
    )
    lines = [header, "-" * len(header)]
    for s in report.scenarios:
        tried = f"{s.tried:,} {s.tried_unit}"
        before, after = s.before, s.after
        fds = _pair(before.fds if before else None, after.fds if after else None)
        tasks = _pair(before.tasks if before else None, after.tasks if after else None)
        disturbed = f"{s.disturbed}/{s.canaries}"
        lines.append(
            f"{s.name:<16} {tried:>18}  {'YES' if s.crashed else 'no':<7}  {disturbed:<9}  "
            f"{'YES' if s.leaks else 'no':<5}  {_mib(before, after):<11}  {fds:<7}  {tasks:<7}  {s.duration_s:>5.1f}"
        )
        for note in [*s.notes, *(f"FAIL: {why}" for why in s.reasons())]:
            lines.append(f"    {note}")
    verdict = "FAIL" if report.failed else "PASS"
    lines.append("")
    lines.append(f"{verdict} in {report.duration_s:.0f} s; gateway exit status {report.gateway_exit_status}; "
                 f"logs in {report.out_dir}")  # fmt: skip
    return "\n".join(lines) + "\n"
