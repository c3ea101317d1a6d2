"""`gateway bench faults`: the mutators are deterministic and stay in their lanes, the verdicts fail the run on
any crash, disturbed call or leak, and the quick matrix runs through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.loadtest.faults import main
from gateway.loadtest.faults_report import (
    FaultsReport,
    Sample,
    ScenarioResult,
    crash_lines,
    describe_crash,
    format_table,
)
from gateway.simulator.mutator import (
    ENDING_TWILIO_KINDS,
    EVI_KINDS,
    TWILIO_KINDS,
    EviMutator,
    Frame,
    TwilioMutator,
)
from gateway.wire.twilio_media import parse_twilio_message

SCENARIOS = ("twilio-mutate", "evi-mutate", "evi-faults", "twilio-faults", "half-open", "soak")


def _twilio(seed: str) -> TwilioMutator:
    return TwilioMutator(seed, stream_sid="MZ" + "a" * 32, account_sid="AC" + "b" * 32, call_sid="CA" + "c" * 32)


def _frames(mutator: TwilioMutator | EviMutator, n: int) -> list[Frame]:
    return [mutator.next() for _ in range(n)]


def test_mutators_are_deterministic_per_seed() -> None:
    """The same seed gives the same frames byte for byte; another seed gives others."""
    assert _frames(_twilio("7"), 500) == _frames(_twilio("7"), 500)
    assert _frames(_twilio("7"), 500) != _frames(_twilio("8"), 500)
    assert _frames(EviMutator("7"), 300) == _frames(EviMutator("7"), 300)
    assert _frames(EviMutator("7"), 300) != _frames(EviMutator("8"), 300)


@pytest.mark.parametrize("kind", sorted(TWILIO_KINDS))
def test_each_twilio_kind_stays_in_its_lane(kind: str) -> None:
    """Kinds meant to be ignored are UTF-8 text under 64 KiB (or binary); the ending kinds are over 64 KiB or
    not UTF-8, as the gateway's 1009 and 1007 closes need."""
    mutator = _twilio(f"lane:{kind}")
    for _ in range(30):
        made = getattr(mutator, f"_{kind}")()
        frame = made if isinstance(made, Frame) else Frame(kind, made)
        if kind == "oversized":
            assert len(frame.data) > 64 * 1024
        elif kind == "invalid_utf8":
            with pytest.raises(UnicodeDecodeError):
                frame.data.decode("utf-8")
        else:
            assert len(frame.data) < 64 * 1024
            if not frame.binary:
                frame.data.decode("utf-8")
    assert {"oversized", "invalid_utf8"} == ENDING_TWILIO_KINDS


def test_clean_media_parses_and_advances_the_clock() -> None:
    """The mutator's own media frames are what Twilio sends: they parse, 20 ms apart."""
    mutator = _twilio("clean")
    first, second = (parse_twilio_message(mutator.clean_media()) for _ in range(2))
    assert (first.timestamp_ms, second.timestamp_ms) == (0, 20)  # type: ignore[union-attr]


def test_evi_mutator_reaches_every_kind() -> None:
    """Over a long run every EVI mutation kind is drawn, and the huge audio is over the 4 MiB decode budget."""
    mutator = EviMutator("all")
    _frames(mutator, 6000)
    rare = {"huge_audio", "invalid_utf8"}
    assert set(EVI_KINDS) - rare <= set(mutator.counts)
    assert len(EviMutator("x")._huge_audio()) > 4 * 2**20


# ------------------------------------------------------------------------------------------------ verdicts


def _row(name: str, **changes: Any) -> ScenarioResult:
    sample = Sample(rss_bytes=50 * 2**20, fds=12, tasks=4, active_calls=0, pending_streams=0)
    row = ScenarioResult(name, name, tried=10, canaries=2, before=sample, after=sample)
    for key, value in changes.items():
        setattr(row, key, value)
    return row


