"""Call recordings and the post-call webhook through real sockets: the gateway, the EVI simulator, the caller
emulator and a webhook receiver, all on loopback (docs/recordings.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
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
from gateway.simulator.caller import CallerConfig, NetworkTrouble, TwilioCaller
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway, settle
from gateway.simulator.tool_server import ToolBehaviour, ToolServer
from gateway.simulator.twilio_rest import FakeTwilioRest
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.testing import user_final
from gateway.wire import evi_messages as evi
from gateway.wire.tool_http import verify

SECRET = b"post-call-secret"
ACCOUNT_SID = "AC" + "b" * 32
FRAME_SAMPLES = 8 * FRAME_MS


@asynccontextmanager
async def recording_gateway(
    sim: EviSimulator, folder: Path, *, record: bool = True, numbers: str = "", **kw: Any
) -> AsyncIterator[RunningGateway]:
    """The gateway with a numbers file whose default line has ``record`` as given (plus ``numbers``)."""
    path = folder / "numbers.toml"
    path.write_text(f"[default]\nrecord = {'true' if record else 'false'}\n{numbers}", encoding="utf-8")
    kw.setdefault("recordings_dir", str(folder / "rec"))
    async with running_gateway(sim.url, numbers_file=str(path), **kw) as gw:
        yield gw


def caller_config(gw: RunningGateway, network: NetworkTrouble | None = None) -> CallerConfig:
    audio = pcm16_to_ulaw(speechlike_pcm16(1000, 8000, seed=21))
    return CallerConfig(
        webhook_url=gw.webhook_url,
        auth_token=gw.auth_token,
        audio_ulaw=audio,
        hangup_after_ms=60_000,
        account_sid=ACCOUNT_SID,
        network=network or NetworkTrouble(),
    )


async def connected(caller: TwilioCaller, sim: EviSimulator) -> EviSession:
    await caller.dial()
    session = await sim.wait_session()
    await session.wait_message("session_settings")
    return session


def pcm(ulaw: bytes | bytearray) -> np.ndarray:
    return np.frombuffer(ulaw_to_pcm16(bytes(ulaw)), "<i2").astype(np.int32)


def stereo(path: Path) -> tuple[np.ndarray, np.ndarray]:
    wave = parse_riff(path.read_bytes())
    assert (wave.channels, wave.rate_hz, wave.bits) == (2, 8000, 16)
    both = np.frombuffer(wave.data, "<i2").reshape(-1, 2).astype(np.int32)
    return both[:, 0], both[:, 1]


def span(signal: np.ndarray) -> tuple[int, int]:
    """First and one-past-last non-zero sample."""
    loud = np.flatnonzero(signal)
    assert loud.size, "no audio at all"
    return int(loud[0]), int(loud[-1]) + 1


def assert_same_audio_within_a_frame(heard: np.ndarray, right: np.ndarray) -> None:
    """The right channel's agent audio starts within one frame of where the caller heard it, is sample for sample
    what the caller heard over the stretch both have, and differs in length by at most one frame."""
    h0, h1 = span(heard)
    r0, r1 = span(right)
    assert abs(r0 - h0) <= FRAME_SAMPLES, (r0, h0)
    n = min(h1 - h0, r1 - r0)
    assert np.array_equal(right[r0 : r0 + n], heard[h0 : h0 + n])
    assert abs((r1 - r0) - (h1 - h0)) <= FRAME_SAMPLES, (r1 - r0, h1 - h0)


def transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def count(gw: RunningGateway, name: str) -> int:
    recordings = gw.state.recordings
    assert recordings is not None
    return int(getattr(recordings, name))


def files_exist(*paths: str | Path) -> bool:
    return all(Path(p).is_file() for p in paths)


def listing(folder: Path) -> list[str]:
    """The names in ``folder`` (none if it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def only_wav(folder: Path) -> Path:
    (wav,) = folder.glob("*.wav")
    return wav


async def test_the_right_channel_is_what_the_caller_heard(evi_sim: EviSimulator, tmp_path: Path) -> None:
    """The WAV's right channel is, sample for sample, the audio the caller emulator played, placed on its media
    clock within one 20 ms frame; the JSONL has the agent's two sentences heard in full."""
    async with recording_gateway(evi_sim, tmp_path) as gw:
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.say(speechlike_pcm16(700, 24000, seed=4), 24000, text="Hello.", end_turn=False)
            await session.wait_said(await session.say(speechlike_pcm16(800, 24000, seed=5), 24000, text="Welcome."))
            assert await caller.wait_for(lambda r: r.heard_audio_ms >= 1500 - FRAME_MS, 10)
            await caller.wait_media_ms(caller.media_time_ms + 300, 5)
            await caller.hang_up()
        assert await settle(lambda: count(gw, "recordings_written") == 1, 5)
    wav = only_wav(tmp_path / "rec")
    assert wav.name == f"{caller.config.call_sid}.wav"
    _left, right = stereo(wav)
    assert_same_audio_within_a_frame(pcm(caller.record.heard_ulaw), right)
    agent = [e for e in transcript(wav.with_suffix(".jsonl")) if e["role"] == "agent"]
    assert [(e["text"], e["heard"]) for e in agent] == [("Hello.", "heard"), ("Welcome.", "heard")]
    assert abs(agent[0]["heard_ms"] - 700) <= FRAME_MS and abs(agent[1]["heard_ms"] - 800) <= FRAME_MS
    assert count(gw, "recording_failures") == 0


async def test_after_a_barge_in_the_cut_audio_is_absent_and_the_turn_is_marked_cut(
    evi_sim: EviSimulator, tmp_path: Path
) -> None:
    """Audio the barge-in's clear flushed is not in the right channel, which holds exactly what the caller heard;
    the sentence playing at the barge-in and the one queued behind it are marked cut, at the barge-in."""
    async with recording_gateway(evi_sim, tmp_path) as gw:
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.say(speechlike_pcm16(2000, 24000, seed=6), 24000, text="A long first part.", end_turn=False)
            await session.say(speechlike_pcm16(2000, 24000, seed=7), 24000, text="And a second one.")
            assert await caller.wait_for(lambda r: r.heard_audio_ms >= 700, 10)
            await session.interrupt()
            assert await caller.wait_for(lambda r: len(r.clears) == 1, 5)
            await caller.wait_media_ms(caller.media_time_ms + 500, 5)
            await caller.hang_up()
        assert await settle(lambda: count(gw, "recordings_written") == 1, 5)
    record = caller.record
    assert record.cleared_audio_ms > 0  # the gateway had sent audio that was never played
    wav = only_wav(tmp_path / "rec")
    _left, right = stereo(wav)
    assert_same_audio_within_a_frame(pcm(record.heard_ulaw), right)
    clear_sample = int(record.clears[0] * 8)
    assert not right[clear_sample + FRAME_SAMPLES :].any()
    entries = transcript(wav.with_suffix(".jsonl"))
    agent = [e for e in entries if e["role"] == "agent"]
    assert [(e["text"], e["heard"]) for e in agent] == [("A long first part.", "cut"), ("And a second one.", "cut")]
    assert 0 < agent[0]["heard_ms"] <= record.heard_audio_ms and agent[1]["heard_ms"] == 0
    assert abs(agent[0]["cut_at_ms"] - record.clears[0]) <= 2 * FRAME_MS
    assert [e["text"] for e in entries if e["role"] == "event"] == ["caller interrupted"]


async def test_the_left_channel_is_the_caller_at_its_timestamps(evi_sim: EviSimulator, tmp_path: Path) -> None:
    """Every caller frame the gateway received sits at its media timestamp; frames lost on the way stay silent."""
    network = NetworkTrouble(drop_every_n=10, drop_run=2)
    async with recording_gateway(evi_sim, tmp_path) as gw:
        async with TwilioCaller(caller_config(gw, network)) as caller:
            await connected(caller, evi_sim)
            assert await caller.wait_media_ms(1200, 5)
            await caller.hang_up()
        assert await settle(lambda: count(gw, "recordings_written") == 1, 5)
    left, right = stereo(only_wav(tmp_path / "rec"))
    expected = pcm(caller.record.sent_ulaw)
    for dropped_ms in caller.record.dropped_frames_ms:
        expected[dropped_ms * 8 : dropped_ms * 8 + FRAME_SAMPLES] = 0
    assert len(caller.record.dropped_frames_ms) >= 10
    assert np.array_equal(left[: len(expected)], expected[: len(left)])
    assert len(left) >= len(expected) - FRAME_SAMPLES
    assert not right.any()


async def test_a_line_without_record_writes_nothing_but_its_summary_goes_out(
    evi_sim: EviSimulator, tmp_path: Path
) -> None:
    """With ``record = false`` no file is written although GATEWAY_RECORDINGS_DIR is set; the post-call summary
    is still sent, with no recording in it."""
    async with (
        ToolServer(SECRET, {"post_call": ToolBehaviour()}) as hooks,
        recording_gateway(
            evi_sim, tmp_path, record=False, post_call_url=hooks.url("post_call"), tool_signing_secret=SECRET.decode()
        ) as gw,
    ):
        async with TwilioCaller(caller_config(gw)) as caller:
            session = await connected(caller, evi_sim)
            await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=8), 24000))
            await caller.hang_up()
        assert await settle(lambda: count(gw, "post_call_sent") == 1, 5)
    assert listing(tmp_path / "rec") == []
    assert count(gw, "recordings_written") == 0 and count(gw, "recording_failures") == 0
    (received,) = hooks.calls
    assert received.signature_ok and received.body["recording"] is None


