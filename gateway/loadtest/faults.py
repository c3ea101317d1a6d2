"""``gateway bench faults``: a fault and fuzz matrix against the real gateway, served in its own process.

Three processes, all on 127.0.0.1: the gateway (``python -m gateway serve``, signatures enforced, JSON logs at
WARNING to ``gateway.log``), the EVI side (:mod:`gateway.loadtest.faults_evi`: the simulator, each chat behaving
by the caller's line) and this one, which dials every call (:mod:`gateway.loadtest.faults_peers`) and runs the
scenarios of :mod:`gateway.loadtest.faults_phases` in order: mutated Twilio frames, mutated EVI messages, EVI
faults, Twilio faults, half-open connections and slow webhooks, and a soak of normal calls. A load generator
never shares a process or event loop with what it measures.

While each of the first five runs, canary calls talk to the simulator's agent and must hear it answer every
turn. After each, the gateway must come back to idle. The verdicts (crashed, disturbed, leaks) are defined in
:mod:`gateway.loadtest.faults_report`; the exit status is 1 when any scenario failed, 2 on bad options.

The gateway runs with shorter bounds than its defaults (:data:`GATEWAY_BOUNDS`) so every liveness rule of
docs/operations.md §4 acts within a phase; each phase is bounded by ``Plan.phase_bound_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import CapacityRunError
from gateway.loadtest.capacity_procs import Child, open_log, pin_processes, rss_bytes
from gateway.loadtest.faults_evi import EVI_API_KEY
from gateway.loadtest.faults_peers import Canary, CanaryResult, Target
from gateway.loadtest.faults_phases import LINE_NUMBERS, SCENARIOS, Outcome, PhaseContext, Plan, soak_call
from gateway.loadtest.faults_report import (
    FD_SLACK,
    IDLE_WAIT_S,
    TASK_SLACK,
    FaultsReport,
    Sample,
    ScenarioResult,
    crash_lines,
    format_table,
)
from gateway.simulator.loopback import free_port

__all__ = ["GATEWAY_BOUNDS", "FaultsConfig", "main", "run_faults"]

GATEWAY_BOUNDS = {
    "GATEWAY_MAX_CONCURRENT_CALLS": "400",
    # More than the mutating sockets, so their pending starts never fill the bound a canary's upgrade needs
    # (16 by default; the half-open row tests that bound with sockets that never send start).
    "GATEWAY_MAX_PENDING_STREAMS": "64",
    "GATEWAY_START_TIMEOUT_S": "2",
    "GATEWAY_UPSTREAM_STALL_TIMEOUT_S": "3",
    "GATEWAY_SEND_TIMEOUT_S": "2",
    "GATEWAY_MARK_ECHO_TIMEOUT_S": "3",
    "GATEWAY_CALLER_SILENCE_TIMEOUT_S": "3",
    "GATEWAY_EVI_PING_INTERVAL_S": "2",
    "GATEWAY_EVI_PING_TIMEOUT_S": "2",
    "GATEWAY_TWILIO_HEARTBEAT_S": "4",
    "GATEWAY_STREAM_TOKEN_TTL_S": "15",
    "GATEWAY_DRAIN_TIMEOUT_S": "5",
    "GATEWAY_HTTP_IDLE_TIMEOUT_S": "2",
    "GATEWAY_WEBHOOK_BODY_TIMEOUT_S": "2",  # the slow webhooks dribble their body in over 3-10 s: 408
}
"""Bounds shorter than the defaults, so each liveness rule acts within a phase (docs/operations.md §4)."""
_STARTUP_S = 30.0
_CANARY_BOUND_S = 45.0


@dataclass(frozen=True, slots=True)
class FaultsConfig:
    """One run's options."""

    quick: bool = False
    seed: int = 1
    out_dir: Path | None = None
    only: tuple[str, ...] = ()
    pin: bool = False

    @property
    def plan(self) -> Plan:
        return Plan.quick() if self.quick else Plan.full()


def numbers_toml() -> str:
    """The numbers file: each line's config_id names the EVI side's behaviour for its calls."""
    lines = ['[default]\nconfig_id = "talker"\n']
    for line, number in LINE_NUMBERS.items():
        lines.append(f'[numbers."{number}"]\nconfig_id = "{line}"\n')
    return "\n".join(lines)


