"""``gateway bench capacity --paired N``: the CPU ratio to the floor, measured with both servers running at once.

On a shared machine the speed of a core drifts by tens of percent from one minute to the next, so a gateway run
and a relay run made one after the other compare two different machines. Here the relay and the gateway each
carry ``N`` calls at the same time, pinned to the same core, fed by the same callers and sink: whatever the
machine does during the window, it does to both, and their CPU per call-second compare like for like. Each
server gets its own caller processes (the first half to the relay, the second to the gateway) and its own
range of call indices. The latency of a paired run is not reported: two servers share one core.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import CapacityRunError
from gateway.loadtest.capacity_procs import Child, cpu_s, machine_busy_s

__all__ = ["PairedRun", "PairedSetup", "format_paired", "paired_run", "paired_runs"]

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class PairedRun:
    """One window with both servers loaded at once."""

    calls: int
    """Calls on each server."""
    relay_ms_per_call_s: float
    gateway_ms_per_call_s: float
    cpu_ratio: float
    core_share: float
    """Both servers' CPU over the window, as a share of the one core they share."""
    others_core_share: float
    """CPU used by anything but the benchmark during the window: noise when not ~0."""


@dataclass(frozen=True, slots=True)
class PairedSetup:
    """What every paired window uses: the coordinator's children, the servers' ports and the load's shape."""

    children: dict[str, list[Child]]
    """The coordinator's ``relay``, ``gateway``, ``callers`` and ``sinks``."""
    ports: dict[str, int]
    auth_token: str
    dial_rate_per_s: float
    settle_s: float
    window_s: float
    wait_idle: Callable[[int], Awaitable[None]]


async def paired_run(setup: PairedSetup, calls: int) -> PairedRun:
    """Dial ``calls`` calls to each server at once, measure both servers' CPU over one window, hang up."""
    relay, gateway = setup.children["relay"][0], setup.children["gateway"][0]
    callers, sinks, ports = setup.children["callers"], setup.children["sinks"], setup.ports
    if len(callers) < 2:
        raise CapacityRunError("--paired needs at least 2 caller processes (one set per server)")
    half = len(callers) // 2
    groups = [("relay", callers[:half], 0), ("gateway", callers[half:], calls)]
    dial_start_ns = time.monotonic_ns() + _NS // 2
    ramp_ns = int(2 * calls / setup.dial_rate_per_s * _NS)
    window_start_ns = dial_start_ns + ramp_ns + int(setup.settle_s * _NS)
    window_end_ns = window_start_ns + int(setup.window_s * _NS)
    for sink in sinks:
        await sink.ask({"cmd": "window", "start_ns": window_start_ns, "end_ns": window_end_ns})
    for path, procs, offset in groups:
        for p, caller in enumerate(procs):
            indices = [offset + i for i in range(p, calls, len(procs))]
            # The two servers' dials interleave over the ramp.
            dial_at = [dial_start_ns + (2 * (i - offset) + (offset > 0)) * ramp_ns // (2 * calls) for i in indices]
            caller.send({
                "cmd": "run", "target": f"http://127.0.0.1:{ports[path]}", "auth_token": setup.auth_token,
                "indices": indices, "dial_at_ns": dial_at, "window_start_ns": window_start_ns,
                "window_end_ns": window_end_ns, "hangup_ns": window_end_ns + _NS // 5,
            })  # fmt: skip
    pids = [relay.proc.pid, gateway.proc.pid, *(c.proc.pid for c in (*callers, *sinks)), os.getpid()]
    await asyncio.sleep(max(0.0, (window_start_ns - time.monotonic_ns()) / _NS))
    cpu0, busy0 = [cpu_s(pid) for pid in pids], machine_busy_s()
    await asyncio.sleep(max(0.0, (window_end_ns - time.monotonic_ns()) / _NS))
    used = [cpu_s(pid) - before for pid, before in zip(pids, cpu0, strict=True)]
    others_s = max(0.0, machine_busy_s() - busy0 - sum(used))
    call_s: dict[str, float] = {}
    for path, procs, _offset in groups:
        parts: list[dict[str, Any]] = [await caller.read(timeout_s=60 + calls / 10) for caller in procs]
        call_s[path] = sum(part["call_s_window"] for part in parts)
    for sink in sinks:
        await sink.ask({"cmd": "report"})
    for path in ("relay", "gateway"):
        await setup.wait_idle(ports[path])
    if not call_s["relay"] or not call_s["gateway"]:
        raise CapacityRunError(f"a paired run at {calls} calls carried no call through the window")
    relay_ms = used[0] * 1000 / call_s["relay"]
    gateway_ms = used[1] * 1000 / call_s["gateway"]
    return PairedRun(
        calls=calls,
        relay_ms_per_call_s=relay_ms,
        gateway_ms_per_call_s=gateway_ms,
        cpu_ratio=gateway_ms / relay_ms if relay_ms else float("inf"),
        core_share=(used[0] + used[1]) / setup.window_s,
        others_core_share=others_s / setup.window_s,
    )


async def paired_runs(setup: PairedSetup, runs: int, calls: int, say: Callable[[str], None]) -> list[PairedRun]:
    """``runs`` paired windows in a row, ``calls`` calls on each server in each."""
    out = []
    for k in range(runs):
        say(f"paired run {k + 1}: {calls} calls on each server …")
        run = await paired_run(setup, calls)
        relay_ms, gateway_ms = run.relay_ms_per_call_s, run.gateway_ms_per_call_s
        say(f"  relay {relay_ms:.3f}, gateway {gateway_ms:.3f} ms/call·s: × {run.cpu_ratio:.2f}")
        out.append(run)
    return out


def format_paired(runs: list[PairedRun]) -> list[str]:
    """The paired runs as lines, with the median ratio."""
    if not runs:
        return []
    lines = [
        f"paired: {runs[0].calls} calls on each server at once, both on one core (CPU only)",
        "run  relay ms/call·s  gateway ms/call·s  × the floor  core  other",
    ]
    for k, run in enumerate(runs, 1):
        lines.append(
            f"{k:3d}  {run.relay_ms_per_call_s:15.3f}  {run.gateway_ms_per_call_s:17.3f}  {run.cpu_ratio:11.2f}"
            f"  {run.core_share:4.0%}  {run.others_core_share:5.0%}"
        )
    ratios = [run.cpu_ratio for run in runs]
    lines.append(f"median × {statistics.median(ratios):.2f} (range {min(ratios):.2f}–{max(ratios):.2f})")
    return lines
