"""``gateway bench capacity``: the frame tag, the sink's accounting, the option checks and a tiny real sweep."""

from __future__ import annotations

import binascii
import json
import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.g711 import ulaw_to_pcm16
from gateway.loadtest.capacity import (
    SWEEP_RESOLUTION_CALLS,
    CapacityConfig,
    _sweep_levels,
    build_parser,
    config_from_args,
    format_table,
    main,
    run_capacity,
)
from gateway.loadtest.capacity_callers import tagged_media
from gateway.loadtest.capacity_report import CapacityReport, LevelResult, PathResult, level_lines, reply_latencies_ns
from gateway.loadtest.relay import FILLER_B64, TAG_BYTES, SinkStats, decode_tag, encode_tag
from gateway.wire.evi_codec import EviCodec
from gateway.wire.twilio_media import inbound_media_message

_FILLER = binascii.a2b_base64(FILLER_B64)
_PATH = PathResult(
    **dict.fromkeys(PathResult.__dataclass_fields__, 0) | {"dial_error": None}  # type: ignore[arg-type]
)
_LEVEL = LevelResult(
    calls=0, relay=_PATH, gateway=_PATH, added_in_p50_ms=None, added_in_p99_ms=None, added_out_p50_ms=None,
    added_out_p99_ms=None, cpu_ratio=None, ok=True, why="",
)  # fmt: skip


def _audio_input(call_index: int, frame: int, sent_ns: int) -> str:
    """The ``audio_input`` the gateway sends for one tagged caller frame."""
    return EviCodec().encode_audio(ulaw_to_pcm16(encode_tag(call_index, frame, sent_ns) + _FILLER))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 2**63 - 1))
def test_tag_survives_ulaw_decoding(call_index: int, frame: int, sent_ns: int) -> None:
    """A tag written into μ-law is read back exactly from the decoded linear16."""
    ulaw = encode_tag(call_index, frame, sent_ns)
    assert len(ulaw) == TAG_BYTES and 0x7F not in ulaw
    assert decode_tag(ulaw_to_pcm16(ulaw + _FILLER)) == (call_index, frame, sent_ns)


def test_untagged_audio_is_not_mistaken_for_a_frame() -> None:
    """Silence and the filler carry no tag."""
    assert decode_tag(ulaw_to_pcm16(b"\xff" * 160)) is None
    assert decode_tag(ulaw_to_pcm16(_FILLER)) is None


def test_tagged_media_is_the_twilio_media_message() -> None:
    """The callers' hand-built frame is the same JSON as the Twilio media builder's, payload included."""
    text = tagged_media("MZ" + "0" * 32, 7, 4, 3, 123_456_789)
    expected = inbound_media_message(
        sequence_number=7,
        stream_sid="MZ" + "0" * 32,
        chunk=5,
        timestamp_ms=80,
        ulaw=encode_tag(3, 4, 123_456_789) + _FILLER,
    )
    assert json.loads(text) == json.loads(expected)


def test_sink_counts_frames_sent_in_the_window_with_their_latency() -> None:
    """Frames sent inside the window are counted with latency; others, repeats and holes are told apart."""
    stats = SinkStats()
    stats.window(1_000, 2_000)
    stats.audio_input(_audio_input(1, 0, 500), received_ns=900)  # sent before the window
    stats.audio_input(_audio_input(1, 1, 1_000), received_ns=1_000 + 2_000_000)  # 2 ms
    stats.audio_input(_audio_input(1, 1, 1_000), received_ns=1_000 + 3_000_000)  # repeat
    stats.audio_input(_audio_input(1, 4, 1_500), received_ns=1_500 + 50_000)  # frames 2, 3 missing
    stats.audio_input(_audio_input(2, 0, 2_000), received_ns=2_100)  # sent at the window's end: excluded
    report = stats.report()
    assert (report["received"], report["received_total"], report["repeats"], report["gaps"]) == (2, 4, 1, 2)
    assert report["histogram"] == {"200": 1, "5": 1}


def test_sink_reads_every_frame_of_a_coalesced_audio_input() -> None:
    """An audio_input carrying several 20 ms frames (pre-roll) accounts for each of them."""
    stats = SinkStats()
    stats.window(0, 10_000)
    pcm = b"".join(ulaw_to_pcm16(encode_tag(5, n, 100 + n) + _FILLER) for n in range(3))
    stats.audio_input(EviCodec().encode_audio(pcm), received_ns=1_000)
    assert (stats.report()["received"], stats.report()["gaps"]) == (3, 0)