async def test_an_unwritable_dir_and_a_refusing_webhook_are_logged_counted_and_harmless(
    evi_sim: EviSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A recordings dir that cannot be created and a post-call URL answering 500 are logged and counted (also on
    /metrics); the call itself goes on as usual and the caller hears the agent."""
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
            await session.wait_said(await session.say(speechlike_pcm16(600, 24000, seed=9), 24000))
            assert await caller.wait_for(lambda r: r.heard_audio_ms >= 600 - FRAME_MS, 10)
            await caller.hang_up()
        assert await settle(lambda: count(gw, "post_call_failures") == 1, 8)
        assert count(gw, "recording_failures") == 1
        assert count(gw, "recordings_written") == 0 and count(gw, "post_call_sent") == 0
        async with aiohttp.ClientSession() as http, http.get(gw.base_url + "/metrics") as resp:
            page = await resp.text()
    assert caller.record.protocol_violations == [] and caller.record.closed_by == "caller"
    assert "gateway_recording_failures_total 1.0" in page and "gateway_post_call_failures_total 1.0" in page
    assert "recording not written" in caplog.text and "refused: HTTP 500" in caplog.text
    assert len(hooks.calls) == 1


async def test_a_webhook_that_never_answers_times_out_logged_and_counted(
    evi_sim: EviSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A post-call URL that accepts the connection and never answers is given up after the timeout, logged and
    counted; the recording is written all the same and the call was not held up."""
    caplog.set_level(logging.INFO, logger="gateway.recordings")
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with recording_gateway(evi_sim, tmp_path, post_call_url=f"http://127.0.0.1:{port}/hook") as gw:
            recordings = gw.state.recordings
            assert recordings is not None
            recordings.post_call_timeout_s = 0.5
            async with TwilioCaller(caller_config(gw)) as caller:
                session = await connected(caller, evi_sim)
                await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=10), 24000))
                await caller.hang_up()
            assert await settle(lambda: count(gw, "post_call_failures") == 1, 5)
            assert count(gw, "recordings_written") == 1 and count(gw, "post_call_sent") == 0
            assert await settle(lambda: recordings.pending == 0, 5)  # the task ends just after it counts
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert held, "the webhook was never even tried"
    assert caller.record.protocol_violations == [] and caller.record.closed_by == "caller"
    assert "post-call webhook not delivered" in caplog.text


