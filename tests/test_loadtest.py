"""`gateway loadtest` against the real gateway on loopback, and its scenarios, metrics and reports."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.framing import FRAME_MS, ULAW_FRAME_BYTES
from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.codecs.levels import FULL_SCALE
from gateway.errors import ConfigError, ScenarioError
from gateway.loadtest import main
from gateway.loadtest.htmlreport import render_html
from gateway.loadtest.metrics import CallResult, SetupTimes, TurnResult, TurnTiming, stats, summarize, turn_results
from gateway.loadtest.report import report_dict, summary_table
from gateway.loadtest.runner import LoadTestConfig, LoadTestResult, run_loadtest, webhook_url_for
from gateway.loadtest.scenario import Scenario, SplitParams, load_folder, split_utterances
from gateway.simulator.caller import NetworkTrouble
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway, still_open
from gateway.simulator.recording import CallRecord, SpeechSegment, write_wav
from gateway.simulator.responder import BARGE_IN_SCENARIO, LOUD_DBFS, energy_responder, speech_then_silence
from gateway.simulator.wavgen import speechlike_pcm16

BARGE_IN_BY_SEGMENTS = """
agent_silence_ms = 500
hangup_after_last_turn_ms = 800
[defaults]
wait_for_agent = true
pause_before_ms = 100
[[turn]]
start_ms = 0
end_ms = 600
[[turn]]
start_ms = 1100
end_ms = 2100
barge_in_after_ms = 300
dtmf = "5"
[[turn]]
start_ms = 2600
end_ms = 3100
"""


def barge_in_folder(root: Path) -> Path:
    """A 16 kHz WAV split by silence, and the same audio as raw μ-law cut into explicit segments."""
    folder = root / "calls"
    folder.mkdir()
    pcm = speech_then_silence([600, 1000, 500], 500, 16000)
    write_wav(folder / "a.wav", pcm, 16000)
    (folder / "a.toml").write_text(BARGE_IN_SCENARIO)
    (folder / "b.ulaw").write_bytes(pcm16_to_ulaw(speech_then_silence([600, 1000, 500], 500, 8000)))
    (folder / "b.toml").write_text(BARGE_IN_BY_SEGMENTS)
    return folder


@pytest.fixture(name="agent_gateway")
async def fixture_agent_gateway() -> AsyncIterator[RunningGateway]:
    """The gateway (signatures enforced, room for 16 calls) bridged to a simulator running ``responder``."""
    async with (
        EviSimulator(agent=energy_responder, max_sessions=16) as sim,
        running_gateway(sim.url, max_concurrent_calls=16) as gw,
    ):
        yield gw
        assert await still_open(gw, sim) == []


async def test_ten_concurrent_calls_with_barge_ins_measure_what_the_scenario_makes_true(
    agent_gateway: RunningGateway, tmp_path: Path
) -> None:
    """Ten concurrent scripted calls all succeed; every barge-in turn has a positive, bounded yield with a
    clear, every spoken turn a response latency, no frame is lost, and the reports hold every turn."""
    gateway = agent_gateway
    scenarios = tuple(load_folder(barge_in_folder(tmp_path)))
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    config = LoadTestConfig(
        target=gateway.base_url,
        scenarios=scenarios,
        auth_token=gateway.auth_token,
        calls=10,
        concurrency=10,
        max_call_s=30,
        wav_dir=wav_dir,
    )
    result = await run_loadtest(config)

    assert [c.index for c in result.calls] == list(range(10))
    assert max(n for _, n in result.concurrency_timeline) == 10
    for call in result.calls:
        assert call.ok, (call.index, call.end, call.failure)
        assert call.end == "caller_hangup"
        assert call.frames_dropped == 0 and call.frames_sent > 0
        assert call.protocol_violations == []
        assert call.setup.webhook_to_greeting_ms is not None and call.setup.webhook_to_greeting_ms > 0
        assert [t.kind for t in call.turns] == ["wait", "barge_in", "wait"]
        for turn in call.turns:
            assert turn.response_latency_ms is not None and 0 < turn.response_latency_ms < 3000, turn
        barge_in = call.turns[1]
        assert not barge_in.barge_in_missed
        assert barge_in.barge_in_yield_ms is not None and 0 < barge_in.barge_in_yield_ms < 1000, barge_in
        assert barge_in.barge_in_cleared
        assert barge_in.talk_over_ms == pytest.approx(barge_in.barge_in_yield_ms)
        assert call.turns[0].talk_over_ms == 0 and call.turns[2].talk_over_ms == 0
        assert call.turns[1].dtmf == ("5" if call.scenario == "b" else "")
    summary = summarize(result.calls)
    assert summary["response_latency_ms"].n == 30
    assert summary["barge_in_yield_ms"].n == 10
    assert summary["frames_dropped"].max == 0

    report = report_dict(result)
    assert json.loads(json.dumps(report))["calls_ok"] == 10
    assert sum(len(c["turns"]) for c in report["calls"]) == 30
    table = summary_table(result)
    assert "10 calls: 10 ok, 0 failed" in table and "barge-in yield (ms)" in table

    # The stereo WAV: left is what the caller said, so each utterance sits where the record says it does.
    call = result.calls[0]
    with wave.open(str(next(wav_dir.glob("call-00000-*.wav"))), "rb") as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    first = call.turns[0]
    assert first.utterance_start_ms is not None and first.utterance_end_ms is not None
    said = stereo[int(first.utterance_start_ms * 8) : int(first.utterance_end_ms * 8), 0]
    expected = np.frombuffer(ulaw_to_pcm16(scenarios[0].turns[0].audio_ulaw), "<i2")
    assert np.array_equal(said, expected)
    assert np.abs(stereo[:, 1]).max() > FULL_SCALE * 10 ** (LOUD_DBFS / 20)  # the agent was heard on the right


async def test_injected_loss_is_counted_exactly(agent_gateway: RunningGateway, tmp_path: Path) -> None:
    """Dropping every 10th frame drops exactly one frame in ten, and the calls still work."""
    gateway = agent_gateway
    folder = tmp_path / "loss"
    folder.mkdir()
    write_wav(folder / "c.wav", speechlike_pcm16(600, 8000, seed=4), 8000)
    (folder / "c.toml").write_text("hangup_after_last_turn_ms = 1400\n[[turn]]\nwait_for_agent = false\n")
    config = LoadTestConfig(
        target=gateway.base_url,
        scenarios=tuple(load_folder(folder)),
        auth_token=gateway.auth_token,
        calls=2,
        concurrency=2,
        network=NetworkTrouble(drop_every_n=10),
    )
    result = await run_loadtest(config)
    for call in result.calls:
        assert call.ok, call.failure
        ticks = call.frames_sent + call.frames_dropped
        assert ticks >= 100
        assert call.frames_dropped == ticks // 10
        assert call.turns[0].response_latency_ms is not None
    assert summarize(result.calls)["frames_dropped"].n == 2


async def test_duration_mode_keeps_starting_calls_until_the_deadline(
    agent_gateway: RunningGateway, tmp_path: Path
) -> None:
    """With a duration, calls keep starting (ramped up first) until it has passed, and no later."""
    folder = tmp_path / "short"
    folder.mkdir()
    write_wav(folder / "s.wav", speechlike_pcm16(200, 8000, seed=9), 8000)
    (folder / "s.toml").write_text("hangup_after_last_turn_ms = 200\n[[turn]]\nwait_for_agent = false\n")
    config = LoadTestConfig(
        target=agent_gateway.base_url,
        scenarios=tuple(load_folder(folder)),
        auth_token=agent_gateway.auth_token,
        concurrency=2,
        ramp_up_s=0.4,
        duration_s=1.5,
    )
    result = await run_loadtest(config)
    assert len(result.calls) >= 3
    assert all(c.ok for c in result.calls), [c.failure for c in result.calls]
    assert all(c.started_s < 1.5 for c in result.calls)
    assert result.calls[1].started_s >= 0.2
    assert result.stopped_early is None


async def test_an_unreachable_gateway_stops_the_run_after_consecutive_dial_errors(tmp_path: Path) -> None:
    """When no call can be set up, the run stops after ten dial errors instead of hammering the target."""
    write_wav(tmp_path / "a.wav", speechlike_pcm16(300, 8000, seed=1), 8000)
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        config = LoadTestConfig(
            target=f"http://127.0.0.1:{closed.getsockname()[1]}",
            scenarios=tuple(load_folder(tmp_path)),
            concurrency=2,
            duration_s=30,
        )
        result = await asyncio.wait_for(run_loadtest(config), 20)
    finally:
        closed.close()
    assert result.stopped_early is not None and "10 calls in a row" in result.stopped_early
    assert 10 <= len(result.calls) <= 11
    assert {(c.end, c.dial_stage) for c in result.calls} == {("dial_error", "webhook")}
    assert "dial error at webhook" in summary_table(result)


def test_bad_recordings_and_scenarios_fail_before_any_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed recordings and scenario files give exit status 2 and one error naming every file and
    problem, and no webhook is ever requested."""
    folder = tmp_path / "calls"
    folder.mkdir()
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    write_wav(folder / "typo.wav", speechlike_pcm16(500, 8000, seed=1), 8000)
    (folder / "typo.toml").write_text("[[turn]]\nstart_ms = 0\nend_ms = 400\nwait_for_agnet = true\n")
    write_wav(folder / "long.wav", speechlike_pcm16(500, 8000, seed=1), 8000)
    (folder / "long.toml").write_text("[[turn]]\nstart_ms = 0\nend_ms = 9000\n")
    write_wav(folder / "clash.wav", speechlike_pcm16(500, 8000, seed=1), 8000)
    (folder / "clash.toml").write_text("[[turn]]\nbarge_in_after_ms = 100\nwait_for_agent = true\n")
    (folder / "orphan.toml").write_text("")
    (folder / "bad.toml").write_text("this is = = not toml")
    write_wav(folder / "bad.wav", speechlike_pcm16(500, 8000, seed=1), 8000)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        status = main([str(folder), "--target", f"http://127.0.0.1:{port}", "--auth-token", "x", "--calls", "3"])
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert status == 2
    err = capsys.readouterr().err
    for name, problem in [
        ("broken.wav", "'fmt '"),
        ("typo.toml", "'wait_for_agnet'"),
        ("typo.toml", "did you mean 'wait_for_agent'"),
        ("long.toml", "past the end of the recording"),
        ("clash.toml", "cannot be combined"),
        ("orphan.toml", "no recording beside it"),
        ("bad.toml", "not valid TOML"),
    ]:
        assert any(name in line and problem in line for line in err.splitlines()), (name, problem, err)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--target", "ftp://x"], "http(s) URL"),
        (["--drop-every", "1"], "drop pattern"),
        (["--burst", "300"], "burst"),
        (["--json-out", "/nonexistent-dir/r.json"], "does not exist"),
        (["--concurrency", "0"], "concurrency"),
        ([], "no target"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], problem: str
) -> None:
    """Each bad option is refused with exit status 2 and a message naming it."""
    monkeypatch.delenv("GATEWAY_PUBLIC_URL", raising=False)
    write_wav(tmp_path / "a.wav", speechlike_pcm16(500, 8000, seed=1), 8000)
    target = [] if "--target" in args or not args else ["--target", "http://127.0.0.1:9"]
    assert main([str(tmp_path), *target, *args]) == 2
    assert problem in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(st.integers(10, 40), min_size=1, max_size=4),
    gaps=st.lists(st.integers(25, 50), min_size=4, max_size=4),
    lead=st.integers(0, 20),
)
def test_split_by_silence_finds_each_utterance(parts: list[int], gaps: list[int], lead: int) -> None:
    """Speech frames separated by at least min_silence of silence come back as one span each, frame-exact."""
    frame = ULAW_FRAME_BYTES
    silence = b"\xff" * frame
    audio = bytearray(silence * lead)
    expected = []
    for i, n_frames in enumerate(parts):
        start = len(audio) // frame * FRAME_MS
        audio += pcm16_to_ulaw(speechlike_pcm16(n_frames * FRAME_MS, 8000, seed=i))
        expected.append((start, start + n_frames * FRAME_MS))
        audio += silence * gaps[i]
    spans = split_utterances(bytes(audio), SplitParams(min_silence_ms=400, min_utterance_ms=100))
    assert len(spans) == len(expected)
    for (start, end), (want_start, want_end) in zip(spans, expected, strict=True):
        assert want_start <= start <= want_start + 40
        assert want_end - 40 <= end <= want_end