def test_bad_options_exit_with_status_2() -> None:
    """Decreasing levels and a reply longer than its period are refused before anything starts."""
    assert main(["--levels", "50,25"]) == 2
    assert main(["--reply-s", "7", "--reply-every-s", "6"]) == 2


async def test_tiny_sweep_accounts_for_every_frame_on_both_paths() -> None:
    """Two calls through the relay and the gateway: every frame sent arrives, both paths carry replies."""
    config = CapacityConfig(
        levels=(2,), window_s=1.0, settle_s=0.3, budget_s=60, retries=0, pin=False, reply_every_s=0.8, reply_s=0.4
    )
    started_s = time.monotonic()
    report = await run_capacity(config)
    assert time.monotonic() - started_s < 60
    data = json.loads(json.dumps(report.as_dict()))
    assert set(data) >= {"config", "machine", "levels", "stopped", "limit_calls", "calls_per_core", "goal"}
    (level,) = data["levels"]
    for path in ("relay", "gateway"):
        result = level[path]
        assert result["connected"] == 2 and result["closed_early"] == 0, result
        assert result["frames_sent"] > 0 and result["frames_lost"] == 0, result
        assert result["frames_received"] == result["frames_sent"], result
        assert result["sequence_gaps"] == 0 and result["heard_s"] > 0, result
        assert result["in_p50_ms"] is not None and result["cpu_ms_per_call_s"] > 0, result
        assert result["replies_started"] > 0 and result["replies_unheard"] == 0, result
        assert result["out_p50_ms"] is not None and result["out_max_ms"] < 1000, result
        assert result["messages_to_twilio"] > 0 and result["messages_per_speech_s"] > 0, result
        assert result["rss_mib"] > 10, result
    table = format_table(report)
    assert "relay" in table and "gateway" in table and "limit" in table


async def test_paired_runs_load_both_servers_at_once_and_report_each_ones_cpu() -> None:
    """``--paired``: both servers carry their calls in the same window (both use CPU in it, with calls on each),
    and the report holds one ratio per run and their median instead of the sweep."""
    config = CapacityConfig(
        levels=(1,), window_s=1.5, settle_s=0.3, budget_s=60, pin=False, reply_every_s=0.8, reply_s=0.4,
        paired_calls=3, paired_runs=2,
    )  # fmt: skip
    report = await run_capacity(config)
    assert report.levels == [] and len(report.paired) == 2
    for run in report.paired:
        assert run.calls == 3 and run.relay_ms_per_call_s > 0 and run.gateway_ms_per_call_s > 0
        assert run.cpu_ratio == pytest.approx(run.gateway_ms_per_call_s / run.relay_ms_per_call_s)
    data = json.loads(json.dumps(report.as_dict()))
    assert len(data["paired"]) == 2 and data["stopped"] == "2 paired runs"
    table = format_table(report)
    assert "paired: 3 calls on each server at once" in table and "median ×" in table


def test_paired_options_are_checked() -> None:
    """A paired run needs at least one call and one run."""
    assert main(["--paired", "0"]) == 2
    assert main(["--paired", "5", "--paired-runs", "0"]) == 2


def test_reply_latency_pairs_each_heard_reply_with_the_start_before_it() -> None:
    """A heard reply belongs to the latest start before it; a start heard by nobody is returned as missed."""
    ms = 1_000_000
    latencies, missed = reply_latencies_ns([1_000 * ms, 4_000 * ms, 7_000 * ms], [1_004 * ms, 7_009 * ms])
    assert latencies == [4 * ms, 9 * ms]
    assert missed == [4_000 * ms]
    # Audio heard before any start, or too long after one, is no reply's.
    assert reply_latencies_ns([5_000 * ms], [4_000 * ms, 9_000 * ms]) == ([], [5_000 * ms])


def test_sink_notes_reply_starts_inside_the_window_only() -> None:
    """Reply starts are kept per caller index, and only those inside the window."""
    stats = SinkStats()
    stats.window(1_000, 2_000)
    assert stats.audio_input(_audio_input(7, 0, 1_100), received_ns=1_200) == 7
    stats.reply_started(7, 900)
    stats.reply_started(7, 1_500)
    stats.reply_started(0, 1_999)
    stats.reply_started(7, 2_000)
    assert stats.report()["reply_starts_ns"] == {"7": [1_500], "0": [1_999]}


