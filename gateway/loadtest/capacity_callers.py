"""The light callers of `gateway bench capacity`: many emulated Twilio calls per process, each frame tagged
with its send time so the EVI-side sink can measure latency across processes (see relay.py for the tag).
What a caller hears is played through Twilio's playback model (gateway.simulator.twilio_playback)."""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import time
from typing import Any

import aiohttp

from gateway.codecs.framing import FRAME_MS
from gateway.errors import DialError
from gateway.loadtest.relay import (
    FILLER_B64,
    NS_PER_S,
    SEND_SLOTS,
    answer,
    command_lines,
    encode_tag,
)
from gateway.simulator.caller_dial import API_VERSION, open_stream, post_webhook, read_twiml
from gateway.simulator.recording import CallRecord
from gateway.simulator.twilio_playback import MarkEcho, TwilioPlayback
from gateway.wire.twilio_media import connected_message, mark_echo_message, start_message, stop_message

__all__ = ["run_callers", "tagged_media"]

# ----------------------------------------------------------------------------------------- the callers


def tagged_media(stream_sid: str, sequence: int, frame: int, call_index: int, sent_ns: int) -> str:
    """Twilio ``media`` for frame ``frame`` (0-based) whose payload carries the tag; same JSON as the builder."""
    payload = binascii.b2a_base64(encode_tag(call_index, frame, sent_ns), newline=False).decode("ascii")
    return (
        f'{{"event":"media","sequenceNumber":"{sequence}","streamSid":"{stream_sid}","media":{{"track":"inbound",'
        f'"chunk":"{frame + 1}","timestamp":"{frame * FRAME_MS}","payload":"{payload}{FILLER_B64}"}}}}'
    )


REPLY_GAP_NS = 500_000_000
"""Media after this long without any starts a new reply (the sink's replies are seconds apart)."""


class _Call:
    """One emulated Twilio call: sends tagged frames, plays what it hears at real time, echoes marks; counts the
    messages it receives and when each reply's first audio arrived, inside the window."""

    def __init__(
        self, index: int, ws: aiohttp.ClientWebSocketResponse, stream_sid: str, window_ns: tuple[int, int]
    ) -> None:
        self.index, self.ws, self.stream_sid, self.window_ns = index, ws, stream_sid, window_ns
        self.messages_window = 0
        self.reply_heard_ns: list[int] = []
        self._last_media_ns = 0
        self.sequence = 1
        self.frame = 0
        self.connected_ns = time.monotonic_ns()
        self.closed_ns: int | None = None
        self.sent_window = 0
        self.playback = TwilioPlayback(FRAME_MS)
        self.underruns = 0
        self.underrun_ms = 0.0
        self.heard_bytes_window = 0

    async def send(self, text: str) -> bool:
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        self.sequence += 1
        return True

    async def on_text(self, text: str) -> None:
        received_ns = time.monotonic_ns()
        msg = json.loads(text)
        event = msg.get("event")
        in_window = self.window_ns[0] <= received_ns < self.window_ns[1]
        self.messages_window += in_window
        if event == "media":
            if in_window and received_ns - self._last_media_ns > REPLY_GAP_NS:
                self.reply_heard_ns.append(received_ns)
            self._last_media_ns = received_ns
            self.playback.media(binascii.a2b_base64(msg["media"]["payload"]))
        elif event == "mark":
            await self._echo(self.playback.mark(msg["mark"]["name"]))
        elif event == "clear":
            await self._echo(self.playback.clear())

    async def _echo(self, echoes: list[MarkEcho]) -> None:
        for echo in echoes:
            await self.send(
                mark_echo_message(sequence_number=self.sequence, stream_sid=self.stream_sid, name=echo.name)
            )

    async def play_tick(self, in_window: bool) -> None:
        played = self.playback.play()
        if in_window:
            self.heard_bytes_window += played.audio_bytes
            if played.underrun and played.gap is not None:
                self.underruns += 1
                self.underrun_ms += played.gap.duration_ms
        await self._echo(played.echoes)