def test_scenario_defaults_and_explicit_turns(tmp_path: Path) -> None:
    """Without a scenario every utterance waits for the agent; explicit turns keep their own options."""
    write_wav(tmp_path / "plain.wav", speech_then_silence([400, 400], 600, 8000), 8000)
    write_wav(tmp_path / "x.wav", speech_then_silence([400, 400], 600, 8000), 8000)
    (tmp_path / "x.toml").write_text(
        "hangup_after_ms = 9000\n[[turn]]\ndtmf = '12#'\n[[turn]]\nstart_ms = 1000\nend_ms = 1400\n"
        "barge_in_after_ms = 250\n"
    )
    plain, explicit = load_folder(tmp_path)
    assert plain.name == "plain" and plain.scenario_path is None
    assert [(t.kind, t.source_start_ms, t.source_end_ms) for t in plain.turns] == [
        ("wait", 0, 400),
        ("wait", 1000, 1400),
    ]
    assert all(t.pause_before_ms == 200 for t in plain.turns)
    assert explicit.hangup_after_ms == 9000
    keys, barge = explicit.turns
    assert (keys.kind, keys.dtmf, keys.audio_ulaw) == ("dtmf", "12#", b"")
    assert (barge.kind, barge.barge_in_after_ms, barge.audio_ms) == ("barge_in", 250, 400)