async def test_the_post_call_summary_is_signed_and_complete(evi_sim: EviSimulator, tmp_path: Path) -> None:
    """The summary carries the numbers, EVI's chat ids, the end reason, the turn latency, the tool calls with
    their outcome and the recording's paths; its signature verifies with tool_http.verify."""
    async with ToolServer(SECRET, {"post_call": ToolBehaviour(), "lookup_order": ToolBehaviour(status=500)}) as hooks:
        tool = f'[[tool]]\nname = "lookup_order"\nurl = "{hooks.url("lookup_order")}"\n'
        async with recording_gateway(
            evi_sim, tmp_path, numbers=tool, post_call_url=hooks.url("post_call"), tool_signing_secret=SECRET.decode()
        ) as gw:
            async with TwilioCaller(caller_config(gw)) as caller:
                session = await connected(caller, evi_sim)
                await session.send_message(user_final("where is my order"))
                await session.wait_said(await session.say(speechlike_pcm16(300, 24000, seed=11), 24000))
                assert await caller.wait_for(lambda r: r.heard_audio_ms >= 300 - FRAME_MS, 10)
                tool_call = evi.ToolCallMessage(
                    name="lookup_order",
                    parameters='{"order": 7}',
                    tool_call_id="t9",
                    response_required=True,
                    tool_type="function",
                )
                await session.send_message(tool_call)
                await session.wait_message("tool_error")
                await caller.hang_up()
            assert await settle(lambda: count(gw, "post_call_sent") == 1, 8)
    received = next(c for c in hooks.calls if c.name == "post_call")
    assert received.signature_ok
    raw = json.dumps(received.body, separators=(",", ":"), ensure_ascii=False).encode()
    assert verify(SECRET, received.headers, raw, time.time())
    body = received.body
    cfg = caller.config
    assert (body["event"], body["call_sid"], body["stream_sid"]) == ("call_ended", cfg.call_sid, cfg.stream_sid)
    assert (body["from"], body["to"]) == (cfg.from_number, cfg.to_number)
    assert (body["chat_id"], body["chat_group_id"]) == (session.chat_id, session.chat_group_id)
    assert body["end_reason"] == "twilio_stop"
    assert body["caller_turns"] == 1 and len(body["response_latencies_ms"]) == 1
    assert body["response_latencies_ms"][0] >= 0
    assert body["tool_calls"] == [
        {"name": "lookup_order", "tool_call_id": "t9", "parameters": {"order": 7}, "outcome": "http_500"}
    ]
    assert body["transfer"] is None
    assert files_exist(body["recording"]["wav"], body["recording"]["transcript"])
    assert abs(body["recording"]["heard_ms"] - caller.record.heard_audio_ms) <= FRAME_MS


