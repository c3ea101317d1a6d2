"""The emulated Twilio call as a Locust user: a real Locust master and one worker against the live gateway.

Locust monkey-patches the standard library when imported, so it is never imported here: it runs as
subprocesses, while the gateway, the EVI simulator and a scripted agent run in this test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib.util
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import gateway.loadtest
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway, still_open
from gateway.simulator.loopback import free_port
from gateway.simulator.recording import write_wav
from gateway.simulator.responder import BARGE_IN_SCENARIO, energy_responder, speech_then_silence

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is not installed (pip install locust)"
)

LOCUSTFILE = Path(gateway.loadtest.__file__).parent / "locust_user.py"
REPO = Path(gateway.loadtest.__file__).parent.parent.parent
RUN_LIMIT_S = 40.0

HANGS_UP_BEFORE_THE_LAST_REPLY = """
agent_silence_ms = 500
hangup_after_last_turn_ms = 40
[[turn]]
wait_for_agent = true
[[turn]]
wait_for_agent = true
"""


def recordings(root: Path) -> Path:
    """``a``: three turns with a barge-in; ``b``: two turns, hanging up before the last reply can come."""
    folder = root / "recordings"
    folder.mkdir()
    write_wav(folder / "a.wav", speech_then_silence([600, 1000, 500], 500, seed=10), 8000)
    (folder / "a.toml").write_text(BARGE_IN_SCENARIO)
    write_wav(folder / "b.wav", speech_then_silence([1000, 500], 500, seed=20), 8000)
    (folder / "b.toml").write_text(HANGS_UP_BEFORE_THE_LAST_REPLY)
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of one of Locust's ``--csv`` files."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def run_locust(
    commands: list[tuple[list[str], dict[str, str]]], logs: Path, limit_s: float = RUN_LIMIT_S
) -> list[int]:
    """Run ``locust`` processes (arguments, extra environment) to completion within ``limit_s``; every
    process is killed on the way out. Returns their exit codes."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for i, (args, extra_env) in enumerate(commands):
            out = (logs / f"locust-{i}.log").open("wb")
            with out:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "locust",
                        "-f",
                        str(LOCUSTFILE),
                        *args,
                        cwd=REPO,
                        env={**os.environ, **extra_env},
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=out,
                        stderr=asyncio.subprocess.STDOUT,
                    )
                )
        async with asyncio.timeout(limit_s):
            return [await proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def log_tails(logs: Path) -> str:
    """The end of every Locust log, for assertion messages."""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))


@pytest.fixture(name="agent")
async def fixture_agent() -> AsyncIterator[tuple[RunningGateway, EviSimulator]]:
    """The gateway (signatures enforced) bridged to a simulator running ``responder``."""
    async with (
        EviSimulator(agent=energy_responder, max_sessions=8) as sim,
        running_gateway(sim.url, max_concurrent_calls=8) as gw,
    ):
        yield gw, sim
        assert await still_open(gw, sim) == []