def test_empty_folder_and_missing_folder_are_scenario_errors(tmp_path: Path) -> None:
    """A folder with no recordings, or no folder at all, is a ScenarioError naming it."""
    with pytest.raises(ScenarioError, match="no recordings found"):
        load_folder(tmp_path)
    with pytest.raises(ScenarioError, match="not a directory"):
        load_folder(tmp_path / "nope")


def test_webhook_url_is_derived_from_the_public_base_url() -> None:
    """The base URL gets /twilio/voice; a full webhook URL is kept; other schemes are refused."""
    assert webhook_url_for("https://voice.example.com/") == "https://voice.example.com/twilio/voice"
    assert webhook_url_for("http://h:8080/twilio/voice") == "http://h:8080/twilio/voice"
    with pytest.raises(ConfigError):
        webhook_url_for("wss://voice.example.com")


# ---------------------------------------------------------------------------------------------------
# Metrics and reports, from records built by hand
# ---------------------------------------------------------------------------------------------------


def record_with(agent_spans_ms: list[tuple[int, int]], total_ms: int, clears: list[float]) -> CallRecord:
    """A record whose heard audio is loud exactly over ``agent_spans_ms`` (20 ms aligned)."""
    rec = CallRecord(frame_ms=20)
    loud = pcm16_to_ulaw(np.full(160, 4000, "<i2").tobytes())
    for t in range(0, total_ms, 20):
        rec.append_heard(loud if any(a <= t < b for a, b in agent_spans_ms) else b"\xff" * 160)
    rec.clears.extend(clears)
    return rec


