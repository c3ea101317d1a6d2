"""Call recordings and the post-call webhook through real sockets (docs/recordings.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from gateway.codecs.framing import FRAME_MS
from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.codecs.wav import parse_riff
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway, settle
from gateway.simulator.tool_server import ToolBehaviour, ToolServer
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import evi_messages as evi

SECRET = b"post-call-secret"
FRAME_SAMPLES = 8 * FRAME_MS


@asynccontextmanager
async def recording_gateway(
    sim: EviSimulator, folder: Path, *, record: bool = True, **kw: Any
) -> AsyncIterator[RunningGateway]:
    """The gateway with a numbers file whose default line has ``record`` as given."""
    numbers = folder / "numbers.toml"
    numbers.write_text(f"[default]\nrecord = {'true' if record else 'false'}\n")
    kw.setdefault("recordings_dir", str(folder / "rec"))
    async with running_gateway(sim.url, numbers_file=str(numbers), **kw) as gw:
        yield gw


def caller_config(gw: RunningGateway, audio_ms: int = 1000) -> CallerConfig:
    audio = pcm16_to_ulaw(speechlike_pcm16(audio_ms, 8000, seed=21))
    return CallerConfig(webhook_url=gw.webhook_url, auth_token=gw.auth_token, audio_ulaw=audio, hangup_after_ms=60_000)


async def connected(caller: TwilioCaller, sim: EviSimulator) -> EviSession:
    await caller.dial()
    session = await sim.wait_session()
    await session.wait_message("session_settings")
    return session


def stereo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    wave = parse_riff(path.read_bytes())
    assert (wave.channels, wave.rate_hz, wave.bits) == (2, 8000, 16)
    both = np.frombuffer(wave.data, "<i2").reshape(-1, 2).astype(np.float64)
    return both[:, 0], both[:, 1]


def best_shift_error(reference: np.ndarray, recorded: np.ndarray, max_lag: int = FRAME_SAMPLES) -> tuple[int, float]:
    """The lag (samples, |lag| ≤ one frame) at which ``recorded`` best matches ``reference``, and the relative
    error there (residual energy / reference energy)."""
    n = min(len(reference), len(recorded)) - 2 * max_lag
    ref = reference[max_lag : max_lag + n]
    best = (0, np.inf)
    for lag in range(-max_lag, max_lag + 1):
        rec = recorded[max_lag + lag : max_lag + lag + n]
        error = float(np.sum((ref - rec) ** 2) / max(np.sum(ref**2), 1.0))
        if error < best[1]:
            best = (lag, error)
    return best


def all_files(*paths: str) -> bool:
    return all(Path(p).is_file() for p in paths)


def transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def counter(gw: RunningGateway, name: str) -> int:
    recordings = gw.state.recordings
    assert recordings is not None
    return int(getattr(recordings, name))


async def test_right_channel_is_what_the_caller_heard_and_left_is_the_caller(
    evi_sim: EviSimulator, tmp_path: Path
) -> None:
    """The WAV's right channel matches the caller's played audio on its media clock (within one frame), the
    left channel is what the caller sent, and the transcript has the agent's turn marked heard."""
    async with recording_gateway(evi_sim, tmp_path) as gw:
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.wait_said(await session.say(speechlike_pcm16(1500, 24000, seed=4), 24000, text="Hello."))
            assert await caller.wait_for(lambda r: r.heard_audio_ms >= 1500 - FRAME_MS, 10)
            await caller.wait_media_ms(caller.media_time_ms + 300, 5)
            await caller.hang_up()
            sent = np.frombuffer(ulaw_to_pcm16(bytes(caller.record.sent_ulaw)), "<i2").astype(np.float64)
            heard = np.frombuffer(ulaw_to_pcm16(bytes(caller.record.heard_ulaw)), "<i2").astype(np.float64)
        assert await settle(lambda: counter(gw, "recordings_written") == 1, 5)
        wav = next((tmp_path / "rec").glob("*.wav"))
        left, right = stereo(wav)
        n = min(len(left), len(sent)) - FRAME_SAMPLES  # the last frames may not have reached the gateway
        assert np.array_equal(left[:n], sent[:n])
        lag, error = best_shift_error(heard, right)
        assert error < 0.01, (lag, error)
        assert abs(np.count_nonzero(right) - np.count_nonzero(heard)) <= 2 * FRAME_SAMPLES
        agent = [e for e in transcript(wav.with_suffix(".jsonl")) if e["role"] == "agent"]
        assert [(e["text"], e["heard"]) for e in agent] == [("Hello.", "heard")]
        assert counter(gw, "recording_failures") == 0


