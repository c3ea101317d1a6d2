"""The floor relay and the EVI-side sink of ``gateway bench capacity``, and the frame tag and child plumbing
they share with the callers (:mod:`gateway.loadtest.capacity_callers`).

- The **floor relay** is what any Twilio ⇄ EVI bridge must do at the least, written plainly: an aiohttp
  server that answers the webhook and the signed Media Stream upgrade like the gateway, and per call opens
  one ``websockets`` connection to the sink and forwards. Twilio ``media`` → ``json.loads``, base64,
  ``audioop.ulaw2lin``, base64, EVI ``audio_input``; EVI ``audio_output`` → ``json.loads``, base64, the
  WAV's ``data`` chunk and rate, ``audioop.ratecv`` to 8 kHz, ``lin2ulaw``, Twilio ``media``. No playout
  buffer, no marks, no ticker, no core: the gateway's cost is measured against this.
- The **sink** plays EVI for both: it sends ``chat_metadata`` first (evi-protocol.md §1.4), timestamps
  every ``audio_input`` it receives, and answers each call with a 24 kHz WAV reply (``assistant_message``,
  ``audio_output`` chunks at real time one chunk ahead, ``assistant_end``; §3, §4.2) every few seconds.
- The **frame tag** identifies a caller frame end to end: the caller writes (call index, frame number,
  send time on CLOCK_MONOTONIC in ns) into the first 30 μ-law bytes of the payload; μ-law → linear16 →
  μ-law is exact for every code but 0x7F, so the sink reads it back from the decoded audio.

Child processes (relay, sinks, callers) talk to the coordinator (``gateway.loadtest.capacity``) in JSON
lines (gateway.simulator.children): commands on stdin, answers on stdout; stdin closing means exit.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import websockets
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.codecs.framing import TWILIO_RATE_HZ, ULAW_FRAME_BYTES
from gateway.codecs.g711 import SAMPLE_WIDTH_BYTES, audioop
from gateway.codecs.wav import write_wav
from gateway.simulator.children import answer, command_lines
from gateway.simulator.loopback import serve_on_free_port
from gateway.wire import evi_messages as evi
from gateway.wire.twilio_signature import webhook_signature_ok, websocket_signature_ok
from gateway.wire.twiml import connect_stream_twiml, stream_url_from_public_url

__all__ = [
    "AUDIO_INPUT_PREFIX",
    "FILLER_B64",
    "LATENCY_BIN_NS",
    "TAG_BYTES",
    "SinkStats",
    "answer",
    "command_lines",
    "decode_tag",
    "encode_tag",
    "make_relay_app",
    "run_relay",
    "run_sink",
]

SEND_SLOTS = 20  # the callers' send times are spread over 20 one-millisecond slots of each 20 ms
NS_PER_S = 1_000_000_000

# ---------------------------------------------------------------------------------------- the frame tag

_TAG_MARK = b"\xd5\x2a"
_NIBBLE_BASE = 0xE0
_TAG_STRUCT = struct.Struct(">HIQ")  # call index, frame number, send time (monotonic ns)
TAG_BYTES = len(_TAG_MARK) + 2 * _TAG_STRUCT.size  # 30: a multiple of 3, so base64(tag) + base64(rest) is exact
_PCM_TAG_BYTES = 2 * TAG_BYTES
_B64_PCM_TAG_CHARS = _PCM_TAG_BYTES // 3 * 4
_FRAME_PCM_BYTES = ULAW_FRAME_BYTES * SAMPLE_WIDTH_BYTES  # 20 ms of linear16 at 8 kHz
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
    high = int.from_bytes(ulaw[2 : 2 + _TAG_STRUCT.size].translate(_UNNIBBLE))
    low = int.from_bytes(ulaw[2 + _TAG_STRUCT.size : TAG_BYTES].translate(_UNNIBBLE))
    # Each byte of ``high`` and ``low`` holds one nibble, so shifting the whole number never carries across bytes.
    call_index, frame, sent_ns = _TAG_STRUCT.unpack((high << 4 | low).to_bytes(_TAG_STRUCT.size))
    return call_index, frame, sent_ns


# ------------------------------------------------------------------------------------- child plumbing


# ------------------------------------------------------------------------------------------- the sink

_EVI_MAX_MESSAGE_BYTES = 16 * 2**20  # evi-protocol.md §8
AUDIO_INPUT_PREFIX = '{"type":"audio_input","data":"'
"""What the gateway's EVI codec and the relay both write first; the sink's fast path."""
LATENCY_BIN_NS = 10_000


class SinkStats:
    """Caller frames received, counted for those sent inside the window, with a 10 µs latency histogram; and
    when each reply to a call began (its first ``audio_output`` sent), for the latency towards the caller."""

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
        self.reply_starts_ns: dict[int, list[int]] = {}
        self._last_frame: dict[int, int] = {}

    def audio_input(self, text: str, received_ns: int) -> int | None:
        """Account for one ``audio_input`` frame (one or more tagged 20 ms blocks); the caller's index, if tagged."""
        data = text[len(AUDIO_INPUT_PREFIX) : -2]
        if len(data) == _FRAME_PCM_B64_CHARS:
            return self._block(binascii.a2b_base64(data[:_B64_PCM_TAG_CHARS]), received_ns)
        pcm = binascii.a2b_base64(data)
        call_index = None
        for offset in range(0, len(pcm) - _PCM_TAG_BYTES + 1, _FRAME_PCM_BYTES):
            if (block_index := self._block(pcm[offset : offset + _PCM_TAG_BYTES], received_ns)) is not None:
                call_index = block_index
        return call_index

    def reply_started(self, call_index: int, sent_ns: int) -> None:
        """The first ``audio_output`` of a reply to caller ``call_index`` was sent at ``sent_ns``."""
        if self.start_ns <= sent_ns < self.end_ns:
            self.reply_starts_ns.setdefault(call_index, []).append(sent_ns)

    def _block(self, pcm16: bytes, received_ns: int) -> int | None:
        tag = decode_tag(pcm16)
        if tag is None:
            self.untagged += 1
            return None
        call_index, frame, sent_ns = tag
        last = self._last_frame.get(call_index)
        if last is not None:
            if frame <= last:
                self.repeats += 1
                return call_index
            self.gaps += frame - last - 1
        self.received_total += 1
        self._last_frame[call_index] = frame
        if self.start_ns <= sent_ns < self.end_ns:
            self.received += 1
            self.histogram[max(0, received_ns - sent_ns) // LATENCY_BIN_NS] += 1
        return call_index

    def report(self) -> dict[str, Any]:
        """The counts, as JSON-able values."""
        return {
            "received": self.received,
            "received_total": self.received_total,
            "untagged": self.untagged,
            "gaps": self.gaps,
            "repeats": self.repeats,
            "histogram": {str(k): v for k, v in self.histogram.items()},
            "reply_starts_ns": {str(k): v for k, v in self.reply_starts_ns.items()},
        }


def _reply_messages(rate_hz: int, chunk_ms: int) -> tuple[str, bytes, bytes]:
    """(assistant_message template with ``{rid}``, audio_output data tail, assistant_end) for replies."""
    from gateway.bench import speech_like_pcm16

    pcm = speech_like_pcm16(chunk_ms / 1000, rate_hz, seed=7)
    data = binascii.b2a_base64(write_wav(pcm, rate_hz), newline=False).decode("ascii")
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

    async def talk(ws: ServerConnection, index: int, caller: list[int]) -> None:
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
                if k == 0 and caller:
                    stats.reply_started(caller[0], time.monotonic_ns())
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
        caller: list[int] = []  # the caller's index, once its first tagged frame arrived
        try:
            await ws.send(meta.to_json())
            talker = asyncio.create_task(talk(ws, index, caller))
            async for text in ws:
                if isinstance(text, str) and text.startswith(AUDIO_INPUT_PREFIX):
                    call_index = stats.audio_input(text, time.monotonic_ns())
                    if call_index is not None and not caller:
                        caller.append(call_index)
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

    runner, port = await serve_on_free_port(build)
    try:
        answer({"port": port})
        async for _command in command_lines():
            pass
    finally:
        await runner.cleanup()
