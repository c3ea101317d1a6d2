"""Hostile and stalled peers through the served gateway (docs/operations.md §4): each budget and liveness bound
ends, at most, the one call it happens on — with its end reason in /metrics — while a canary call on the same
process keeps hearing its agent."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from gateway.adapters.media_socket import CallRunner
from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.codecs.wav import write_wav
from gateway.core.actions import SendUpstream
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.caller_dial import post_webhook, read_twiml
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.harness import RunningGateway, running_gateway, settle, still_open
from gateway.simulator.recording import CallRecord
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw
from gateway.wire.twilio_signature import sign_request

SPEECH_1S = pcm16_to_ulaw(speechlike_pcm16(1000, 8000, seed=4))


@asynccontextmanager
async def gateway_with(sim: EviSimulator, **settings: Any) -> AsyncIterator[RunningGateway]:
    """The gateway with some bounds changed; nothing may be left open after the test."""
    async with running_gateway(sim.url, **settings) as gw:
        yield gw
        assert await still_open(gw, sim, timeout_s=10) == []


def caller_config(gw: RunningGateway, *, talking: bool = True) -> CallerConfig:
    """A caller who talks for a second (or keeps quiet) and stays on the line."""
    audio = SPEECH_1S if talking else b""
    return CallerConfig(webhook_url=gw.webhook_url, auth_token=gw.auth_token, audio_ulaw=audio, hangup_after_ms=60_000)


async def live_session(caller: TwilioCaller, sim: EviSimulator, index: int) -> EviSession:
    """Dial and wait until the EVI session has its settings."""
    await caller.dial()
    session = await sim.wait_session(index)
    await session.wait_message("session_settings")
    return session


async def canary_hears(caller: TwilioCaller, session: EviSession) -> None:
    """The canary's agent says something and the canary hears all of it."""
    before_ms = caller.record.heard_audio_ms
    await session.wait_said(await session.say(speechlike_pcm16(400, 24000, seed=11), 24000))
    assert await caller.wait_for(lambda r: r.heard_audio_ms >= before_ms + 380, 5), "the canary stopped hearing"
    assert not caller.is_closed


def runner_of(gw: RunningGateway, call_sid: str) -> CallRunner:
    """The live call with this CallSid."""
    return next(r for r in gw.state.active_calls if r.call.call_sid == call_sid)


