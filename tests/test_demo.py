"""`gateway demo` as a test, and speech carried through the gateway as well as fed to the agent directly."""

from __future__ import annotations

import json
import logging
import re
import sys
import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest

from gateway.cli import main as cli_main
from gateway.codecs.g711 import ulaw_to_pcm16
from gateway.simulator import demo
from gateway.simulator.agent_script import load_agent_script
from gateway.simulator.demo import DemoLine, demo_lines, run_demo
from gateway.simulator.make_demo_audio import DEMO_CALLER_DIR
from gateway.simulator.recording import load_recording
from gateway.simulator.vad import SpeechEnded, TurnDetector, TurnParams
from gateway.simulator.voice import make_recognizer

pytest.importorskip("pocketsphinx", reason="the 'voice' extra gives the agent real speech recognition")
pytest.importorskip("espeakng_loader", reason="the 'voice' extra gives the agent real speech")

MAX_WER_DIFFERENCE = 0.05  # issue: within 5 points of the recording fed to the recogniser directly


def _normalise(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalpha() or c.isspace()).split())


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ ", re.M)


def test_demo_call_greets_answers_yields_and_hangs_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`gateway demo`, shortened: every turn is answered, the story is cut off by barge-in with a clear, and the
    goodbye is heard in full before the gateway ends the call; stdout tells that story and holds no log lines,
    which go to demo.log; the WAV and JSONL outputs are written."""
    lines = [line for line in demo_lines() if not line.file.startswith("02")]
    monkeypatch.setattr(demo, "demo_lines", lambda: lines)
    terminal = logging.StreamHandler(sys.stderr)  # what `gateway`'s logging.basicConfig installs outside pytest
    terminal.setFormatter(logging.Formatter(demo.LOG_FORMAT))
    logging.getLogger().addHandler(terminal)
    try:
        assert cli_main(["demo", "--out", str(tmp_path)]) == 0
    finally:
        logging.getLogger().removeHandler(terminal)
    out, err = capfd.readouterr()
    assert "turn 4" in out and "barge-in: agent voice stopped" in out and "demo OK" in out
    assert str(tmp_path / "demo.log") in out
    assert LOG_LINE.search(out) is None and LOG_LINE.search(err) is None, (out, err)
    log = (tmp_path / "demo.log").read_text(encoding="utf-8")
    assert LOG_LINE.search(log) and " INFO gateway.call " in log
    events = [json.loads(line) for line in (tmp_path / "demo.jsonl").read_text(encoding="utf-8").splitlines()]
    turns = [e for e in events if e["event"] == "turn"]
    call = events[-1]
    assert call["problems"] == [] and [t["problems"] for t in turns] == [[], [], [], []]
    assert call["greeting"]
    latencies = [t["response_latency_ms"] for t in turns]
    assert all(latency is not None and 0 < latency < 5000 for latency in latencies)
    assert turns[2]["barge_in_yield_ms"] is not None and turns[1]["interrupted"]
    assert call["ended_by"] == "gateway"
    goodbye = turns[-1]["agent_answered"]
    assert goodbye and "goodbye" in goodbye.lower()
    assert call["goodbye_heard_ms"] is not None and call["goodbye_heard_ms"] > 1000
    with wave.open(str(tmp_path / "demo.wav")) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    assert np.abs(frames[:, 0]).max() > 1000 and np.abs(frames[:, 1]).max() > 1000
    assert call["ok"] is True


def _direct_transcripts(lines: list[DemoLine]) -> list[str]:
    """What the agent's recogniser makes of each bundled clip fed to it directly, cut by the same detector."""
    recognizer = make_recognizer("auto", phrases=load_agent_script().phrases)
    out = []
    for line in lines:
        pcm = ulaw_to_pcm16(load_recording(DEMO_CALLER_DIR / line.file)) + bytes(16000 * 2)
        detector = TurnDetector(TurnParams(), 8000)
        ended = [
            e for i in range(0, len(pcm), 320) for e in detector.push(pcm[i : i + 320]) if isinstance(e, SpeechEnded)
        ]
        out.append(" ".join(recognizer.transcribe(e.pcm16, 8000) for e in ended))
    return out


async def test_speech_through_the_gateway_is_recognised_as_well_as_direct() -> None:
    """The agent's recogniser gets the same words through caller → gateway → EVI as from the recordings
    directly: word error rates within 5 points."""
    lines = [DemoLine(line.file, line.text) for line in demo_lines() if not line.file.startswith("03")]
    result = await run_demo(lines=lines, log=lambda _line: None)
    assert result.problems == []
    reference = [_normalise(line.text) for line in lines]
    through_gateway = [_normalise(turn.agent_heard or "") for turn in result.turns]
    direct = [_normalise(text) for text in _direct_transcripts(lines)]
    wer_gateway = jiwer.wer(reference, through_gateway)
    wer_direct = jiwer.wer(reference, direct)
    assert abs(wer_gateway - wer_direct) <= MAX_WER_DIFFERENCE, (through_gateway, direct)
