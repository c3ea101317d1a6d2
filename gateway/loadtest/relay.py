"""The load side of ``gateway bench capacity``: floor relay, EVI-side sink, emulated callers, frame tag.

- The **floor relay** is what any Twilio ⇄ EVI bridge must do at the least, written plainly: an aiohttp
  server that answers the webhook and the signed Media Stream upgrade like the gateway, and per call opens
  one ``websockets`` connection to the sink and forwards. Twilio ``media`` → ``json.loads``, base64,
  ``audioop.ulaw2lin``, base64, EVI ``audio_input``; EVI ``audio_output`` → ``json.loads``, base64, WAV
  header skipped, ``audioop.ratecv`` to 8 kHz, ``lin2ulaw``, Twilio ``media``. No playout buffer, no marks,
  no ticker, no core: the gateway's cost is measured against this.
- The **sink** plays EVI for both: it sends ``chat_metadata`` first (evi-protocol.md §1.4), timestamps
  every ``audio_input`` it receives, and answers each call with a 24 kHz WAV reply (``assistant_message``,
  ``audio_output`` chunks at real time one chunk ahead, ``assistant_end``; §3, §4.2) every few seconds.
- The **callers** are a light Twilio emulator (the full :class:`~gateway.simulator.caller.TwilioCaller`
  keeps every byte it says and hears, too much for hundreds of calls): signed webhook, TwiML and signed
  upgrade through :mod:`gateway.simulator.caller_dial`, ``connected`` and ``start``, then a tagged
  ``media`` frame every 20 ms, each call in its own 1 ms slot; received audio is played at real time,
  marks echoed when playback reaches them (twilio-media-streams.md §1.5, §2), underruns counted.
- The **frame tag** identifies a caller frame end to end: the caller writes (call index, frame number,
  send time on CLOCK_MONOTONIC in ns) into the first 30 μ-law bytes of the payload; μ-law → linear16 →
  μ-law is exact for every code but 0x7F, so the sink reads it back from the decoded audio.

Child processes talk to the coordinator (``gateway.loadtest.capacity``) in JSON lines: commands on stdin,
answers on stdout; stdin closing means exit.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import os
import random
import socket
import struct
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import websockets
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.codecs.framing import TWILIO_RATE_HZ
from gateway.simulator.caller_dial import API_VERSION, DialError, open_stream, post_webhook, read_twiml
from gateway.simulator.recording import CallRecord
from gateway.wire import evi_messages as evi
from gateway.wire.twilio_media import connected_message, mark_echo_message, start_message, stop_message
from gateway.wire.twilio_signature import webhook_signature_ok, websocket_signature_ok
from gateway.wire.twiml import connect_stream_twiml, stream_url_from_public_url

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "AUDIO_INPUT_PREFIX",
    "FILLER_B64",
    "FRAME_MS",
    "LATENCY_BIN_NS",
    "TAG_BYTES",
    "SinkStats",
    "answer",
    "command_lines",
    "decode_tag",
    "encode_tag",
    "make_relay_app",
    "run_callers",
    "run_relay",
    "run_sink",
    "tagged_media",
]

FRAME_MS = 20
_FRAME_BYTES = 160
_SLOTS = 20  # the callers' send times are spread over 20 one-millisecond slots of each 20 ms
_UNDERRUN_GAP_MAX_MS = 400.0  # as the caller emulator: a shorter gap between audio is an underrun
_NS = 1_000_000_000

# ---------------------------------------------------------------------------------------- the frame tag

_TAG_MARK = b"\xd5\x2a"
_NIBBLE_BASE = 0xE0
_TAG_STRUCT = struct.Struct(">HIQ")  # call index, frame number, send time (monotonic ns)
TAG_BYTES = len(_TAG_MARK) + 2 * _TAG_STRUCT.size  # 30: a multiple of 3, so base64(tag) + base64(rest) is exact
_PCM_TAG_BYTES = 2 * TAG_BYTES
_B64_PCM_TAG_CHARS = _PCM_TAG_BYTES // 3 * 4
_FRAME_PCM_BYTES = 320  # 20 ms of linear16 at 8 kHz
_FRAME_PCM_B64_CHARS = -(-_FRAME_PCM_BYTES // 3) * 4
_HIGH = bytes(_NIBBLE_BASE + (b >> 4) for b in range(256))
_LOW = bytes(_NIBBLE_BASE + (b & 0xF) for b in range(256))
_UNNIBBLE = bytes((b - _NIBBLE_BASE) & 0xF for b in range(256))
FILLER_B64 = binascii.b2a_base64(bytes([0x7E, 0xFE] * 65), newline=False).decode("ascii")
"""The rest of every 160-byte caller frame (quiet μ-law, never 0x7F), base64."""


def encode_tag(call_index: int, frame: int, sent_ns: int) -> bytes:
    """The first ``TAG_BYTES`` μ-law bytes of a caller frame."""
    packed = _TAG_STRUCT.pack(call_index & 0xFFFF, frame & 0xFFFFFFFF, sent_ns)
    return _TAG_MARK + packed.translate(_HIGH) + packed.translate(_LOW)


def decode_tag(pcm16: bytes) -> tuple[int, int, int] | None:
    """(call index, frame, sent ns) from linear16 that starts with a decoded tag, else None."""
    ulaw = audioop.lin2ulaw(pcm16[:_PCM_TAG_BYTES], 2)
    if len(ulaw) < TAG_BYTES or ulaw[:2] != _TAG_MARK:
        return None
    high = ulaw[2 : 2 + _TAG_STRUCT.size].translate(_UNNIBBLE)
    low = ulaw[2 + _TAG_STRUCT.size : TAG_BYTES].translate(_UNNIBBLE)
    call_index, frame, sent_ns = _TAG_STRUCT.unpack(bytes(h << 4 | lo for h, lo in zip(high, low, strict=True)))
    return call_index, frame, sent_ns


# ------------------------------------------------------------------------------------- child plumbing


async def command_lines() -> AsyncIterator[dict[str, Any]]:
    """Commands from the coordinator, one JSON object per stdin line, until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip():
            yield json.loads(line)