async def calls_ended(gw: RunningGateway) -> dict[str, float]:
    """``gateway_calls_total`` by end reason, read from /metrics."""
    async with aiohttp.ClientSession() as http, http.get(gw.base_url + "/metrics") as resp:
        text = await resp.text()
    return {
        sample.labels["end_reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "gateway_calls"
        for sample in family.samples
        if sample.name == "gateway_calls_total"
    }


def cut_responses(runner: CallRunner) -> int:
    """Responses of the call cut at a budget (docs/operations.md §4)."""
    outbound = runner.call.statistics(0).outbound
    assert outbound is not None
    return outbound.responses_cut_over_budget


def server_transport(session: EviSession) -> asyncio.Transport:
    """The simulator's end of a session's socket (to freeze it as a stuck EVI process would be)."""
    transport = session._ws._request.transport  # noqa: SLF001 - the test plays a frozen peer
    assert isinstance(transport, asyncio.Transport)
    return transport


def audio_output(response_id: str, pcm16: bytes, rate_hz: int = 24000) -> str:
    """One EVI ``audio_output`` holding ``pcm16`` as a whole WAV."""
    data = base64.b64encode(write_wav(pcm16, rate_hz)).decode("ascii")
    return evi.AudioOutput(id=response_id, index=0, data=data).to_json()


# ------------------------------------------------------------------------------------------ a raw caller


@dataclass
class RawStream:
    """A Media Stream socket dialled through the real webhook and driven frame by frame."""

    ws: ClientConnection
    call_sid: str
    stream_sid: str

    def media(self, chunk: int, payload: bytes = b"\xff" * 160) -> str:
        """A ``media`` frame ``chunk`` of this stream (20 ms apart on Twilio's clock)."""
        return tw.inbound_media_message(
            sequence_number=chunk + 2,
            stream_sid=self.stream_sid,
            chunk=chunk,
            timestamp_ms=20 * (chunk - 1),
            ulaw=payload,
        )


async def answer(gw: RunningGateway, call_sid: str) -> tuple[str, dict[str, str]]:
    """Twilio's part before the stream: POST the (signed) webhook; the stream URL and its parameters."""
    record = CallRecord(frame_ms=20)
    params = {"AccountSid": "AC" + "f" * 32, "CallSid": call_sid, "From": "+15550100009", "To": "+15550100002"}
    async with aiohttp.ClientSession() as http:
        twiml = await post_webhook(
            http, record, record.protocol_violations.append,
            webhook_url=gw.webhook_url, auth_token=gw.auth_token, params=params, timeout_s=5,
        )  # fmt: skip
    return read_twiml(twiml, gw.webhook_url, record, record.protocol_violations.append), record.custom_parameters


@asynccontextmanager
async def raw_stream(
    gw: RunningGateway,
    *,
    call_sid: str = "CA" + "d" * 32,
    answered: tuple[str, dict[str, str]] | None = None,
    receive_buffer_bytes: int | None = None,
) -> AsyncIterator[RawStream]:
    """Open the stream of a call the webhook ``answered`` (else answer it now), optionally with a tiny receive
    buffer (for a caller that stops reading), and send ``connected`` and ``start``."""
    url, parameters = answered if answered is not None else await answer(gw, call_sid)
    stream_sid = "MZ" + call_sid[2:]
    sock = socket.create_connection(("127.0.0.1", gw.port))
    if receive_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    headers = {"X-Twilio-Signature": sign_request(gw.auth_token, url, {})} if gw.auth_token else {}
    async with connect(url, sock=sock, additional_headers=headers, compression=None, max_queue=4) as ws:
        await ws.send(tw.connected_message())
        start = tw.start_message(
            sequence_number=1,
            stream_sid=stream_sid,
            account_sid="AC" + "f" * 32,
            call_sid=call_sid,
            custom_parameters=parameters,
        )
        await ws.send(start)
        yield RawStream(ws, call_sid, stream_sid)


async def closed_by_gateway(ws: ClientConnection, timeout_s: float) -> int | None:
    """Read until the gateway closes the socket; its close code."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in ws:
                pass
    except websockets.ConnectionClosed:
        pass
    return ws.close_code


# ------------------------------------------------------------------------------------------ EVI budgets


async def test_an_oversized_audio_output_is_not_decoded_and_the_call_goes_on() -> None:
    """An audio_output over max_audio_output_bytes is dropped unread and counted; the same call then hears its
    agent's next response, and the canary hears its own."""
    async with (
        EviSimulator() as sim,
        gateway_with(sim, max_audio_output_bytes=128 * 1024) as gw,
        TwilioCaller(caller_config(gw)) as victim,
        TwilioCaller(caller_config(gw)) as canary,
    ):
        session = await live_session(victim, sim, 0)
        other = await live_session(canary, sim, 1)
        await session.send_raw(audio_output("huge", speechlike_pcm16(4000, 24000, seed=1)))  # ~256 KB of base64
        assert await settle(
            lambda: (
                runner_of(gw, victim.config.call_sid).call.statistics(0).counts.get("upstream_messages_over_budget")
                == 1
            )
        )
        await canary_hears(canary, other)
        await canary_hears(victim, session)
        assert victim.record.heard_audio_ms < 1000, "the oversized message was played"
        await victim.hang_up()
        await canary.hang_up()


async def test_endless_agent_audio_is_cut_at_the_playout_bound() -> None:
    """An agent pushing far more audio than playout_max_queued_ms has its response cut: the caller hears about
    the bound, not the flood; the call goes on and the canary keeps hearing its agent."""
    async with (
        EviSimulator() as sim,
        gateway_with(sim, playout_max_queued_ms=1000) as gw,
        TwilioCaller(caller_config(gw)) as victim,
        TwilioCaller(caller_config(gw)) as canary,
    ):
        session = await live_session(victim, sim, 0)
        other = await live_session(canary, sim, 1)
        for index in range(20):  # 20 s of audio of one response, as fast as the socket takes it
            chunk = write_wav(speechlike_pcm16(1000, 24000, seed=index), 24000)
            await session.send_raw(
                evi.AudioOutput(id="flood", index=index, data=base64.b64encode(chunk).decode()).to_json()
            )
        await session.send_raw(evi.AssistantEnd().to_json())
        runner = runner_of(gw, victim.config.call_sid)
        assert await settle(lambda: cut_responses(runner) == 1)
        await canary_hears(canary, other)
        await asyncio.sleep(2.0)
        assert victim.record.heard_audio_ms < 2500, "more than the bound was played"
        assert not victim.is_closed
        await victim.hang_up()
        await canary.hang_up()


# ------------------------------------------------------------------------------------------ caller budgets


async def test_a_caller_flooding_frames_ends_only_its_call() -> None:
    """Caller audio far faster than real time is refused beyond the burst and, past the flood limit, that stream
    is closed with 1008 and end reason twilio_flood; the canary goes on."""
    async with EviSimulator() as sim, gateway_with(sim) as gw, TwilioCaller(caller_config(gw)) as canary:
        other = await live_session(canary, sim, 0)
        async with raw_stream(gw) as raw:
            await sim.wait_session(1)
            for chunk in range(1, 1000):  # 20 s of audio at once
                await raw.ws.send(raw.media(chunk, b"\x10" * 160))
            assert await closed_by_gateway(raw.ws, 5) == 1008
        assert (await calls_ended(gw)).get("twilio_flood") == 1
        await canary_hears(canary, other)
        await canary.hang_up()


async def test_a_silent_caller_is_ended_after_the_silence_bound() -> None:
    """A stream that sends start and then no media is ended after caller_silence_timeout_s (twilio_silent), and
    its EVI session is closed."""
    async with EviSimulator() as sim, gateway_with(sim, caller_silence_timeout_s=1.0) as gw:
        async with raw_stream(gw) as raw:
            session = await sim.wait_session(0)
            assert await closed_by_gateway(raw.ws, 5) == 1000
        await asyncio.wait_for(session.closed.wait(), 5)
        assert (await calls_ended(gw)).get("twilio_silent") == 1


async def test_a_caller_that_stops_reading_is_cut_loose() -> None:
    """A caller that keeps sending media but never reads echoes no marks: once the echoes are mark_echo_timeout_s
    behind playback its socket is aborted (twilio_stalled), its slot is freed, and the canary goes on."""
    async with (
        EviSimulator() as sim,
        gateway_with(sim, mark_echo_timeout_s=2.0) as gw,
        TwilioCaller(caller_config(gw, talking=False)) as canary,
    ):
        other = await live_session(canary, sim, 0)
        async with raw_stream(gw, receive_buffer_bytes=2048) as raw:
            session = await sim.wait_session(1)
            await session.wait_message("session_settings")
            raw.ws.transport.pause_reading()
            await session.say(speechlike_pcm16(60_000, 24000, seed=3), 24000)

            async def keep_talking() -> None:
                for chunk in range(1, 3000):
                    await raw.ws.send(raw.media(chunk))
                    await asyncio.sleep(0.02)

            talker = asyncio.create_task(keep_talking())
            try:
                assert await settle(lambda: (gw.state.live_calls, len(gw.state.active_calls)) == (1, 1), 10)
            finally:
                talker.cancel()
        assert (await calls_ended(gw)).get("twilio_stalled") == 1
        await canary_hears(canary, other)
        await canary.hang_up()


async def test_a_caller_answering_pings_stays_and_the_gateway_answers_its_pings() -> None:
    """The Media Stream keepalive pings every twilio_heartbeat_s; a caller that answers (as RFC 6455 §5.5.2 asks)
    keeps its call, and a ping from the caller is answered with a pong."""
    async with EviSimulator() as sim, gateway_with(sim, twilio_heartbeat_s=0.3) as gw, raw_stream(gw) as raw:
        await (await sim.wait_session(0)).wait_message("session_settings")
        runner = runner_of(gw, raw.call_sid)
        for chunk in range(1, 101):  # 2 s of media
            await raw.ws.send(raw.media(chunk))
            await asyncio.sleep(0.02)
        assert runner.twilio_pings_sent >= 4
        await asyncio.wait_for(await raw.ws.ping(b"caller"), 2)
        assert runner in gw.state.active_calls and runner.call.end_reason is None
        stop = tw.stop_message(
            sequence_number=200, stream_sid=raw.stream_sid, account_sid="AC" + "f" * 32, call_sid=raw.call_sid
        )
        await raw.ws.send(stop)
        assert await closed_by_gateway(raw.ws, 5) == 1000


async def test_a_caller_whose_socket_answers_no_ping_is_cut_off() -> None:
    """A peer that keeps sending media but reads nothing (so answers no ping: a half-dead socket) loses its socket
    once a ping's pong is half an interval late; the call ends (twilio_closed) and its slot is freed."""
    async with EviSimulator() as sim, gateway_with(sim, twilio_heartbeat_s=0.5) as gw:
        async with raw_stream(gw) as raw:
            await (await sim.wait_session(0)).wait_message("session_settings")
            raw.ws.transport.pause_reading()

            async def keep_talking() -> None:
                for chunk in range(1, 500):
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await raw.ws.send(raw.media(chunk))
                    await asyncio.sleep(0.02)

            talker = asyncio.create_task(keep_talking())
            try:
                assert await settle(lambda: gw.state.live_calls == 0 and not gw.state.active_calls, 5)
            finally:
                talker.cancel()
        assert (await calls_ended(gw)).get("twilio_closed") == 1


async def test_sockets_that_never_send_start_hold_no_call_slot() -> None:
    """Sockets that open and send nothing do not keep a real call out of the gateway's one slot: the call is
    admitted, the idle sockets are closed after start_timeout_s (1008), and past max_pending_streams more
    sockets are refused at the upgrade (503)."""
    async with EviSimulator() as sim, gateway_with(sim, max_concurrent_calls=1, max_pending_streams=3) as gw:
        assert gw.auth_token is not None
        signature = {"X-Twilio-Signature": sign_request(gw.auth_token, gw.media_url, {})}
        async with aiohttp.ClientSession() as http, TwilioCaller(caller_config(gw)) as caller:
            idle = [await http.ws_connect(gw.media_url, headers=signature) for _ in range(2)]
            session = await live_session(caller, sim, 0)  # two idle sockets did not take the one slot
            await canary_hears(caller, session)
            await caller.hang_up()
            assert await settle(lambda: gw.state.live_calls == 0)
            idle.append(await http.ws_connect(gw.media_url, headers=signature))
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(gw.media_url, headers=signature)
            assert refused.value.status == 503  # the fourth waiting socket: past max_pending_streams
            closes = [await ws.receive(timeout=10) for ws in idle]
            assert [m.type for m in closes] == [aiohttp.WSMsgType.CLOSE] * 3
            assert all(ws.close_code == 1008 for ws in idle)
            for ws in idle:
                await ws.close()
        assert (await calls_ended(gw)).get("start_timeout") == 3


async def test_a_start_cannot_take_a_slot_reserved_for_another_call() -> None:
    """Slots belong to calls: with one slot live and the other reserved for a call the webhook answered, a stream
    for any other call is closed at its start with 1013 (end reason capacity), and the answered call's stream
    then takes its slot and talks to its agent. (Insecure mode, so that the stray start has no token to fail.)"""
    async with EviSimulator() as sim, gateway_with(sim, auth_token=None, max_concurrent_calls=2) as gw:
        async with TwilioCaller(caller_config(gw)) as first:
            session = await live_session(first, sim, 0)
            answered = await answer(gw, "CA" + "1" * 32)
            async with raw_stream(gw, call_sid="CA" + "2" * 32, answered=answered) as stray:
                assert await closed_by_gateway(stray.ws, 5) == 1013
            async with raw_stream(gw, call_sid="CA" + "1" * 32, answered=answered):
                assert await settle(lambda: gw.state.live_calls == 2)
                await (await sim.wait_session(1)).wait_message("session_settings")
            await canary_hears(first, session)
            await first.hang_up()
        assert (await calls_ended(gw)).get("capacity") == 1


# ------------------------------------------------------------------------------------------ EVI liveness


async def test_an_evi_that_says_nothing_while_the_caller_talks_is_resumed() -> None:
    """An EVI session that sends nothing at all for upstream_stall_timeout_s while the caller speaks is treated as
    dropped: the gateway closes it (1011) and resumes its chat group on a new session; the canary goes on."""
    async with (
        EviSimulator() as sim,
        gateway_with(sim, upstream_stall_timeout_s=2.0) as gw,
        TwilioCaller(caller_config(gw, talking=False)) as canary,
    ):
        other = await live_session(canary, sim, 0)
        async with TwilioCaller(caller_config(gw)) as victim:
            stalled = await live_session(victim, sim, 1)
            resumed = await sim.wait_session(2, timeout_s=10)
            await resumed.wait_message("session_settings")
            assert resumed.query.get("resumed_chat_group_id") == stalled.chat_group_id
            assert stalled.close_code == 1011
            await canary_hears(victim, resumed)
            await victim.hang_up()
        await canary_hears(canary, other)
        await canary.hang_up()


async def test_a_frozen_evi_is_noticed_by_its_missed_pongs_and_resumed() -> None:
    """An EVI process that freezes (socket open, nothing read or answered) misses the keepalive's pong and is
    dropped within ping interval + timeout, then resumed; the caller hears the resumed agent."""
    async with (
        EviSimulator() as sim,
        gateway_with(sim, evi_ping_interval_s=0.5, evi_ping_timeout_s=0.5) as gw,
        TwilioCaller(caller_config(gw, talking=False)) as caller,
    ):
        frozen = await live_session(caller, sim, 0)
        server_transport(frozen).pause_reading()
        resumed = await sim.wait_session(1, timeout_s=10)
        await resumed.wait_message("session_settings")
        await canary_hears(caller, resumed)
        await caller.hang_up()
        frozen.drop()  # the frozen peer's own end goes too (it never reads again)


async def test_an_evi_that_stops_reading_cannot_hold_the_call_after_stop() -> None:
    """With EVI not reading and our writes to it backed up, the caller's stop still ends the call within the send
    bound: the socket is aborted, the slot freed, and nothing is left running."""
    async with (
        EviSimulator() as sim,
        gateway_with(sim, send_timeout_s=3.0, evi_ping_interval_s=60.0, upstream_stall_timeout_s=60.0) as gw,
        TwilioCaller(caller_config(gw)) as caller,
    ):
        session = await live_session(caller, sim, 0)
        transport = server_transport(session)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        transport.pause_reading()
        runner = runner_of(gw, caller.config.call_sid)

        async def backed_up() -> bool:
            # Frames as large as tool answers, until our writes to EVI stop going out and queue up.
            for _ in range(400):
                runner.execute([SendUpstream('{"type":"tool_response","content":"' + "x" * 60_000 + '"}')])
                await asyncio.sleep(0.01)
                if runner.upstream_queued_bytes > 256 * 1024:
                    return True
            return False

        assert await backed_up(), "the writes to the frozen EVI never backed up"
        loop = asyncio.get_running_loop()
        stopped_s = loop.time()
        await caller.hang_up()
        assert await settle(lambda: not gw.state.active_calls and gw.state.live_calls == 0, 15)
        assert loop.time() - stopped_s < 3.0 + 2.0 + 5.0  # the send bound, the close bound, slack for the loop
        session.drop()  # the frozen peer's own end goes too (it would never read our close)