def test_turn_metrics_follow_the_media_clock() -> None:
    """Latency, barge-in yield, talk-over and the 'agent still talking' flag come from heard audio."""
    rec = record_with([(0, 600), (1500, 2400), (3300, 4000)], 5000, clears=[2100.0])
    assert rec.agent_speech_segments == [SpeechSegment(0, 600), SpeechSegment(1500, 2400), SpeechSegment(3300, 4000)]
    timings = [
        TurnTiming(0, "wait", utterance=SpeechSegment(800, 1200)),
        TurnTiming(1, "barge_in", utterance=SpeechSegment(2000, 3000)),
        TurnTiming(2, "barge_in", utterance=SpeechSegment(4500, 4800)),
    ]
    first, barge, missed = turn_results(rec, timings)
    assert first.response_latency_ms == 300 and first.talk_over_ms == 0 and not first.agent_talking_at_end
    assert barge.barge_in_yield_ms == 400 and barge.barge_in_cleared and barge.talk_over_ms == 400
    assert barge.response_latency_ms == 300
    assert missed.barge_in_missed and missed.barge_in_yield_ms is None and missed.response_latency_ms is None


def test_stats_are_linear_percentiles() -> None:
    """p50/p95/p99/max over 1..100 are the interpolated percentiles; an empty list gives n=0 and None."""
    values = [float(v) for v in range(1, 101)]
    result = stats(values)
    assert (result.n, result.p50, result.max) == (100, 50.5, 100.0)
    assert result.p95 == pytest.approx(95.05)
    assert stats([]).p50 is None


def synthetic_result(tmp_path: Path) -> LoadTestResult:
    """A finished run of three calls (one failed), built without any network."""
    scenario = Scenario("s", tmp_path / "s.wav", None, 1000.0, ())
    calls = []
    for i in range(3):
        turns = [
            TurnResult(0, "wait", "", 100.0, 700.0, 1.0 + i, 400.0 + 50 * i, False, None, False, False, 0.0, 0, 0.0),
            TurnResult(1, "barge_in", "", 1500.0, 2200.0, 2.5 + i, 350.0, False, 120.0, False, True, 120.0, 1, 40.0),
        ]
        calls.append(
            CallResult(
                index=i,
                scenario="s",
                call_sid=f"CA{i}",
                seed=i,
                started_s=float(i),
                ended_s=i + 4.0,
                ok=i != 2,
                end="caller_hangup" if i != 2 else "gateway_closed",
                failure=None if i != 2 else "the gateway closed the call (code 1011) after 1 of 2 turns",
                close_code=1000 if i != 2 else 1011,
                setup=SetupTimes(5.0, 6.0, 300.0),
                turns=turns,
                media_ms=4000.0,
                underruns=i,
                caller_speech=[(100.0, 700.0), (1500.0, 2200.0)],
                agent_speech=[(0.0, 90.0), (1100.0, 1620.0)],
            )
        )
    config = LoadTestConfig(target="https://voice.example.com", scenarios=(scenario,), calls=3, concurrency=2)
    return LoadTestResult(config, calls, 7.0, [(0.0, 0), (0.0, 1), (1.0, 2), (4.0, 1), (7.0, 0)])


