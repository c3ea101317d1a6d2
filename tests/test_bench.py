"""Smoke test of `gateway bench`: it runs, reports every row, and our paths hold nothing back after flush."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from gateway.bench import main, speech_like_pcm16
from gateway.bench_wire import run as run_wire
from gateway.cli import main as cli_main

EXPECTED_ROWS = {
    "in 8k: audioop.ulaw2lin",
    "in 8k: InboundTranscoder(8000)",
    "in 16k: audioop + soxr HQ",
    "in 16k: InboundTranscoder(16000)",
    "out 48k: soxr HQ + audioop",
    "out 48k: OutboundTranscoder(48000)",
    "out 24k: soxr HQ + audioop",
    "out 24k: OutboundTranscoder(24000)",
}


def test_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints every row; our outbound rows hold 0 ms after flush and inbound 8 kHz never holds."""
    assert main(["--seconds", "0.2", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == EXPECTED_ROWS
    assert (report["frame_ms"], report["seconds"], report["repeats"]) == (20, 0.2, 1)
    for row in rows.values():
        assert row["us_per_frame"] > 0
        assert row["ratio"] > 0
    ours_outbound = [row for row in rows.values() if row["ours"] and row["direction"] == "out"]
    assert len(ours_outbound) == 2
    assert all(row["held_after_flush_ms"] == 0 for row in ours_outbound)
    inbound_8k = rows["in 8k: InboundTranscoder(8000)"]
    assert inbound_8k["held_mean_ms"] == inbound_8k["held_max_ms"] == inbound_8k["held_after_flush_ms"] == 0
    assert rows["out 48k: soxr HQ + audioop"]["held_max_ms"] > 0  # the plain soxr stream does hold audio


def test_table_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Without `--json` a plain-text table with a line per row and the goal verdicts is printed."""
    assert main(["--seconds", "0.1", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in EXPECTED_ROWS)
    assert "outbound holds back 0 ms after flush: yes" in text
    assert "inbound 8 kHz holds back 0 ms: yes" in text


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--repeats", "0"], ["--seconds", "abc"]])
def test_bad_options_exit_with_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Non-positive or non-numeric options stop with argparse's usage error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "gateway bench" in capsys.readouterr().err


def test_speech_like_signal_is_deterministic_and_band_limited() -> None:
    """The bench input is the same for the same seed, differs across seeds, and peaks at −3 dBFS."""
    first, again, other = (speech_like_pcm16(0.5, 24000, seed) for seed in (0, 0, 1))
    assert first == again != other
    samples = np.frombuffer(first, dtype="<i2").astype(np.float64)
    assert len(samples) == 12000
    assert np.max(np.abs(samples)) == pytest.approx(0.708 * 32767, abs=1)
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs_hz = np.fft.rfftfreq(len(samples), 1 / 24000)
    assert spectrum[freqs_hz > 9000].sum() < 1e-3 * spectrum.sum()


def test_wire_bench_times_the_stdlib_and_every_installed_alternative(capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway bench wire` times each hot-path JSON/base64 operation with the standard library and with orjson
    and pybase64 when installed, each row against the standard library's."""
    rows = run_wire(number=200, repeats=1)
    by_op: dict[str, dict[str, float | None]] = {}
    for row in rows:
        assert row.us > 0
        by_op.setdefault(row.operation, {})[row.library] = row.ratio
    assert by_op["media message → dict"]["json (stdlib)"] == 1.0
    assert by_op["1600 B → base64"]["binascii (stdlib)"] == 1.0
    assert by_op["whole media parse (ours)"] == {"gateway": None}
    for module, op in (("orjson", "media message → dict"), ("pybase64", "320 B → base64")):
        installed = importlib.util.find_spec(module) is not None
        assert (module in by_op[op]) is installed
    assert cli_main(["bench", "wire", "--number", "50"]) == 0
    assert "× stdlib" in capsys.readouterr().out