async def test_after_a_barge_in_the_cut_audio_is_absent_and_the_turn_is_marked_cut(
    evi_sim: EviSimulator, tmp_path: Path
) -> None:
    """Audio flushed by the barge-in's clear is not in the right channel; the JSONL marks the agent turn cut."""
    async with recording_gateway(evi_sim, tmp_path) as gw:
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.say(speechlike_pcm16(5000, 24000, seed=5), 24000, text="A long answer.")
            assert await caller.wait_for(lambda r: r.heard_audio_ms >= 500, 10)
            await session.interrupt()
            assert await caller.wait_for(lambda r: len(r.clears) == 1, 5)
            await caller.wait_media_ms(caller.media_time_ms + 500, 5)
            await caller.hang_up()
            heard = np.frombuffer(ulaw_to_pcm16(bytes(caller.record.heard_ulaw)), "<i2").astype(np.float64)
            heard_ms = caller.record.heard_audio_ms
            clear_ms = caller.record.clears[0]
        assert await settle(lambda: counter(gw, "recordings_written") == 1, 5)
        wav = next((tmp_path / "rec").glob("*.wav"))
        _left, right = stereo(wav)
        lag, error = best_shift_error(heard, right)
        assert error < 0.01, (lag, error)
        assert not right[int((clear_ms + 2 * FRAME_MS) * 8) :].any()
        assert abs(np.count_nonzero(right) / 8 - heard_ms) <= 2 * FRAME_MS
        entries = transcript(wav.with_suffix(".jsonl"))
        agent = [e for e in entries if e["role"] == "agent"]
        assert [(e["text"], e["heard"]) for e in agent] == [("A long answer.", "cut")]
        assert agent[0]["heard_ms"] < 5000 - 500
        assert any(e["role"] == "event" for e in entries)


async def test_a_line_without_record_writes_nothing(evi_sim: EviSimulator, tmp_path: Path) -> None:
    """With ``record = false`` no file is written even though GATEWAY_RECORDINGS_DIR is set."""
    async with recording_gateway(evi_sim, tmp_path, record=False) as gw:
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=6), 24000))
            await caller.hang_up()
        assert await settle(lambda: not gw.state.active_calls, 5)
        assert await settle(lambda: not gw.state.recordings or not gw.state.recordings._tasks, 5)
    assert not (tmp_path / "rec").exists() or list((tmp_path / "rec").iterdir()) == []
    assert counter(gw, "recordings_written") == 0 and counter(gw, "recording_failures") == 0


async def test_an_unwritable_dir_and_a_failing_webhook_are_logged_and_counted(
    evi_sim: EviSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A recordings dir that cannot be created and a post-call URL answering 500 are logged and counted; the
    call itself goes on as usual."""
    caplog.set_level(logging.INFO, logger="gateway.recordings")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    async with (
        ToolServer(SECRET, {"post_call": ToolBehaviour(status=500)}) as hooks,
        recording_gateway(
            evi_sim,
            tmp_path,
            recordings_dir=str(blocker / "rec"),
            post_call_url=hooks.url("post_call"),
            tool_signing_secret=SECRET.decode(),
        ) as gw,
    ):
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.wait_said(await session.say(speechlike_pcm16(600, 24000, seed=7), 24000))
            assert await caller.wait_for(lambda r: r.heard_audio_ms >= 600 - FRAME_MS, 10)
            await caller.hang_up()
            assert caller.record.protocol_violations == []
        assert await settle(lambda: counter(gw, "post_call_failures") == 1, 8)
        assert counter(gw, "recording_failures") == 1
        assert counter(gw, "recordings_written") == 0 and counter(gw, "post_call_sent") == 0
        async with aiohttp.ClientSession() as http, http.get(gw.base_url + "/metrics") as resp:
            page = await resp.text()
        assert "gateway_recording_failures_total 1.0" in page
        assert "gateway_post_call_failures_total 1.0" in page
    assert "not written" in caplog.text and "refused: HTTP 500" in caplog.text
    assert len(hooks.calls) == 1


async def test_the_post_call_summary_is_signed_and_complete(evi_sim: EviSimulator, tmp_path: Path) -> None:
    """The post-call webhook carries the numbers, EVI chat ids, end reason, tool calls and recording paths,
    and its signature verifies with tool_http.verify."""
    async with (
        ToolServer(SECRET, {"post_call": ToolBehaviour()}) as hooks,
        recording_gateway(
            evi_sim, tmp_path, post_call_url=hooks.url("post_call"), tool_signing_secret=SECRET.decode()
        ) as gw,
    ):
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=8), 24000))
            tool = evi.ToolCallMessage(
                name="lookup_order",
                parameters='{"order": 7}',
                tool_call_id="t9",
                response_required=True,
                tool_type="function",
            )
            await session.send_message(tool)
            await session.wait_message("tool_error")
            await caller.hang_up()
            call_sid = caller.record.webhook_params.get("CallSid")
        assert await settle(lambda: counter(gw, "post_call_sent") == 1, 8)
    (received,) = hooks.calls
    assert received.signature_ok
    body = received.body
    assert body["call_sid"] == call_sid
    assert body["from"] == caller.config.from_number and body["to"] == caller.config.to_number
    assert body["chat_id"] and body["chat_group_id"]
    assert body["end_reason"]
    assert body["tool_calls"] == [{"name": "lookup_order", "tool_call_id": "t9", "parameters": {"order": 7}}]
    assert body["transfer"] is None
    assert all_files(body["recording"]["wav"], body["recording"]["transcript"])