@pytest.mark.parametrize(
    "bad",
    [
        {"crashed": True, "crash_lines": ["boom"]},
        {"disturbed": 1, "disturbed_why": ["canary: no answer"]},
        {"leaks": True, "leak_why": ["open fds 40 (idle baseline 12)"]},
        {"tried": 0},
        {"error": "did not finish"},
    ],
    ids=["crash", "disturbed", "leak", "tried-nothing", "error"],
)
def test_any_failed_row_fails_the_run(bad: dict[str, Any]) -> None:
    """A report with a crash, a disturbed call, a leak, a row that tried nothing or did not finish exits 1 and says
    so in the table; the same report without it exits 0."""
    clean = FaultsReport(config={}, machine={}, scenarios=[_row("a"), _row("b")])
    assert clean.exit_status() == 0 and "PASS" in format_table(clean)
    report = FaultsReport(config={}, machine={}, scenarios=[_row("a"), _row("b", **bad)])
    assert report.exit_status() == 1
    table = format_table(report)
    assert "FAIL:" in table and table.rstrip().splitlines()[-1].startswith("FAIL")
    assert json.loads(report.to_json())["verdict"] == "fail"


def test_crash_lines_are_errors_and_tracebacks_only() -> None:
    """Warnings are not crashes; an error-level record, a logged traceback at any level and Python's own
    unhandled-exception text are."""
    lines = [
        json.dumps({"level": "warning", "message": "T< Twilio message is not JSON: ignored"}),
        json.dumps({"level": "error", "message": "Error handling request"}),
        json.dumps({"level": "warning", "message": "x", "exception": "Traceback (most recent call last): ..."}),
        "Exception ignored in: <coroutine object x>",
        "Task exception was never retrieved",
        "",
    ]
    assert crash_lines(lines) == lines[1:4]


def test_a_crash_is_described_by_its_innermost_error() -> None:
    """An exception group logged by aiohttp is summed up by the error inside it and the gateway frame raising it."""
    exception = (
        "  + Exception Group Traceback (most recent call last):\n"
        "  | ExceptionGroup: unhandled errors (1 sub-exception)\n"
        '  +-+---- 1 ----\n    |   File "/x/gateway/core/playout.py", line 205, in push\n'
        "    | gateway.errors.CallStateError: audio pushed\n    +------------\n"
    )
    line = json.dumps({"level": "error", "logger": "aiohttp.server", "message": "Error handling request",
                       "exception": exception})  # fmt: skip
    assert describe_crash(line) == (
        "error aiohttp.server 'Error handling request': gateway.errors.CallStateError: audio pushed"
        " at gateway/core/playout.py, line 205, in push"
    )


def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--only with a name that is not a scenario exits 2 before anything starts."""
    assert main(["--only", "nope"]) == 2
    assert "unknown scenarios nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the real command


def test_quick_matrix_through_the_real_command(tmp_path: Path) -> None:
    """`gateway bench faults --quick` runs every scenario against the gateway in its own process within a minute,
    each row tried something, and the exit status is 0: no crash, no disturbed canary, no leak."""
    command = [sys.executable, "-m", "gateway", "bench", "faults", "--quick", "--json", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=58, check=False)
    report = json.loads(done.stdout)
    assert [s["name"] for s in report["scenarios"]] == list(SCENARIOS), done.stderr[-2000:]
    assert all(s["tried"] > 0 for s in report["scenarios"]), report["scenarios"]
    assert (tmp_path / "gateway.log").stat().st_size > 0 and (tmp_path / "report.json").exists()
    reasons = {s["name"]: s["reasons"] for s in report["scenarios"] if s["failed"]}
    assert done.returncode == 0, reasons


def test_wrong_type_frames_are_never_circular() -> None:
    """A frame whose fields get wrong-typed values is always serializable: every value is a fresh copy, so one
    shared list or dict placed at two paths cannot make the frame refer to itself."""
    mutator = _twilio("circular")
    for _ in range(3000):
        assert mutator._wrong_type()  # noqa: SLF001 - the kind that once built a circular frame
    evi_mutator = EviMutator("circular")
    for _ in range(3000):
        assert evi_mutator._wrong_type()  # noqa: SLF001