def _clean_environ() -> dict[str, str]:
    """This process's environment without any gateway, Hume or Twilio setting (the child gets only ours)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "HUME_", "TWILIO_"))}


class GatewayProcess:
    """``python -m gateway serve`` in its own process group; stderr (its log) goes to a file."""

    def __init__(self, child: Child, target: Target) -> None:
        self.child, self.target = child, target

    @classmethod
    async def start(cls, out_dir: Path, name: str, evi_url: str, numbers: Path) -> GatewayProcess:
        port, token = free_port(), secrets.token_hex(16)
        env = {
            **_clean_environ(), **GATEWAY_BOUNDS, "TWILIO_AUTH_TOKEN": token, "HUME_API_KEY": EVI_API_KEY,
            "GATEWAY_EVI_URL": evi_url, "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}", "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port), "GATEWAY_NUMBERS_FILE": str(numbers), "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_STREAM_TOKEN_SECRET": secrets.token_hex(32),
        }  # fmt: skip
        log_path = out_dir / f"{name}.log"
        with open_log(log_path) as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "--log-level", "WARNING", "serve",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True, env=env,
            )  # fmt: skip
        gateway = cls(Child(name, proc, log_path), Target(port, token))
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), _STARTUP_S)
        except TimeoutError:
            line = b""
        if b"listening" not in line:
            await gateway.stop()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise CapacityRunError(f"the gateway did not start ({line!r}); its log ends:\n{tail}")
        return gateway

    @property
    def pid(self) -> int:
        return self.child.proc.pid

    @property
    def alive(self) -> bool:
        return self.child.proc.returncode is None

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.child.log_path.stat().st_size
        return 0

    def log_since(self, offset: int) -> list[str]:
        with open(self.child.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").splitlines()

    async def stop(self) -> int | None:
        """SIGINT (the gateway closes every call and exits 0), then a kill past 15 s; the exit status."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.child.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.child.proc.wait(), 15)
        status = self.child.proc.returncode
        await self.child.stop()
        return status


class Observer:
    """Reads the gateway's process (RSS, open fds) and its /metrics and /healthz, each on a fresh connection."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway

    async def _get(self, path: str) -> str:
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
            http.get(self.gateway.target.base_url + path) as resp,
        ):
            return await resp.text()

    async def families(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(await self._get("/metrics")):
            for s in family.samples:
                samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return samples

    async def sample(self) -> Sample:
        metrics = await self.families()
        pid = self.gateway.pid
        tasks = metrics.get("gateway_asyncio_tasks", {}).get(())
        return Sample(
            rss_bytes=rss_bytes(pid),
            fds=len(os.listdir(f"/proc/{pid}/fd")),
            tasks=None if tasks is None else int(tasks),
            active_calls=int(metrics["gateway_active_calls"][()]),
            pending_streams=int(metrics["gateway_pending_streams"][()]),
        )

    async def end_reasons(self) -> Counter[str]:
        calls = (await self.families()).get("gateway_calls_total", {})
        return Counter({dict(labels)["end_reason"]: int(v) for labels, v in calls.items()})

    async def wait_idle(self, baseline: Sample | None) -> tuple[Sample, list[str]]:
        """Poll until the gateway is idle (see faults_report); the last sample and what was still not idle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IDLE_WAIT_S
        strict_until = loop.time() + IDLE_WAIT_S / 4  # at first, wait for the baseline itself; then allow the slack
        while True:
            task_slack, fd_slack = (0, 0) if loop.time() < strict_until else (TASK_SLACK, FD_SLACK)
            sample = await self.sample()
            health = await self._get("/healthz")
            why = []
            if sample.active_calls or sample.pending_streams:
                why.append(f"gateway_active_calls {sample.active_calls}, pending streams {sample.pending_streams}")
            if '"active_calls": 0' not in health:
                why.append(f"/healthz {health.strip()}")
            base_tasks = baseline.tasks if baseline is not None else None
            if base_tasks is not None and sample.tasks is not None and sample.tasks > base_tasks + task_slack:
                why.append(f"asyncio tasks {sample.tasks} (idle baseline {base_tasks})")
            if baseline is not None and sample.fds > baseline.fds + fd_slack:
                why.append(f"open fds {sample.fds} (idle baseline {baseline.fds})")
            if not why or loop.time() >= deadline:
                return sample, [f"{w} after {IDLE_WAIT_S:g} s" for w in why]
            await asyncio.sleep(0.25)


