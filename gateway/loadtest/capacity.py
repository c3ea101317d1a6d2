"""``gateway bench capacity``: the most concurrent calls this machine bridges in time, next to the floor.

Not a timed test: a sweep. For each concurrency level, first the floor relay
(:mod:`gateway.loadtest.relay`), then the gateway carry the same calls for a fixed window, each in its own
OS process, so its CPU time (``/proc/<pid>/stat`` utime + stime over the window) is its own. The EVI side
is a sink process (or several sharing one port) and the callers run in their own processes too.

Per call, every 20 ms, a caller sends one Twilio ``media`` frame whose μ-law payload is tagged with the
call, the frame number and the send time (CLOCK_MONOTONIC, shared by all processes on Linux); the sink
reads the tag back from the ``audio_input`` it receives. So the inbound latency is caller send → EVI
receive, through the gateway or the relay, with everything between; frames lost are frames sent in the
window that never arrived. The sink answers every call with a 24 kHz reply every few seconds (``--shape``:
``light`` 2 s every 6 s in 200 ms chunks, ``heavy`` 1 s every 3 s in 3 chunks), so the outbound path is
loaded too, and notes when it sent each reply's first ``audio_output``; the caller notes when it received
that reply's first audio, which gives the outbound latency. Callers play what they receive at real time,
echo marks, count the messages they get and count underruns (a playout gap shorter than 400 ms between two
pieces of audio). The server's RSS is read before dialling and at the window's end.

A level passes when every call connected and stayed up, no frame was lost, every reply was heard and the
p99 through the gateway is under ``--max-p99-ms`` (10 ms) each way; a failing level is run once more
(``--retries``) before the sweep stops there, or at the time budget; ``--sweep`` then bisects between the
last passing level and the failing one. With two CPUs or more, the server under test is pinned to the last CPU and
everything else to the others, so "calls per core" means one core; the CPU time used by anything else on
the machine during each window is reported as noise.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.errors import CapacityRunError, ConfigError
from gateway.loadtest.capacity_callers import run_callers
from gateway.loadtest.capacity_paired import PairedSetup, paired_runs
from gateway.loadtest.capacity_procs import Child, cpu_s, machine_busy_s, pin_processes, rss_bytes
from gateway.loadtest.capacity_report import (
    CapacityReport,
    LevelResult,
    PathResult,
    format_table,
    level_lines,
    percentile_ms,
    reply_latencies_ns,
)
from gateway.loadtest.relay import LATENCY_BIN_NS, answer, command_lines, run_relay, run_sink
from gateway.simulator.loopback import free_port

__all__ = [
    "SHAPES",
    "CapacityConfig",
    "CapacityReport",
    "LevelResult",
    "PathResult",
    "format_table",
    "main",
    "run_capacity",
]

DEFAULT_LEVELS = (25, 50, 100, 150, 200, 250, 300, 400, 500)
QUICK_LEVELS = (50, 150, 200, 250)
_TOKEN_ENV = "CAPACITY_AUTH_TOKEN"
_NS = 1_000_000_000
SHAPES = {"light": (6.0, 2.0, 200), "heavy": (3.0, 1.0, 334)}
"""Reply shapes: (one reply every s, reply s, audio_output chunk ms). ``heavy``: 1 s in 3 chunks every 3 s."""
SWEEP_RESOLUTION_CALLS = 10


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    """What to sweep and how long each run lasts."""

    levels: tuple[int, ...] = DEFAULT_LEVELS
    window_s: float = 20.0
    settle_s: float = 3.0
    dial_rate_per_s: float = 100.0
    max_p99_ms: float = 10.0
    budget_s: float = 600.0
    caller_procs: int = 2
    sink_procs: int = 1
    reply_every_s: float = 6.0
    reply_s: float = 2.0
    reply_chunk_ms: int = 200
    retries: int = 1
    pin: bool = True
    sweep: bool = False
    profile_out: Path | None = None
    event_loop: str = "asyncio"
    """The event loop of both servers under test (the gateway and the floor relay): asyncio or uvloop."""
    paired_calls: int | None = None
    """``--paired``: instead of the sweep, runs with this many calls on each server at once (CPU only)."""
    paired_runs: int = 3
    load_event_loop: str = "auto"
    """The event loop of the callers and sinks: uvloop when installed (``auto``), so that the load generator,
    which shares the other CPUs, costs less and adds less of its own latency; it is not what is measured."""

    def __post_init__(self) -> None:
        if not self.levels or any(n < 1 or n > 0xFFFF for n in self.levels):
            raise ConfigError(f"levels must be 1..65535 calls, got {self.levels}")
        for name in ("window_s", "dial_rate_per_s", "max_p99_ms", "budget_s", "reply_every_s", "reply_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.settle_s, self.retries) < 0 or min(self.caller_procs, self.sink_procs) < 1:
            raise ConfigError("settle_s and retries must not be negative; caller/sink processes must be >= 1")
        if self.paired_calls is not None and (self.paired_calls < 1 or self.paired_runs < 1):
            raise ConfigError("--paired calls and --paired-runs must be at least 1")
        if self.reply_chunk_ms < 20:
            raise ConfigError(f"reply chunks must be at least 20 ms, got {self.reply_chunk_ms}")
        if self.reply_s >= self.reply_every_s:
            raise ConfigError(f"a {self.reply_s} s reply does not fit in every {self.reply_every_s} s")

    def run_s(self, calls: int) -> float:
        """Estimated wall time of one path at ``calls`` (dial, settle, window, hang-up and idle)."""
        return 0.5 + calls / self.dial_rate_per_s + self.settle_s + self.window_s + 2.5


# ----------------------------------------------------------------------------------------- the sweep


class _Sweep:
    def __init__(
        self, config: CapacityConfig, children: dict[str, list[Child]], ports: dict[str, int], auth_token: str
    ) -> None:
        self.config, self.children, self.ports, self.auth_token = config, children, ports, auth_token

    async def level(self, calls: int, attempts: int = 1) -> LevelResult:
        relay = await self.path("relay", calls)
        gateway = await self.path("gateway", calls)
        ratio = gateway.cpu_ms_per_call_s / relay.cpu_ms_per_call_s if relay.cpu_ms_per_call_s > 0 else None
        limit_ms = self.config.max_p99_ms
        problems = []
        if gateway.connected < calls or gateway.closed_early:
            problems.append(f"{calls - gateway.connected} calls not connected, {gateway.closed_early} dropped")
        if gateway.frames_lost:
            problems.append(f"{gateway.frames_lost} frames lost")
        if gateway.in_p99_ms is None or gateway.in_p99_ms >= limit_ms:
            problems.append(f"in p99 {_f(gateway.in_p99_ms)} ms >= {limit_ms:g} ms")
        if gateway.out_p99_ms is not None and gateway.out_p99_ms >= limit_ms:
            problems.append(f"out p99 {_f(gateway.out_p99_ms)} ms >= {limit_ms:g} ms")
        if gateway.replies_unheard:
            problems.append(f"{gateway.replies_unheard} replies not heard")
        return LevelResult(
            calls=calls,
            relay=relay,
            gateway=gateway,
            added_in_p50_ms=_minus(gateway.in_p50_ms, relay.in_p50_ms),
            added_in_p99_ms=_minus(gateway.in_p99_ms, relay.in_p99_ms),
            added_out_p50_ms=_minus(gateway.out_p50_ms, relay.out_p50_ms),
            added_out_p99_ms=_minus(gateway.out_p99_ms, relay.out_p99_ms),
            cpu_ratio=ratio,
            ok=not problems,
            why="; ".join(problems),
            attempts=attempts,
            limit_ms=limit_ms,
        )

    async def path(self, path: str, calls: int) -> PathResult:
        cfg = self.config
        server = self.children[path][0]
        callers, sinks = self.children["callers"], self.children["sinks"]
        rss_idle = rss_bytes(server.proc.pid)
        now_ns = time.monotonic_ns()
        dial_start_ns = now_ns + _NS // 2
        ramp_ns = int(calls / cfg.dial_rate_per_s * _NS)
        window_start_ns = dial_start_ns + ramp_ns + int(cfg.settle_s * _NS)
        window_end_ns = window_start_ns + int(cfg.window_s * _NS)
        hangup_ns = window_end_ns + _NS // 5
        for sink in sinks:
            await sink.ask({"cmd": "window", "start_ns": window_start_ns, "end_ns": window_end_ns})
        for p, caller in enumerate(callers):
            indices = list(range(p, calls, len(callers)))
            caller.send({
                "cmd": "run", "target": f"http://127.0.0.1:{self.ports[path]}", "auth_token": self.auth_token,
                "indices": indices, "dial_at_ns": [dial_start_ns + i * ramp_ns // calls for i in indices],
                "window_start_ns": window_start_ns, "window_end_ns": window_end_ns, "hangup_ns": hangup_ns,
            })  # fmt: skip
        pids = [child.proc.pid for child in (server, *callers, *sinks)] + [os.getpid()]
        await asyncio.sleep(max(0.0, (window_start_ns - time.monotonic_ns()) / _NS))
        cpu0, busy0 = [cpu_s(pid) for pid in pids], machine_busy_s()
        await asyncio.sleep(max(0.0, (window_end_ns - time.monotonic_ns()) / _NS))
        cpu_used = [cpu_s(pid) - before for pid, before in zip(pids, cpu0, strict=True)]
        others_s = max(0.0, machine_busy_s() - busy0 - sum(cpu_used))
        rss_window = rss_bytes(server.proc.pid)
        parts = [await caller.read(timeout_s=60 + calls / 10) for caller in callers]
        sent = sum(p["frames_sent"] for p in parts)
        reports = await self._sink_reports(sent)
        await self.wait_idle(self.ports[path])
        histogram: dict[int, int] = {}
        for report in reports:
            for key, count in report["histogram"].items():
                histogram[int(key)] = histogram.get(int(key), 0) + count
        out_histogram, replies_started, replies_unheard = _reply_histogram(reports, parts, window_end_ns)
        call_s = sum(p["call_s_window"] for p in parts)
        cpu_ms = cpu_used[0] * 1000 / call_s if call_s else 0.0
        heard_s = sum(p["heard_s"] for p in parts)
        messages = sum(p["messages"] for p in parts)
        return PathResult(
            calls=calls,
            connected=sum(p["connected"] for p in parts),
            closed_early=sum(p["closed_early"] for p in parts),
            frames_sent=sent,
            frames_received=sum(r["received"] for r in reports),
            frames_lost=max(0, sent - sum(r["received"] for r in reports)),
            in_p50_ms=percentile_ms(histogram, 0.50),
            in_p99_ms=percentile_ms(histogram, 0.99),
            in_max_ms=(max(histogram) + 1) * LATENCY_BIN_NS / 1e6 if histogram else None,
            out_p50_ms=percentile_ms(out_histogram, 0.50),
            out_p99_ms=percentile_ms(out_histogram, 0.99),
            out_max_ms=(max(out_histogram) + 1) * LATENCY_BIN_NS / 1e6 if out_histogram else None,
            replies_started=replies_started,
            replies_unheard=replies_unheard,
            cpu_ms_per_call_s=cpu_ms,
            calls_per_core=1000 / cpu_ms if cpu_ms else None,
            messages_to_twilio=messages,
            messages_per_speech_s=messages / heard_s if heard_s else None,
            rss_mib=rss_window / 2**20,
            rss_kib_per_call=max(0, rss_window - rss_idle) / 1024 / calls,
            server_core_share=cpu_used[0] / cfg.window_s,
            callers_core_share=sum(cpu_used[1 : 1 + len(callers)]) / cfg.window_s,
            sinks_core_share=sum(cpu_used[1 + len(callers) : -1]) / cfg.window_s,
            others_core_share=others_s / cfg.window_s,
            underruns=sum(p["underruns"] for p in parts),
            underrun_ms=sum(p["underrun_ms"] for p in parts),
            heard_s=heard_s,
            sequence_gaps=sum(r["gaps"] for r in reports),
            caller_max_lag_ms=max(p["max_lag_ms"] for p in parts),
            dial_errors=sum(p["dial_errors"] for p in parts),
            dial_error=next((p["dial_error"] for p in parts if p["dial_error"]), None),
        )

    async def _sink_reports(self, sent: int) -> list[dict[str, Any]]:
        """The sinks' counts, asked again for up to 3 s while frames are still arriving."""
        deadline_s = time.monotonic() + 3.0
        while True:
            reports = [await sink.ask({"cmd": "report"}) for sink in self.children["sinks"]]
            if sum(r["received"] for r in reports) >= sent or time.monotonic() >= deadline_s:
                return reports
            await asyncio.sleep(0.2)

    async def wait_idle(self, port: int) -> None:
        """Until the server reports no active call (at most 15 s), so runs do not overlap."""
        async with aiohttp.ClientSession() as http:
            deadline_s = time.monotonic() + 15.0
            while time.monotonic() < deadline_s:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if (await resp.json())["active_calls"] == 0:
                            return
                await asyncio.sleep(0.2)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _reply_histogram(
    sinks: list[dict[str, Any]], callers: list[dict[str, Any]], window_end_ns: int
) -> tuple[dict[int, int], int, int]:
    """EVI→caller latency of every reply begun in the window, binned like the inbound one; (histogram,
    replies begun, replies begun at least 1 s before the window's end that the caller never heard)."""
    started: dict[str, list[int]] = {}
    for report in sinks:
        for index, times in report["reply_starts_ns"].items():
            started.setdefault(index, []).extend(times)
    heard: dict[str, list[int]] = {}
    for part in callers:
        for index, times in part["reply_heard_ns"].items():
            heard.setdefault(index, []).extend(times)
    histogram: dict[int, int] = {}
    total = unheard = 0
    for index, starts in started.items():
        latencies, missed = reply_latencies_ns(starts, heard.get(index, []))
        total += len(starts)
        unheard += sum(1 for at in missed if at < window_end_ns - _NS)  # later ones may be heard after the window
        for latency in latencies:
            histogram[latency // LATENCY_BIN_NS] = histogram.get(latency // LATENCY_BIN_NS, 0) + 1
    return histogram, total, unheard


async def run_capacity(config: CapacityConfig, progress: Callable[[str], None] | None = None) -> CapacityReport:
    """Start the processes, sweep the levels, stop everything; ``progress(text)`` hears each step."""
    say = progress or (lambda text: None)
    report = CapacityReport(
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    )
    auth_token = binascii.hexlify(os.urandom(16)).decode()
    env = {_TOKEN_ENV: auth_token}
    life = ["--max-life-s", str(config.budget_s + 300)]
    started: list[Child] = []
    affinity = os.sched_getaffinity(0)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-capacity-") as tmp:
        log_dir = Path(tmp)
        try:
            sink_port = free_port()
            from gateway.adapters.serving import loop_factory

            _factory, load_loop_name = loop_factory(config.load_event_loop)
            report.machine["load_event_loop"] = load_loop_name
            load_loop = ["--event-loop", load_loop_name]
            sink_args = [
                "sink", "--port", str(sink_port), "--reply-every-s", str(config.reply_every_s),
                "--reply-s", str(config.reply_s), "--chunk-ms", str(config.reply_chunk_ms), *life, *load_loop,
            ]  # fmt: skip
            sinks = [await Child.start(f"sink{i}", sink_args, log_dir, env) for i in range(config.sink_procs)]
            started += sinks
            sink_url = f"ws://127.0.0.1:{sink_port}/v0/evi/chat"
            profile = ["--profile-out", str(config.profile_out)] if config.profile_out else []
            server = ["--sink-url", sink_url, "--event-loop", config.event_loop, *life]
            gateway = await Child.start("gateway", ["gateway", *server, *profile], log_dir, env)
            relay = await Child.start("relay", ["relay", *server], log_dir, env)
            callers = [
                await Child.start(f"callers{i}", ["callers", *life, *load_loop], log_dir, env)
                for i in range(config.caller_procs)
            ]
            started += [gateway, relay, *callers]
            ports = {}
            for child in [*sinks, gateway, relay]:
                ports[child.name] = int((await child.read(timeout_s=30))["port"])
            if config.pin:
                load = [child.proc.pid for child in (*sinks, *callers)]
                report.machine["pinning"] = pin_processes([gateway.proc.pid, relay.proc.pid], load)
            roles = {"gateway": [gateway], "relay": [relay], "callers": callers, "sinks": sinks}
            sweep = _Sweep(config, roles, ports, auth_token)
            if config.paired_calls is not None:
                setup = PairedSetup(
                    children=roles, ports=ports, auth_token=auth_token, dial_rate_per_s=config.dial_rate_per_s,
                    settle_s=config.settle_s, window_s=config.window_s, wait_idle=sweep.wait_idle,
                )  # fmt: skip
                report.paired = await paired_runs(setup, config.paired_runs, config.paired_calls, say)
                report.stopped = f"{len(report.paired)} paired runs"
            else:
                report.stopped = await _sweep_levels(config, sweep, report, t0, say)
        finally:
            await asyncio.gather(*(child.stop() for child in started))
            os.sched_setaffinity(0, affinity)
    return report


async def _sweep_levels(
    config: CapacityConfig, sweep: _Sweep, report: CapacityReport, t0: float, say: Callable[[str], None]
) -> str:
    """Run the levels in order until one fails; a failing level is run again up to ``retries`` times (noisy
    machines). With ``config.sweep``, then bisect between the last passing level and the failing one."""
    passed = 0
    failed: int | None = None
    stopped = "all levels passed"
    for calls in config.levels:
        level = await _run_level(config, sweep, calls, t0, say)
        if level is None:
            return f"time budget: {calls} calls would end after {config.budget_s:g} s"
        report.levels.append(level)
        if not level.ok:
            failed, stopped = calls, f"{calls} calls failed: {level.why}"
            break
        passed = calls
    while config.sweep and failed is not None and failed - passed > SWEEP_RESOLUTION_CALLS:
        calls = (passed + failed) // 2
        level = await _run_level(config, sweep, calls, t0, say)
        if level is None:
            return f"{stopped}; sweep stopped by the time budget between {passed} and {failed} calls"
        report.levels.append(level)
        passed, failed = (calls, failed) if level.ok else (passed, calls)
    if config.sweep and failed is not None:
        stopped += f"; sweep: passes at {passed}, fails at {failed} calls"
    return stopped


async def _run_level(
    config: CapacityConfig, sweep: _Sweep, calls: int, t0: float, say: Callable[[str], None]
) -> LevelResult | None:
    """One level, retried while it fails; None when the time budget does not allow it."""
    level: LevelResult | None = None
    for attempt in range(1, config.retries + 2):
        if time.monotonic() - t0 + 2 * config.run_s(calls) > config.budget_s:
            break
        say(f"{calls} calls{f' (attempt {attempt})' if attempt > 1 else ''} …")
        level = await sweep.level(calls, attempt)
        say(level_lines(level))
        if level.ok:
            break
    return level


# ------------------------------------------------------------------------------------ command lines


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be whole numbers separated by commas, got {text!r}") from None
    if not levels or sorted(levels) != list(levels) or levels[0] < 1:
        raise argparse.ArgumentTypeError(f"levels must be increasing and at least 1, got {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway bench capacity`` argument parser."""
    p = argparse.ArgumentParser(
        prog="gateway bench capacity",
        description="Sweep concurrent calls through the gateway and a plain relay (the floor): latency, "
        "frames lost, CPU per call-second. Linux only (reads /proc).",
    )
    p.add_argument("--quick", action="store_true", help=f"levels {QUICK_LEVELS}, 6 s windows, 150 s budget")
    p.add_argument("--levels", type=_levels, help=f"calls per level, increasing (default {DEFAULT_LEVELS})")
    p.add_argument("--window-s", type=float, help="measured seconds per run (default 20, quick 6)")
    p.add_argument("--settle-s", type=float, help="seconds between the last dial and the window (default 3)")
    p.add_argument("--budget-s", type=float, help="stop before a level that would end later (default 600)")
    p.add_argument("--max-p99-ms", type=float, default=10.0, help="p99 limit through the gateway (default 10)")
    p.add_argument("--caller-procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--sink-procs", type=int, default=1, help="EVI-side sink processes (default 1)")
    p.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="light",
        help="replies: light = 2 s every 6 s in 200 ms chunks (default); heavy = 1 s every 3 s in 3 chunks",
    )
    p.add_argument("--reply-every-s", type=float, help="one reply per call this often (overrides --shape)")
    p.add_argument("--reply-s", type=float, help="length of each reply (overrides --shape)")
    p.add_argument("--chunk-ms", type=int, help="audio_output chunk length (overrides --shape)")
    p.add_argument(
        "--sweep",
        action="store_true",
        help=f"after the first failing level, bisect to the largest passing one (within {SWEEP_RESOLUTION_CALLS})",
    )
    p.add_argument("--retries", type=int, default=1, help="run a failing level again this often (default 1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server under test to its own CPU")
    p.add_argument("--json-out", type=Path, help="write the full results as JSON here")
    p.add_argument("--profile-gateway", type=Path, help="run the gateway under cProfile, write pstats here")
    p.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of both servers under test, the gateway and the relay (default asyncio)",
    )
    p.add_argument(
        "--paired",
        type=int,
        metavar="CALLS",
        help="instead of the sweep: CALLS calls on each server at once, sharing its core, for the CPU ratio on a "
        "noisy machine (latency not measured)",
    )
    p.add_argument("--paired-runs", type=int, default=3, help="windows of --paired (default 3)")
    p.add_argument(
        "--load-event-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the callers and sinks (default auto: uvloop when installed)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> CapacityConfig:
    """Defaults, ``--quick`` and ``--shape`` presets, then explicit options."""
    quick = args.quick
    every_s, reply_s, chunk_ms = SHAPES[args.shape]
    return CapacityConfig(
        levels=args.levels or (QUICK_LEVELS if quick else DEFAULT_LEVELS),
        window_s=args.window_s or (6.0 if quick else 20.0),
        settle_s=args.settle_s if args.settle_s is not None else (2.0 if quick else 3.0),
        budget_s=args.budget_s or (150.0 if quick else 600.0),
        max_p99_ms=args.max_p99_ms,
        caller_procs=args.caller_procs,
        sink_procs=args.sink_procs,
        reply_every_s=args.reply_every_s or every_s,
        reply_s=args.reply_s or reply_s,
        reply_chunk_ms=args.chunk_ms or chunk_ms,
        retries=args.retries,
        pin=not args.no_pin,
        sweep=args.sweep,
        profile_out=args.profile_gateway,
        event_loop=args.event_loop,
        load_event_loop=args.load_event_loop,
        paired_calls=args.paired,
        paired_runs=args.paired_runs,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``gateway bench capacity``; 0 when the sweep ran (whatever it found), 1 if it could not, 2 bad input."""
    try:
        args = build_parser().parse_args(argv)
        config = config_from_args(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except ConfigError as exc:
        print(f"gateway bench capacity: {exc}", file=sys.stderr)
        return 2
    if args.json_out is not None and not args.json_out.parent.is_dir():
        print(f"gateway bench capacity: folder {args.json_out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_capacity(config, progress=lambda text: print(text, file=sys.stderr, flush=True)))
    except CapacityRunError as exc:
        print(f"gateway bench capacity: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(format_table(report))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    if config.profile_out is not None:
        _print_profile(config.profile_out)
    return 0


def _print_profile(path: Path) -> None:
    import pstats

    if path.exists():
        print(f"\ngateway profile ({path}; CPU numbers above include the profiler's overhead):")
        pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(25)


# ---------------------------------------------------------------------------------- the child roles


async def _run_gateway_child(sink_url: str) -> None:
    from gateway.simulator.harness import running_gateway

    async with running_gateway(
        sink_url, auth_token=os.environ[_TOKEN_ENV], hume_api_key="capacity-key", max_concurrent_calls=100_000
    ) as gw:
        answer({"port": gw.port})
        async for _command in command_lines():
            pass


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="capacity child")
    p.add_argument("role", choices=("gateway", "relay", "sink", "callers"))
    p.add_argument("--sink-url")
    p.add_argument("--port", type=int)
    p.add_argument("--reply-every-s", type=float)
    p.add_argument("--reply-s", type=float)
    p.add_argument("--chunk-ms", type=int)
    p.add_argument("--profile-out")
    p.add_argument("--max-life-s", type=float, default=900.0)
    p.add_argument("--event-loop", default="asyncio")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    role = {
        "gateway": lambda: _run_gateway_child(args.sink_url),
        "relay": lambda: run_relay(sink_url=args.sink_url, auth_token=os.environ[_TOKEN_ENV]),
        "sink": lambda: run_sink(
            args.port, reply_every_s=args.reply_every_s, reply_s=args.reply_s, chunk_ms=args.chunk_ms, rate_hz=24000
        ),
        "callers": run_callers,
    }[args.role]

    async def bounded() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.max_life_s):
                await role()

    profiler = None
    if args.profile_out:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    # Every process has the event loop and the frozen startup heap `gateway serve` would.
    from gateway.adapters.serving import freeze_startup_heap, run

    freeze_startup_heap()
    try:
        run(bounded(), args.event_loop)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile_out)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--role"]:
        sys.exit(_child_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