def answer(obj: dict[str, Any]) -> None:
    """One JSON line to the coordinator."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------- the sink

_EVI_MAX_MESSAGE_BYTES = 16 * 2**20  # evi-protocol.md §8
AUDIO_INPUT_PREFIX = '{"type":"audio_input","data":"'
"""What the gateway's EVI codec and the relay both write first; the sink's fast path."""
LATENCY_BIN_NS = 10_000


class SinkStats:
    """Caller frames received, counted for those sent inside the window, with a 10 µs latency histogram."""

    def __init__(self) -> None:
        self.window(0, 0)

    def window(self, start_ns: int, end_ns: int) -> None:
        """Start counting afresh for frames sent in ``[start_ns, end_ns)``."""
        self.start_ns, self.end_ns = start_ns, end_ns
        self.received = 0
        self.received_total = 0
        self.untagged = 0
        self.gaps = 0
        self.repeats = 0
        self.histogram: Counter[int] = Counter()
        self._last_frame: dict[int, int] = {}

    def audio_input(self, text: str, received_ns: int) -> None:
        """Account for one ``audio_input`` frame (one or more tagged 20 ms blocks)."""
        data = text[len(AUDIO_INPUT_PREFIX) : -2]
        if len(data) == _FRAME_PCM_B64_CHARS:
            self._block(binascii.a2b_base64(data[:_B64_PCM_TAG_CHARS]), received_ns)
            return
        pcm = binascii.a2b_base64(data)
        for offset in range(0, len(pcm) - _PCM_TAG_BYTES + 1, _FRAME_PCM_BYTES):
            self._block(pcm[offset : offset + _PCM_TAG_BYTES], received_ns)

    def _block(self, pcm16: bytes, received_ns: int) -> None:
        tag = decode_tag(pcm16)
        if tag is None:
            self.untagged += 1
            return
        call_index, frame, sent_ns = tag
        last = self._last_frame.get(call_index)
        if last is not None:
            if frame <= last:
                self.repeats += 1
                return
            self.gaps += frame - last - 1
        self.received_total += 1
        self._last_frame[call_index] = frame
        if self.start_ns <= sent_ns < self.end_ns:
            self.received += 1
            self.histogram[max(0, received_ns - sent_ns) // LATENCY_BIN_NS] += 1

    def report(self) -> dict[str, Any]:
        """The counts, as JSON-able values."""
        return {
            "received": self.received,
            "received_total": self.received_total,
            "untagged": self.untagged,
            "gaps": self.gaps,
            "repeats": self.repeats,
            "histogram": {str(k): v for k, v in self.histogram.items()},
        }


def _reply_messages(rate_hz: int, chunk_ms: int) -> tuple[str, bytes, bytes]:
    """(assistant_message template with ``{rid}``, audio_output data tail, assistant_end) for replies."""
    from gateway.bench import speech_like_pcm16
    from gateway.simulator.wavgen import wav_bytes

    pcm = speech_like_pcm16(chunk_ms / 1000, rate_hz, seed=7)
    data = binascii.b2a_base64(wav_bytes(pcm, rate_hz), newline=False).decode("ascii")
    message = evi.AssistantMessage(
        id="RID",
        message=evi.ChatMessage(role="assistant", content="Capacity reply."),
        models=evi.Inference(),
        from_text=False,
        is_quick_response=False,
    ).to_json()
    return message.replace('"RID"', '"{rid}"'), (data + '"}').encode(), evi.AssistantEnd().to_json().encode()


async def run_sink(port: int, *, reply_every_s: float, reply_s: float, chunk_ms: int, rate_hz: int) -> None:
    """Serve EVI sessions on 127.0.0.1:``port`` (shared with sibling sinks) and obey the coordinator."""
    stats = SinkStats()
    assistant_message, chunk_tail, assistant_end = _reply_messages(rate_hz, chunk_ms)
    n_chunks = max(1, round(reply_s * 1000 / chunk_ms))
    sessions = [0, 0]  # opened, open now

    async def talk(ws: ServerConnection, index: int) -> None:
        loop = asyncio.get_running_loop()
        next_s = loop.time() + random.Random(f"{os.getpid()}:{index}").uniform(0.5, 0.5 + reply_every_s)
        reply = 0
        while True:
            await asyncio.sleep(max(0.0, next_s - loop.time()))
            rid = f"cap-{index}-{reply}"
            await ws.send(assistant_message.replace("{rid}", rid))
            head = f'{{"type":"audio_output","id":"{rid}","index":'.encode()
            t0 = loop.time()
            for k in range(n_chunks):
                # evi-protocol.md §4.2: audio arrives at least as fast as real time; one chunk ahead here.
                await asyncio.sleep(max(0.0, t0 + max(0, k - 1) * chunk_ms / 1000 - loop.time()))
                await ws.send(head + f'{k},"data":"'.encode() + chunk_tail, text=True)
            await ws.send(assistant_end, text=True)
            reply += 1
            next_s += reply_every_s

    async def session(ws: ServerConnection) -> None:
        sessions[0] += 1
        sessions[1] += 1
        index = sessions[0]
        meta = evi.ChatMetadata(chat_id=f"chat-{index}", chat_group_id=f"group-{index}", request_id=str(index))
        talker: asyncio.Task[None] | None = None
        try:
            await ws.send(meta.to_json())
            talker = asyncio.create_task(talk(ws, index))
            async for text in ws:
                if isinstance(text, str) and text.startswith(AUDIO_INPUT_PREFIX):
                    stats.audio_input(text, time.monotonic_ns())
        except websockets.ConnectionClosed:
            pass
        finally:
            sessions[1] -= 1
            if talker is not None:
                talker.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await talker

    async with serve(session, "127.0.0.1", port, reuse_port=True, compression=None, max_size=_EVI_MAX_MESSAGE_BYTES):
        answer({"port": port})
        async for command in command_lines():
            if command.get("cmd") == "window":
                stats.window(int(command["start_ns"]), int(command["end_ns"]))
                answer({"ok": True})
            elif command.get("cmd") == "report":
                answer({**stats.report(), "sessions_total": sessions[0], "sessions_open": sessions[1]})


# ------------------------------------------------------------------------------------ the floor relay

_MEDIA_PATH = "/twilio/media"
_VOICE_PATH = "/twilio/voice"
_SESSION_SETTINGS = evi.SessionSettings(
    audio=evi.AudioConfiguration(encoding="linear16", sample_rate=TWILIO_RATE_HZ, channels=1)
).to_json()
_ACTIVE = web.AppKey("relay_active", set[web.WebSocketResponse])


def _wav_pcm(wav: bytes) -> tuple[bytes, int]:
    """(PCM, rate) of a plain RIFF/WAVE file: ``fmt`` read at its usual place, then the ``data`` chunk."""
    at = wav.find(b"data", 12)
    size = int.from_bytes(wav[at + 4 : at + 8], "little")
    return wav[at + 8 : at + 8 + size], int.from_bytes(wav[24:28], "little")


def make_relay_app(*, sink_url: str, auth_token: str, public_url: str, api_key: str) -> web.Application:
    """The floor relay as an aiohttp app (same routes and signature checks as the gateway)."""
    app = web.Application()
    app[_ACTIVE] = set()
    stream_url = stream_url_from_public_url(public_url, _MEDIA_PATH)

    async def voice(request: web.Request) -> web.Response:
        params = await request.post()
        if not webhook_signature_ok(
            auth_token, public_url + _VOICE_PATH, params, request.headers.get("X-Twilio-Signature")
        ):
            raise web.HTTPForbidden(text="invalid Twilio signature")
        return web.Response(text=connect_stream_twiml(stream_url, {"token": "relay"}), content_type="text/xml")

    async def media(request: web.Request) -> web.WebSocketResponse:
        if not websocket_signature_ok(auth_token, stream_url, request.headers.get("X-Twilio-Signature")):
            raise web.HTTPForbidden(text="invalid Twilio signature")
        ws = web.WebSocketResponse(compress=False, max_msg_size=64 * 1024)
        await ws.prepare(request)
        app[_ACTIVE].add(ws)
        try:
            await _relay_call(ws, sink_url, api_key)
        finally:
            app[_ACTIVE].discard(ws)
            await ws.close()
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "active_calls": len(app[_ACTIVE])})

    app.router.add_post(_VOICE_PATH, voice)
    app.router.add_get(_MEDIA_PATH, media)
    app.router.add_get("/healthz", healthz)
    return app


async def _relay_call(ws: web.WebSocketResponse, sink_url: str, api_key: str) -> None:
    stream_sid: str | None = None
    async for msg in ws:
        if msg.type is WSMsgType.TEXT and (obj := json.loads(msg.data)).get("event") == "start":
            stream_sid = str(obj["streamSid"])
            break
    if stream_sid is None:
        return
    try:
        upstream = await connect(
            sink_url,
            additional_headers={"X-Hume-Api-Key": api_key},
            compression=None,
            max_size=_EVI_MAX_MESSAGE_BYTES,
            open_timeout=10,
        )
    except (OSError, TimeoutError, websockets.WebSocketException):
        return
    async with upstream:
        await upstream.recv()  # chat_metadata (evi-protocol.md §1.4)
        await upstream.send(_SESSION_SETTINGS)
        downstream = asyncio.create_task(_relay_downstream(upstream, ws, stream_sid))
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
                obj = json.loads(msg.data)
                event = obj.get("event")
                if event == "media":
                    pcm = audioop.ulaw2lin(binascii.a2b_base64(obj["media"]["payload"]), 2)
                    data = binascii.b2a_base64(pcm, newline=False).decode("ascii")
                    await upstream.send(AUDIO_INPUT_PREFIX + data + '"}')
                elif event == "stop":
                    break
        except websockets.ConnectionClosed:
            pass
        finally:
            downstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed, ConnectionError):
                await downstream


async def _relay_downstream(upstream: websockets.ClientConnection, ws: web.WebSocketResponse, sid: str) -> None:
    head = '{"event":"media","streamSid":"' + sid + '","media":{"payload":"'
    state: Any = None
    rate_now = 0
    async for text in upstream:
        obj = json.loads(text)
        if obj.get("type") != "audio_output":
            continue
        pcm, rate_hz = _wav_pcm(binascii.a2b_base64(obj["data"]))
        if rate_hz != rate_now:
            state, rate_now = None, rate_hz
        pcm8k, state = audioop.ratecv(pcm, 2, 1, rate_hz, TWILIO_RATE_HZ, state)
        payload = binascii.b2a_base64(audioop.lin2ulaw(pcm8k, 2), newline=False).decode("ascii")
        await ws.send_str(head + payload + '"}}')


async def run_relay(*, sink_url: str, auth_token: str) -> None:
    """Serve the floor relay on 127.0.0.1 (a free port, announced) until stdin closes."""
    await _serve_until_stdin_closes(
        lambda port: make_relay_app(
            sink_url=sink_url, auth_token=auth_token, public_url=f"http://127.0.0.1:{port}", api_key="capacity-key"
        )
    )


async def _serve_until_stdin_closes(build: Callable[[int], web.Application]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    runner = web.AppRunner(build(port), handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        answer({"port": port})
        async for _command in command_lines():
            pass
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------------------- the callers


def tagged_media(stream_sid: str, sequence: int, frame: int, call_index: int, sent_ns: int) -> str:
    """Twilio ``media`` for frame ``frame`` (0-based) whose payload carries the tag; same JSON as the builder."""
    payload = binascii.b2a_base64(encode_tag(call_index, frame, sent_ns), newline=False).decode("ascii")
    return (
        f'{{"event":"media","sequenceNumber":"{sequence}","streamSid":"{stream_sid}","media":{{"track":"inbound",'
        f'"chunk":"{frame + 1}","timestamp":"{frame * FRAME_MS}","payload":"{payload}{FILLER_B64}"}}}}'
    )


class _Call:
    """One emulated Twilio call: sends tagged frames, plays what it hears at real time, echoes marks."""

    def __init__(self, index: int, ws: aiohttp.ClientWebSocketResponse, stream_sid: str) -> None:
        self.index, self.ws, self.stream_sid = index, ws, stream_sid
        self.sequence = 1
        self.frame = 0
        self.connected_ns = time.monotonic_ns()
        self.closed_ns: int | None = None
        self.sent_window = 0
        self.received_bytes = 0
        self.played_bytes = 0
        self.marks: deque[tuple[int, str]] = deque()
        self.gap_start_ms: float | None = None
        self.had_audio = False
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
        msg = json.loads(text)
        event = msg.get("event")
        if event == "media":
            payload = msg["media"]["payload"]
            self.received_bytes += len(payload) // 4 * 3 - payload[-2:].count("=")
        elif event == "mark":
            name = msg["mark"]["name"]
            if self.received_bytes > self.played_bytes:
                self.marks.append((self.received_bytes, name))
            else:  # twilio-media-streams.md §1.5: nothing buffered, echo at once
                await self._echo(name)
        elif event == "clear":  # §2.3: drop the buffer, echo every pending mark
            self.played_bytes = self.received_bytes
            while self.marks:
                await self._echo(self.marks.popleft()[1])
            self.gap_start_ms, self.had_audio = None, False

    async def _echo(self, name: str) -> None:
        await self.send(mark_echo_message(sequence_number=self.sequence, stream_sid=self.stream_sid, name=name))

    async def play_tick(self, media_ms: float, in_window: bool) -> None:
        take = min(_FRAME_BYTES, self.received_bytes - self.played_bytes)
        self.played_bytes += take
        if take:
            if self.gap_start_ms is not None and in_window and media_ms - self.gap_start_ms < _UNDERRUN_GAP_MAX_MS:
                self.underruns += 1
                self.underrun_ms += media_ms - self.gap_start_ms
            self.gap_start_ms, self.had_audio = None, True
            if in_window:
                self.heard_bytes_window += take
        if take < _FRAME_BYTES and self.had_audio and self.gap_start_ms is None:
            self.gap_start_ms = media_ms + take / 8
        while self.marks and self.marks[0][0] <= self.played_bytes:
            await self._echo(self.marks.popleft()[1])


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
        self.slots: list[list[_Call]] = [[] for _ in range(_SLOTS)]
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
        await asyncio.sleep(max(0.0, (at_ns - time.monotonic_ns()) / _NS))
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
        call = _Call(index, ws, stream_sid)
        await ws.send_str(connected_message())  # §1.1: the one message without a sequence number
        start = start_message(
            sequence_number=1, stream_sid=stream_sid, account_sid=account_sid, call_sid=call_sid,
            custom_parameters=record.custom_parameters,
        )  # fmt: skip
        await call.send(start)
        self.calls.append(call)
        self.slots[index % _SLOTS].append(call)
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
        slot_s = FRAME_MS / 1000 / _SLOTS
        hangup_s = self.hangup_ns / _NS
        start_s = loop.time()
        k = 0
        while (due_s := start_s + k * slot_s) < hangup_s:
            if (delay_s := due_s - loop.time()) > 0:
                await asyncio.sleep(delay_s)
            self.max_lag_s = max(self.max_lag_s, loop.time() - due_s)
            for call in self.slots[k % _SLOTS]:
                if call.closed_ns is None:
                    await self._tick(call)
            k += 1

    async def _tick(self, call: _Call) -> None:
        sent_ns = time.monotonic_ns()
        if not await call.send(tagged_media(call.stream_sid, call.sequence, call.frame, call.index, sent_ns)):
            return
        in_window = self.window[0] <= sent_ns < self.window[1]
        call.sent_window += in_window
        await call.play_tick(call.frame * FRAME_MS, in_window)
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
            / _NS,
            "frames_sent": sum(c.sent_window for c in calls),
            "underruns": sum(c.underruns for c in calls),
            "underrun_ms": sum(c.underrun_ms for c in calls),
            "heard_s": sum(c.heard_bytes_window for c in calls) / 8000,
            "max_lag_ms": self.max_lag_s * 1000,
            "dial_errors": len(self.dial_errors),
            "dial_error": self.dial_errors[0] if self.dial_errors else None,
        }


async def run_callers() -> None:
    """Obey ``run`` commands from the coordinator, one at a time, answering each with its counts."""
    async for command in command_lines():
        if command.get("cmd") == "run":
            answer(await _CallerRun(command).run())