class _Run:
    """One run: the processes, the baseline, and each scenario with its canaries and checks."""

    def __init__(
        self, config: FaultsConfig, out_dir: Path, evi: Child, evi_url: str, say: Callable[[str], None]
    ) -> None:
        self.config, self.out_dir, self.evi, self.evi_url, self.say = config, out_dir, evi, evi_url, say
        self.plan = config.plan
        self.numbers = out_dir / "numbers.toml"
        self.starts = 0
        self.gateway: GatewayProcess | None = None
        self.baseline: Sample | None = None

    async def start_gateway(self, http: aiohttp.ClientSession) -> GatewayProcess:
        self.starts += 1
        name = "gateway" if self.starts == 1 else f"gateway-{self.starts}"
        gateway = await GatewayProcess.start(self.out_dir, name, self.evi_url, self.numbers)
        self.gateway = gateway
        if self.config.pin:
            pin_processes([gateway.pid], [self.evi.proc.pid])
        observer = Observer(gateway)
        await soak_call(self.context(http, observer))  # warm up what is built on first use, before the baseline
        sample, _ = await observer.wait_idle(None)
        await asyncio.sleep(0.5)
        self.baseline = await observer.sample()
        return gateway

    def context(self, http: aiohttp.ClientSession, observer: Observer) -> PhaseContext:
        assert self.gateway is not None

        async def wait_idle() -> tuple[Sample, list[str]]:
            return await observer.wait_idle(self.baseline)

        return PhaseContext(self.gateway.target, http, self.plan, self.config.seed,
                            lambda: self.evi.ask({"cmd": "stats"}), observer.sample, wait_idle)  # fmt: skip

    async def scenario(
        self, http: aiohttp.ClientSession, name: str, title: str, body: Callable[[PhaseContext], Awaitable[Outcome]]
    ) -> ScenarioResult:
        gateway = self.gateway
        assert gateway is not None
        observer = Observer(gateway)
        result = ScenarioResult(name, title)
        t0 = time.monotonic()
        offset = gateway.log_size()
        result.before = await observer.sample()
        ends_before = await observer.end_reasons()
        evi_before = await self.evi.ask({"cmd": "stats"})
        stop = asyncio.Event()
        canaries = [] if name == "soak" else [
            asyncio.create_task(asyncio.wait_for(Canary(gateway.target, http, LINE_NUMBERS["canary"]).run(stop),
                                                 self.plan.phase_bound_s + _CANARY_BOUND_S))
            for _ in range(self.plan.canaries)
        ]  # fmt: skip
        outcome: Outcome | None = None
        try:
            async with asyncio.timeout(self.plan.phase_bound_s):
                outcome = await body(self.context(http, observer))
        except TimeoutError:
            result.error = f"did not finish within {self.plan.phase_bound_s:g} s"
        except Exception as exc:  # a harness failure: reported on the row, the run goes on
            result.error = f"{type(exc).__name__}: {exc}"
            errors = self.out_dir / "bench-errors.log"
            earlier = errors.read_text(encoding="utf-8") if errors.exists() else ""
            errors.write_text(f"{earlier}--- {name}\n{traceback.format_exc()}\n", encoding="utf-8")
        finally:
            stop.set()
            done = await asyncio.gather(*canaries, return_exceptions=True)
        self._canaries(result, done)
        if outcome is not None:
            self._outcome(result, outcome)
        if gateway.alive:
            result.after, why = await observer.wait_idle(self.baseline)
            result.leak_why = why + result.leak_why
            ends = await observer.end_reasons() - ends_before
            result.notes.append(f"end reasons: {', '.join(f'{k} ×{v}' for k, v in ends.most_common(8)) or 'none'}")
        evi_failures = Counter((await self.evi.ask({"cmd": "stats"}))["agent_failures"])
        evi_failures.subtract(evi_before["agent_failures"])
        if +evi_failures:  # the harness's own health: the EVI side's behaviours raised (see evi.log)
            result.notes.append(f"EVI side behaviours that raised: {dict(+evi_failures)}")
        result.leaks = bool(result.leak_why)
        result.crash_lines = crash_lines(gateway.log_since(offset))
        if not gateway.alive:
            result.crash_lines.insert(0, f"the gateway process exited with status {gateway.child.proc.returncode}")
        result.crashed = bool(result.crash_lines)
        result.duration_s = time.monotonic() - t0
        return result

    @staticmethod
    def _canaries(result: ScenarioResult, done: list[CanaryResult | BaseException]) -> None:
        result.canaries = len(done)
        turns = 0
        for item in done:
            if isinstance(item, BaseException):
                result.disturbed += 1
                result.disturbed_why.append(f"canary failed: {item!r}")
            elif not item.ok:
                result.disturbed += 1
                result.disturbed_why.append(f"canary: {item.why}")
            else:
                turns += item.turns
        if done:
            result.notes.insert(0, f"canaries: {len(done) - result.disturbed}/{len(done)} undisturbed, {turns} turns")
        result.details["canaries"] = [item.__dict__ if isinstance(item, CanaryResult) else repr(item) for item in done]

    @staticmethod
    def _outcome(result: ScenarioResult, outcome: Outcome) -> None:
        result.tried, result.tried_unit = outcome.tried, outcome.unit
        result.notes.extend(outcome.notes)
        result.details.update(outcome.details)
        result.leak_why.extend(outcome.leak_why)
        if outcome.calls:
            result.canaries += outcome.calls
            result.disturbed += outcome.disturbed
            result.disturbed_why.extend(outcome.disturbed_why)