async def test_master_and_one_worker_report_calls_and_turns(
    agent: tuple[RunningGateway, EviSimulator], tmp_path: Path
) -> None:
    """A headless Locust master with one worker places three calls (one per user), reports each call by
    scenario and each turn's response latency and barge-in yield with plausible times, counts the turn
    that got no reply as the only failure, and ends by itself once every user is done."""
    gw, sim = agent
    folder = recordings(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    port = str(free_port())
    master = [
        "--headless",
        "--master",
        "--master-bind-host=127.0.0.1",
        f"--master-bind-port={port}",
        "--expect-workers=1",
        "--expect-workers-max-wait=20",
        "--users=3",
        "--spawn-rate=10",
        "--run-time=35s",
        "--only-summary",
        f"--csv={tmp_path / 'stats'}",
        f"--host={gw.base_url}",
        f"--recordings={folder}",
        "--calls-per-user=1",
    ]
    worker = ["--worker", "--master-host=127.0.0.1", f"--master-port={port}"]
    # The token reaches only the worker, through its environment, as the README advises.
    token = {"TWILIO_AUTH_TOKEN": gw.auth_token or ""}
    codes = await run_locust([(master, {"TWILIO_AUTH_TOKEN": ""}), (worker, token)], logs)

    assert codes == [1, 0], log_tails(logs)  # the master exits 1 because a turn failed
    assert len(sim.sessions) == 3
    rows = {(r["Type"], r["Name"]): r for r in read_csv(tmp_path / "stats_stats.csv")}
    assert set(rows) == {
        ("call", "a"),
        ("call", "b"),
        ("turn", "response latency"),
        ("turn", "barge-in yield"),
        ("", "Aggregated"),
    }, log_tails(logs)
    counts = {key: (int(r["Request Count"]), int(r["Failure Count"])) for key, r in rows.items()}
    assert counts[("call", "a")] == (2, 0)
    assert counts[("call", "b")] == (1, 0)
    assert counts[("turn", "response latency")] == (3 + 3 + 2, 1)
    assert counts[("turn", "barge-in yield")] == (2, 0)
    for name in ("a", "b"):
        call = rows[("call", name)]
        assert 3000 < float(call["Min Response Time"]) <= float(call["Max Response Time"]) < 30_000
        assert float(call["Average Content Size"]) > 0  # μ-law bytes of agent audio heard
    latency = rows[("turn", "response latency")]
    assert 0 < float(latency["Min Response Time"]) <= float(latency["Max Response Time"]) < 3000
    yield_row = rows[("turn", "barge-in yield")]
    assert 0 < float(yield_row["Min Response Time"]) <= float(yield_row["Max Response Time"]) < 1000
    failures = read_csv(tmp_path / "stats_failures.csv")
    assert [(f["Method"], f["Name"], f["Occurrences"]) for f in failures] == [("turn", "response latency", "1")]
    assert "no reply heard after turn 2 of scenario 'b'" in failures[0]["Error"]


async def test_a_missing_recordings_folder_is_reported_as_a_failure_naming_it(tmp_path: Path) -> None:
    """With recordings that do not exist, no call is placed: each user reports one failed
    ``configuration`` request naming the folder, and the run ends on its own with exit status 1."""
    logs = tmp_path / "logs"
    logs.mkdir()
    missing = tmp_path / "nowhere"
    local = [
        "--headless",
        "--users=2",
        "--spawn-rate=10",
        "--run-time=30s",
        "--only-summary",
        f"--csv={tmp_path / 'stats'}",
        "--host=http://127.0.0.1:9",
        f"--recordings={missing}",
        "--calls-per-user=1",
    ]
    assert await run_locust([(local, {})], logs, limit_s=25) == [1], log_tails(logs)
    failures = read_csv(tmp_path / "stats_failures.csv")
    assert [(f["Method"], f["Name"], f["Occurrences"]) for f in failures] == [("call", "configuration", "2")]
    assert str(missing) in failures[0]["Error"] and "not a directory" in failures[0]["Error"]
    rows = read_csv(tmp_path / "stats_stats.csv")
    assert [r["Name"] for r in rows if r["Type"] == "turn"] == []


SAMPLES_SCRIPT = """
import json, sys
from gateway.loadtest.locust_user import samples_of
from gateway.loadtest.metrics import CallResult, TurnResult

def turn(index, kind, end_ms, latency, yield_ms=None, missed=False, note=None):
    start = None if end_ms is None else end_ms - 500.0
    return TurnResult(index, kind, "", start, end_ms, None, latency, False, yield_ms, missed, False, 0.0, 0, 0.0, note)

calls = [
    CallResult(0, "ok", "CA0", 0, 1.0, 5.5, True, "caller_hangup", heard_audio_ms=1000.0, turns=[
        turn(0, "dtmf", None, None),
        turn(1, "wait", 1000.0, 250.0),
        turn(2, "barge_in", 3000.0, 300.0, yield_ms=120.0),
    ]),
    CallResult(1, "bad", "CA1", 0, 2.0, 4.0, False, "gateway_closed", failure="the gateway closed the call", turns=[
        turn(0, "barge_in", 1000.0, None, missed=True, note="agent did not answer within 10000 ms"),
        turn(1, "barge_in", 2000.0, 400.0),
    ]),
]
def row(s):
    return [s.request_type, s.name, s.response_time_ms, s.response_length, s.failure]

json.dump([[row(s) for s in samples_of(c)] for c in calls], sys.stdout)
"""


async def test_samples_map_calls_and_turns_to_locust_requests() -> None:
    """A call becomes one ``call`` request (length in ms, heard bytes, its failure), each spoken turn a
    ``response latency`` and each barge-in a ``barge-in yield``; keypress-only turns report nothing, and
    what was not measured fails without a time."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SAMPLES_SCRIPT,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    ok, bad = json.loads(out)
    assert ok == [
        ["call", "ok", 4500.0, 8000, None],
        ["turn", "response latency", 250.0, 0, None],
        ["turn", "response latency", 300.0, 0, None],
        ["turn", "barge-in yield", 120.0, 0, None],
    ]
    assert bad == [
        ["call", "bad", 2000.0, 0, "the gateway closed the call"],
        ["turn", "response latency", None, 0, "agent did not answer within 10000 ms"],
        ["turn", "barge-in yield", None, 0, "barge-in at turn 1 of scenario 'bad' found the agent silent"],
        ["turn", "response latency", 400.0, 0, None],
        ["turn", "barge-in yield", None, 0, "the agent never yielded to the barge-in at turn 2 of 'bad'"],
    ]