async def test_the_summary_of_a_transferred_call_names_the_transfer(evi_sim: EviSimulator, tmp_path: Path) -> None:
    """After ``transfer_call`` the summary says where to and that the transfer started; the call ended as
    transferred."""
    async with (
        FakeTwilioRest(ACCOUNT_SID, "rest-token") as rest,
        ToolServer(SECRET, {"post_call": ToolBehaviour()}) as hooks,
        recording_gateway(
            evi_sim,
            tmp_path,
            numbers='[default.transfer]\nsales = "+15551230000"\n',
            post_call_url=hooks.url("post_call"),
            tool_signing_secret=SECRET.decode(),
            twilio_account_sid=ACCOUNT_SID,
            twilio_api_url=rest.url,
        ) as gw,
    ):
        rest.auth_token = gw.auth_token or ""
        async with TwilioCaller(caller_config(gw)) as caller:
            rest.add(caller)
            session = await connected(caller, evi_sim)
            transfer = evi.ToolCallMessage(
                name="transfer_call",
                parameters='{"destination": "sales"}',
                tool_call_id="x1",
                response_required=True,
                tool_type="function",
            )
            await session.send_message(transfer)
            await session.wait_message("tool_response", 5)
            await session.wait_said(await session.say(speechlike_pcm16(500, 24000, seed=12), 24000))
            assert await caller.wait_closed(10)
        assert await settle(lambda: count(gw, "post_call_sent") == 1, 8)
    (received,) = hooks.calls
    body = received.body
    assert body["end_reason"] == "transferred"
    assert body["transfer"] == {"destination": "sales", "started": 1, "failed": 0}
    assert [t["name"] for t in body["tool_calls"]] == ["transfer_call"]