def test_html_report_is_self_contained_with_svg_charts(tmp_path: Path) -> None:
    """The HTML page loads nothing from elsewhere (no scripts, stylesheets or remote URLs) and draws its
    charts as inline SVG."""
    page = render_html(synthetic_result(tmp_path))
    assert page.startswith("<!doctype html>")
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?://", page)
    assert not re.search(r"url\(\s*[\"']?https?://", page)
    assert page.count("<svg") >= 5
    for title in ("Response latency", "Barge-in yield", "active calls", "Underruns per call", "Who spoke when"):
        assert title in page
    assert page.count("<circle") == 6  # one point per measured latency
    assert "code 1011" in page  # the failed call is listed with its reason


def test_summary_table_and_json_report_list_every_call(tmp_path: Path) -> None:
    """The summary table shows counts, ends and percentiles; the JSON report keeps every call and turn."""
    result = synthetic_result(tmp_path)
    table = summary_table(result)
    assert "3 calls: 2 ok, 1 failed" in table
    assert "caller hung up × 2" in table and "gateway closed (1011) × 1" in table
    latency_row = next(line for line in table.splitlines() if line.startswith("response latency"))
    assert latency_row.split()[3:] == ["6", "375", "488", "498", "500"]  # 350 ×3, 400, 450, 500
    report = report_dict(result)
    assert report["calls_failed"] == 1 and len(report["calls"]) == 3
    assert report["summary"]["barge_in_yield_ms"]["n"] == 3
    assert report["calls"][1]["turns"][1]["barge_in_yield_ms"] == 120.0


CHEAP_AGENT_SCENARIO = """
agent_silence_ms = 600
hangup_after_last_turn_ms = 1000
[[turn]]
wait_for_agent = true
[[turn]]
barge_in_after_ms = 300
[[turn]]
wait_for_agent = true
"""


async def test_load_against_the_built_in_agent_in_cheap_mode(tmp_path: Path) -> None:
    """Ten concurrent calls against the gateway and the EVI-compatible agent (cheap mode): every call is
    answered, every barge-in is yielded to (the agent interrupts itself and the gateway clears), nothing lost."""
    from gateway.simulator.agent import AgentConfig
    from gateway.simulator.agent_script import parse_agent_script

    script = parse_agent_script(
        '[agent]\ngreeting = "Hello there."\n'
        'fallback = "This answer is deliberately long, so that the caller has time to talk over it. '
        'It goes on for a while, sentence after sentence, until somebody interrupts."\n',
        "load-test script",
    )
    folder = tmp_path / "agent"
    folder.mkdir()
    write_wav(folder / "caller.wav", speech_then_silence([700, 1600, 600], 700, 8000), 8000)
    (folder / "caller.toml").write_text(CHEAP_AGENT_SCENARIO)
    agent = AgentConfig(script=script, cheap=True, inactivity_timeout_s=None, realtime_factor=0.5)
    async with (
        EviSimulator(agent_config=agent, max_sessions=16) as sim,
        running_gateway(sim.url, max_concurrent_calls=16) as gateway,
    ):
        config = LoadTestConfig(
            target=gateway.base_url,
            scenarios=tuple(load_folder(folder)),
            auth_token=gateway.auth_token,
            calls=10,
            concurrency=10,
            max_call_s=40,
        )
        result = await run_loadtest(config)
        interruptions = sum(s.sent_counts.get("user_interruption", 0) for s in sim.sessions)
    assert [call.ok for call in result.calls] == [True] * 10, [(c.end, c.failure) for c in result.calls]
    for call in result.calls:
        assert call.frames_dropped == 0 and call.protocol_violations == []
        assert call.turns[0].response_latency_ms is not None
        barge_in = call.turns[1]
        assert not barge_in.barge_in_missed and barge_in.barge_in_cleared
        assert barge_in.barge_in_yield_ms is not None and 0 < barge_in.barge_in_yield_ms < 3000
    assert interruptions == 10