async def run_faults(config: FaultsConfig, progress: Callable[[str], None] | None = None) -> FaultsReport:
    """Start the EVI side and the gateway, run the scenarios, stop everything; the report."""
    say = progress or (lambda text: None)
    t0 = time.monotonic()
    out_dir = config.out_dir or Path(tempfile.mkdtemp(prefix="gateway-faults-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = FaultsReport(
        config={"quick": config.quick, "seed": config.seed, "plan": asdict(config.plan), "bounds": GATEWAY_BOUNDS},
        machine={"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        out_dir=str(out_dir),
    )
    (out_dir / "numbers.toml").write_text(numbers_toml(), encoding="utf-8")
    evi_port = free_port()
    with open_log(out_dir / "evi.log") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.loadtest.faults_evi", "--port", str(evi_port), "--seed", str(config.seed),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
            limit=2**20, env=_clean_environ(),
        )  # fmt: skip
    evi = Child("evi", proc, out_dir / "evi.log")
    run = _Run(config, out_dir, evi, f"ws://127.0.0.1:{evi_port}/v0/evi/chat", say)
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    affinity = os.sched_getaffinity(0)
    try:
        await evi.read(timeout_s=_STARTUP_S)
        async with aiohttp.ClientSession(connector=connector) as http:
            await run.start_gateway(http)
            for name, title, body in SCENARIOS:
                if config.only and name not in config.only:
                    continue
                say(f"{name}: {title} …")
                result = await run.scenario(http, name, title, body)
                report.scenarios.append(result)
                say(f"{name}: tried {result.tried:,} {result.tried_unit} in {result.duration_s:.1f} s"
                    f"{' - FAILED: ' + '; '.join(result.reasons()) if result.failed else ''}")  # fmt: skip
                assert run.gateway is not None
                if not run.gateway.alive:
                    await run.gateway.stop()
                    await run.start_gateway(http)
    finally:
        if run.gateway is not None:
            offset = run.gateway.log_size()
            report.gateway_exit_status = await run.gateway.stop()
            if report.scenarios:
                last = report.scenarios[-1]
                late = crash_lines(run.gateway.log_since(offset))
                if report.gateway_exit_status not in (0, None) or late:
                    late.insert(0, f"the gateway exited with status {report.gateway_exit_status} on SIGINT")
                    last.crash_lines.extend(late)
                    last.crashed = True
        await evi.stop()
        if config.pin:
            os.sched_setaffinity(0, affinity)
    report.duration_s = time.monotonic() - t0
    (out_dir / "report.json").write_text(report.to_json(), encoding="utf-8")
    return report


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway bench faults`` argument parser."""
    p = argparse.ArgumentParser(
        prog="gateway bench faults",
        description="Fault and fuzz matrix against the gateway in its own process: mutated Twilio frames and EVI "
        "messages, EVI and Twilio faults, half-open connections, a soak; canary calls must keep hearing their agent.",
    )
    p.add_argument("--quick", action="store_true", help="a few thousand messages and ~100 soak calls (< 60 s)")
    p.add_argument("--seed", type=int, default=1, help="seed of every mutator (default 1)")
    p.add_argument("--out", type=Path, help="folder for the child logs and report.json (default: a new temp folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--only", help=f"comma-separated scenarios to run ({', '.join(n for n, _, _ in SCENARIOS)})")
    p.add_argument("--pin", action="store_true", help="pin the gateway to the last CPU, the load to the others")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``gateway bench faults``: 0 when every scenario passed, 1 when one failed, 2 on bad options."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    only = tuple(part.strip() for part in (args.only or "").split(",") if part.strip())
    unknown = set(only) - {name for name, _, _ in SCENARIOS}
    if unknown:
        print(f"gateway bench faults: unknown scenarios {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    config = FaultsConfig(quick=args.quick, seed=args.seed, out_dir=args.out, only=only, pin=args.pin)
    try:
        report = asyncio.run(run_faults(config, progress=lambda text: print(text, file=sys.stderr, flush=True)))
    except CapacityRunError as exc:
        print(f"gateway bench faults: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(report.to_json() if args.json else format_table(report))
    return report.exit_status()