def test_heavy_shape_and_explicit_options() -> None:
    """``--shape heavy`` is 1 s replies every 3 s in 3 chunks; explicit options override the shape."""
    heavy = config_from_args(build_parser().parse_args(["--shape", "heavy", "--sweep"]))
    assert (heavy.reply_every_s, heavy.reply_s, heavy.reply_chunk_ms, heavy.sweep) == (3.0, 1.0, 334, True)
    mixed = config_from_args(build_parser().parse_args(["--shape", "heavy", "--chunk-ms", "100"]))
    assert (mixed.reply_s, mixed.reply_chunk_ms, mixed.sweep) == (1.0, 100, False)


class _ThresholdSweep:
    """Stands in for the process sweep: a level passes below ``limit`` calls."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ran: list[int] = []

    async def level(self, calls: int, attempts: int = 1) -> LevelResult:
        self.ran.append(calls)
        return replace(_LEVEL, calls=calls, ok=calls < self.limit, why="" if calls < self.limit else "p99")


async def test_sweep_bisects_to_the_largest_passing_level() -> None:
    """After the first failing level, ``sweep`` halves the interval until it is within the resolution."""
    config = CapacityConfig(levels=(100, 200, 400), retries=0, sweep=True, budget_s=10_000)
    fake = _ThresholdSweep(limit=263)
    report = CapacityReport(config={}, machine={})
    stopped = await _sweep_levels(config, fake, report, time.monotonic(), lambda text: None)  # type: ignore[arg-type]
    assert fake.ran[:3] == [100, 200, 400]
    limit = report.limit()
    assert limit is not None and 263 - SWEEP_RESOLUTION_CALLS <= limit.calls < 263
    assert "sweep: passes at" in stopped
    without = CapacityConfig(levels=(100, 200, 400), retries=0, budget_s=10_000)
    fake = _ThresholdSweep(limit=263)
    await _sweep_levels(without, fake, CapacityReport(config={}, machine={}), time.monotonic(), lambda text: None)  # type: ignore[arg-type]
    assert fake.ran == [100, 200, 400]


def test_a_failing_level_says_when_the_machine_missed_the_limit_too() -> None:
    """A failed level names what else missed the limit: the floor relay (its own p99 over it) and a load
    generator near the end of its CPU; a level that passed, or that failed alone, names neither."""
    slow_relay = replace(_PATH, in_p99_ms=12.0, out_p99_ms=3.0)
    busy_load = replace(_PATH, callers_core_share=0.5, sinks_core_share=0.4)
    failed = replace(_LEVEL, ok=False, why="in p99 30 ms >= 10 ms")
    assert replace(failed, relay=slow_relay).machine_bound() == ["the floor relay missed it too"]
    assert replace(failed, gateway=busy_load).machine_bound() == ["the load generator used 90% of its CPU"]
    assert failed.machine_bound() == [] and "machine-bound" not in level_lines(failed)
    both = replace(failed, relay=slow_relay, gateway=busy_load)
    assert level_lines(both).endswith(
        "FAIL: in p99 30 ms >= 10 ms; machine-bound: the floor relay missed it too, "
        "the load generator used 90% of its CPU"
    )
    assert "machine-bound" not in level_lines(replace(both, ok=True, why=""))


def test_the_table_says_when_the_first_failing_level_was_machine_bound() -> None:
    """The sweep's table ends by saying that its limit is the machine's when, at the first level that failed,
    the floor relay missed the limit as well."""
    config = {"window_s": 1.0, "reply_s": 1.0, "reply_every_s": 3.0, "reply_chunk_ms": 334, "max_p99_ms": 10.0}
    passed = replace(_LEVEL, calls=100)
    failed = replace(_LEVEL, calls=150, ok=False, why="in p99 30 ms >= 10 ms")
    slow = replace(failed, relay=replace(_PATH, in_p99_ms=25.0))
    alone = format_table(CapacityReport(config=config, machine={"cpus": 2, "python": "3"}, levels=[passed, failed]))
    assert "the machine's" not in alone
    table = format_table(CapacityReport(config=config, machine={"cpus": 2, "python": "3"}, levels=[passed, slow]))
    assert "at 150 calls, the first level that failed, the floor relay missed it too" in table
