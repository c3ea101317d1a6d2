"""Child processes of `gateway bench capacity`: start, pin, measure CPU time and stop them (Linux /proc)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from gateway.errors import CapacityRunError
from gateway.simulator.children import stop_child


def cpu_s(pid: int) -> float:
    """utime + stime of a whole process (every thread), from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError as exc:
        raise CapacityRunError(f"cannot read CPU time of process {pid} (needs Linux /proc): {exc}") from None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (``VmRSS`` of ``/proc/<pid>/status``)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration) as exc:
        raise CapacityRunError(f"cannot read the memory of process {pid} (needs Linux /proc): {exc!r}") from None
    return int(line.split()[1]) * 1024


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine spent not idle, from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def pin_processes(servers: list[int], load: list[int]) -> str:
    """Servers under test on the last CPU, everything else (and this process) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "off (one CPU)"
    for pid in servers:
        os.sched_setaffinity(pid, cpus[-1:])
    for pid in [*load, os.getpid()]:
        os.sched_setaffinity(pid, cpus[:-1])
    return f"server under test on CPU {cpus[-1]}, load generator and sink on CPUs {cpus[:-1]}"


class Child:
    """One child process in its own process group, spoken to in JSON lines."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    @classmethod
    async def start(cls, name: str, role_args: list[str], log_dir: Path, env: dict[str, str]) -> Child:
        log_path = log_dir / f"{name}.log"
        with open_log(log_path) as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.loadtest.capacity", "--role", *role_args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True, limit=64 * 2**20, env={**os.environ, **env},
            )  # fmt: skip
        return cls(name, proc, log_path)

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())

    async def read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        except TimeoutError:
            raise CapacityRunError(f"{self.name} did not answer within {timeout_s:.0f} s{self._tail()}") from None
        if not line:
            raise CapacityRunError(f"{self.name} exited (status {await self.proc.wait()}){self._tail()}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def ask(self, command: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        self.send(command)
        return await self.read(timeout_s)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()[-8:]
            if lines:
                return "; its log ends:\n    " + "\n    ".join(lines)
        return ""

    async def stop(self) -> None:
        """Close stdin (the child exits), then kill the process group if it lingers."""
        await stop_child(self.proc, 5.0)


def open_log(path: Path) -> BinaryIO:
    return open(path, "wb")  # noqa: SIM115  # closed by the caller's with-block