class _CallerRun:
    """One caller process's share of one run (command ``run`` from the coordinator)."""

    def __init__(self, command: dict[str, Any]) -> None:
        self.base_url: str = command["target"]
        self.auth_token: str = command["auth_token"]
        self.indices: list[int] = command["indices"]
        self.dial_at_ns: list[int] = command["dial_at_ns"]
        self.window = (int(command["window_start_ns"]), int(command["window_end_ns"]))
        self.hangup_ns = int(command["hangup_ns"])
        self.calls: list[_Call] = []
        self.slots: list[list[_Call]] = [[] for _ in range(SEND_SLOTS)]
        self.readers: list[asyncio.Task[None]] = []
        self.dial_errors: list[str] = []
        self.max_lag_s = 0.0

    async def run(self) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            pacer = asyncio.create_task(self._pace())
            await asyncio.gather(
                *(self._dial(session, i, at) for i, at in zip(self.indices, self.dial_at_ns, strict=True))
            )
            await pacer
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*(self._hang_up(call) for call in self.calls), return_exceptions=True)
            for reader in self.readers:
                reader.cancel()
            await asyncio.gather(*self.readers, return_exceptions=True)
        return self._stats()

    async def _dial(self, session: aiohttp.ClientSession, index: int, at_ns: int) -> None:
        await asyncio.sleep(max(0.0, (at_ns - time.monotonic_ns()) / NS_PER_S))
        record = CallRecord(frame_ms=FRAME_MS)
        notes: list[str] = []
        webhook_url = self.base_url + "/twilio/voice"
        call_sid, stream_sid, account_sid = (f"{p}{index:032x}" for p in ("CA", "MZ", "AC"))
        params = {
            "AccountSid": account_sid, "ApiVersion": API_VERSION, "CallSid": call_sid, "CallStatus": "ringing",
            "Direction": "inbound", "From": "+15550100001", "To": "+15550100002",
        }  # fmt: skip
        try:
            twiml = await post_webhook(
                session, record, notes.append, webhook_url=webhook_url, auth_token=self.auth_token,
                params=params, timeout_s=15,
            )  # fmt: skip
            url = read_twiml(twiml, webhook_url, record, notes.append)
            ws = await open_stream(session, url, auth_token=self.auth_token, timeout_s=15)
        except DialError as exc:
            self.dial_errors.append(str(exc))
            return
        call = _Call(index, ws, stream_sid, self.window)
        await ws.send_str(connected_message())  # twilio-media-streams.md §1.1: the one without a sequence number
        start = start_message(
            sequence_number=1, stream_sid=stream_sid, account_sid=account_sid, call_sid=call_sid,
            custom_parameters=record.custom_parameters,
        )  # fmt: skip
        await call.send(start)
        self.calls.append(call)
        self.slots[index % SEND_SLOTS].append(call)
        self.readers.append(asyncio.create_task(self._read(call)))

    async def _read(self, call: _Call) -> None:
        try:
            async for msg in call.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await call.on_text(msg.data)
        finally:
            if call.closed_ns is None:
                call.closed_ns = time.monotonic_ns()

    async def _pace(self) -> None:
        """Each call's frames go out every 20 ms in its own 1 ms slot (drift-free; late slots catch up)."""
        loop = asyncio.get_running_loop()
        slot_s = FRAME_MS / 1000 / SEND_SLOTS
        hangup_s = self.hangup_ns / NS_PER_S
        start_s = loop.time()
        k = 0
        while (due_s := start_s + k * slot_s) < hangup_s:
            if (delay_s := due_s - loop.time()) > 0:
                await asyncio.sleep(delay_s)
            self.max_lag_s = max(self.max_lag_s, loop.time() - due_s)
            for call in self.slots[k % SEND_SLOTS]:
                if call.closed_ns is None:
                    await self._tick(call)
            k += 1

    async def _tick(self, call: _Call) -> None:
        sent_ns = time.monotonic_ns()
        if not await call.send(tagged_media(call.stream_sid, call.sequence, call.frame, call.index, sent_ns)):
            return
        in_window = self.window[0] <= sent_ns < self.window[1]
        call.sent_window += in_window
        await call.play_tick(in_window)
        call.frame += 1

    async def _hang_up(self, call: _Call) -> None:
        if call.closed_ns is not None:
            return
        call.closed_ns = self.hangup_ns
        stop = stop_message(
            sequence_number=call.sequence, stream_sid=call.stream_sid, account_sid=f"AC{call.index:032x}",
            call_sid=f"CA{call.index:032x}",
        )  # fmt: skip
        await call.send(stop)
        await call.ws.close()

    def _stats(self) -> dict[str, Any]:
        start_ns, end_ns = self.window
        calls = self.calls
        return {
            "calls": len(self.indices),
            "connected": len(calls),
            "closed_early": sum(1 for c in calls if c.closed_ns is not None and c.closed_ns < end_ns),
            "call_s_window": sum(
                max(0, min(end_ns, c.closed_ns or end_ns) - max(start_ns, c.connected_ns)) for c in calls
            )
            / NS_PER_S,
            "frames_sent": sum(c.sent_window for c in calls),
            "underruns": sum(c.underruns for c in calls),
            "underrun_ms": sum(c.underrun_ms for c in calls),
            "heard_s": sum(c.heard_bytes_window for c in calls) / 8000,
            "messages": sum(c.messages_window for c in calls),
            "reply_heard_ns": {str(c.index): c.reply_heard_ns for c in calls if c.reply_heard_ns},
            "max_lag_ms": self.max_lag_s * 1000,
            "dial_errors": len(self.dial_errors),
            "dial_error": self.dial_errors[0] if self.dial_errors else None,
        }


async def run_callers() -> None:
    """Obey ``run`` commands from the coordinator, one at a time, answering each with its counts."""
    async for command in command_lines():
        if command.get("cmd") == "run":
            answer(await _CallerRun(command).run())
