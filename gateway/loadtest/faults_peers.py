"""Twilio-side peers of ``gateway bench faults``, in the benchmark's own process.

- :class:`RawStream`: a Media Stream call dialled through the real webhook (signed with the ``twilio`` SDK's
  ``RequestValidator``, as Twilio signs, twilio-media-streams.md §3.6) and then driven frame by frame over a
  ``websockets`` connection; it plays what it hears through Twilio's playback model and echoes marks (§1.5).
- :class:`Canary`: a normal call (:class:`~gateway.simulator.caller.TwilioCaller`) on the canary line that
  talks and must hear its agent answer every turn while a phase runs.
- :func:`half_open`, :func:`slow_webhook`: raw TCP peers that start an HTTP request and never finish it, or
  send a webhook body a byte at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection, connect

from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.errors import DialError
from gateway.simulator.caller import CallerConfig, TwilioCaller, new_sid
from gateway.simulator.caller_dial import API_VERSION, post_webhook, read_twiml
from gateway.simulator.mutator import Frame
from gateway.simulator.recording import CallRecord
from gateway.simulator.twilio_playback import MarkEcho, TwilioPlayback
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import twilio_media as tw
from gateway.wire.twilio_signature import sign_request

__all__ = ["SPEECH_ULAW", "Canary", "CanaryResult", "RawStream", "Target", "half_open", "slow_webhook"]

SPEECH_ULAW = pcm16_to_ulaw(speechlike_pcm16(1000, 8000, seed=4))
"""One second of speech-like caller audio (μ-law), enough for turn detection and the stall bound."""
CANARY_SPEECH_ULAW = pcm16_to_ulaw(speechlike_pcm16(800, 8000, seed=7))
CANARY_GREETING_TIMEOUT_S = 8.0
CANARY_REPLY_TIMEOUT_S = 8.0
"""A canary that hears no answer this long after its turn ended counts as disturbed (the agent answers in ~1 s)."""
FRAME_S = 0.02


@dataclass(frozen=True, slots=True)
class Target:
    """The gateway under test."""

    port: int
    auth_token: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.base_url + "/twilio/voice"

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/media"


def webhook_params(call_sid: str, to_number: str) -> dict[str, str]:
    """The form Twilio POSTs to the voice webhook (twilio-media-streams.md §4)."""
    return {
        "AccountSid": "AC" + "f" * 32, "ApiVersion": API_VERSION, "CallSid": call_sid, "CallStatus": "ringing",
        "Direction": "inbound", "From": "+15550100009", "To": to_number,
    }  # fmt: skip


async def answer_call(
    http: aiohttp.ClientSession, target: Target, to_number: str, call_sid: str
) -> tuple[str, dict[str, str]]:
    """POST the signed webhook; the stream URL of the TwiML and its parameters (the stream token)."""
    record = CallRecord(frame_ms=20)
    twiml = await post_webhook(
        http, record, record.protocol_violations.append, webhook_url=target.webhook_url,
        auth_token=target.auth_token, params=webhook_params(call_sid, to_number), timeout_s=10,
    )  # fmt: skip
    return read_twiml(twiml, target.webhook_url, record, record.protocol_violations.append), record.custom_parameters


class RawStream:
    """One Media Stream socket driven by hand; ``closed_by`` is ``gateway`` when the gateway ended it."""

    def __init__(self, ws: ClientConnection, call_sid: str, stream_sid: str, parameters: dict[str, str]) -> None:
        self.ws, self.call_sid, self.stream_sid, self.parameters = ws, call_sid, stream_sid, parameters
        self.account_sid = "AC" + "f" * 32
        self.sequence = 1
        self.chunk = 0
        self.playback = TwilioPlayback(20)
        self.media_received = 0
        self.invalid_received = 0
        self.heard_bytes = 0
        self.closed_by: str | None = None
        self.on_mark: Callable[[str], None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    @classmethod
    async def dial(
        cls, http: aiohttp.ClientSession, target: Target, to_number: str, *, rcvbuf_bytes: int | None = None,
        max_queue: int = 64, answered: tuple[str, dict[str, str]] | None = None, call_sid: str | None = None,
    ) -> RawStream:  # fmt: skip
        """Answer a call through the webhook (unless ``answered``) and open its signed stream (not started)."""
        call_sid = call_sid or new_sid("CA")
        url, parameters = answered if answered is not None else await answer_call(http, target, to_number, call_sid)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", target.port)), 5)
            ws = await connect(
                url, sock=sock, additional_headers={"X-Twilio-Signature": sign_request(target.auth_token, url, {})},
                compression=None, max_size=2**20, max_queue=max_queue, open_timeout=5, close_timeout=2,
                ping_interval=None,
            )  # fmt: skip
        except websockets.InvalidStatus as exc:
            sock.close()
            status = exc.response.status_code
            raise DialError(f"stream upgrade answered HTTP {status}", stage="stream", status=status) from None
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            sock.close()
            raise DialError(f"stream connect failed: {exc!r}", stage="stream") from None
        return cls(ws, call_sid, "MZ" + call_sid[2:], parameters)

    def start_text(self) -> str:
        """This stream's ``start`` (§1.2) with the stream token of its TwiML."""
        return tw.start_message(
            sequence_number=1, stream_sid=self.stream_sid, account_sid=self.account_sid, call_sid=self.call_sid,
            custom_parameters=self.parameters,
        )  # fmt: skip

    async def begin(self, start: bytes | None = None, *, read_delay_s: float = 0.0) -> None:
        """Send ``connected`` and ``start`` (or a mutated start), and start reading (one message per
        ``read_delay_s`` at most, for a caller that reads slowly)."""
        await self.send(tw.connected_message())
        await self.send(start if start is not None else self.start_text())
        self._reader = asyncio.create_task(self._read(read_delay_s), name="fault-stream-reader")

    def media(self, ulaw: bytes, *, skip_frames: int = 0, skip_sequence: int = 0) -> str:
        """The next ``media`` frame; ``skip_frames`` leaves a hole of that many frames (31930, §1.3)."""
        self.sequence += 1 + skip_sequence
        self.chunk += 1 + skip_frames
        return tw.inbound_media_message(
            sequence_number=self.sequence, stream_sid=self.stream_sid, chunk=self.chunk,
            timestamp_ms=20 * (self.chunk - 1), ulaw=ulaw,
        )  # fmt: skip

    async def send(self, data: str | bytes, *, binary: bool = False) -> bool:
        """Send one frame (bytes go as a text frame unless ``binary``); False once the socket is closed."""
        try:
            await self.ws.send(data, text=not binary) if isinstance(data, bytes) else await self.ws.send(data)
        except websockets.ConnectionClosed:
            self._note_closed()
            return False
        return True

    async def send_frame(self, frame: Frame) -> bool:
        return await self.send(frame.data, binary=frame.binary)

    def _note_closed(self) -> None:
        if self.closed_by is None:
            self.closed_by = "gateway"
        self.closed.set()

    async def _read(self, delay_s: float) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    await self._on_text(message)
                if delay_s:
                    await asyncio.sleep(delay_s)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._note_closed()

    async def _on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
            event = msg.get("event")
            if event == "media":
                ulaw = base64.b64decode(msg["media"]["payload"])
            elif event == "mark":
                name = str(msg["mark"]["name"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self.invalid_received += 1  # the canaries check the gateway's frames strictly; here they are counted
            return
        if event == "media":
            self.media_received += 1
            self.playback.media(ulaw)
        elif event == "mark":
            if self.on_mark is not None:
                self.on_mark(name)
            await self._echo(self.playback.mark(name))
        elif event == "clear":
            await self._echo(self.playback.clear())

    async def _echo(self, echoes: list[MarkEcho]) -> None:
        for echo in echoes:
            self.sequence += 1
            await self.send(tw.mark_echo_message(sequence_number=self.sequence, stream_sid=self.stream_sid,
                                                 name=echo.name))  # fmt: skip

    async def play_tick(self) -> None:
        """One 20 ms frame of playback: what was heard, and the marks it reached."""
        played = self.playback.play()
        self.heard_bytes += played.audio_bytes
        await self._echo(played.echoes)

    async def talk(self, duration_s: float, audio: bytes = SPEECH_ULAW, stop: asyncio.Event | None = None) -> None:
        """Send ``audio`` (looped) as real-time media for ``duration_s``, playing what is heard; stops early when
        the gateway closes the stream or ``stop`` is set."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = 0
        while not self.closed.is_set() and n * FRAME_S < duration_s and not (stop is not None and stop.is_set()):
            at = (n * 160) % len(audio)
            if not await self.send(self.media(audio[at : at + 160].ljust(160, b"\xff"))):
                break
            await self.play_tick()
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * FRAME_S - loop.time()))

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def hang_up(self) -> None:
        """Send ``stop`` (§1.6) and close; bounded (a peer that does not answer our close is aborted)."""
        if not self.closed.is_set():
            self.closed_by = "caller"
            self.sequence += 1
            await self.send(tw.stop_message(sequence_number=self.sequence, stream_sid=self.stream_sid,
                                            account_sid=self.account_sid, call_sid=self.call_sid))  # fmt: skip
        await self.close()

    async def close(self) -> None:
        """Close the socket (aborting it past 3 s) and stop the reader."""
        with contextlib.suppress(TimeoutError, websockets.WebSocketException, OSError):
            await asyncio.wait_for(self.ws.close(), 3)
        if self.ws.transport is not None and not self.ws.transport.is_closing():
            self.ws.transport.abort()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.closed.set()

    def outcome(self) -> str:
        """``1000 by caller``, ``1008 by gateway``, …: how the stream ended."""
        return f"{self.close_code} by {self.closed_by or 'caller'}"


# ----------------------------------------------------------------------------------------------- canaries


@dataclass
class CanaryResult:
    """How one canary call went: ``ok`` when it heard its agent on every turn and hung up itself."""

    ok: bool
    why: str
    turns: int
    heard_ms: float
    outcome: str


class Canary:
    """A normal call that keeps talking to the simulator's agent until told to stop."""

    def __init__(self, target: Target, http: aiohttp.ClientSession, to_number: str) -> None:
        self.config = CallerConfig(
            webhook_url=target.webhook_url, auth_token=target.auth_token, to_number=to_number, audio_ulaw=b"",
            hangup_after_ms=3_600_000, webhook_timeout_s=10, connect_timeout_s=5,
        )  # fmt: skip
        self.http = http

    async def run(self, stop: asyncio.Event) -> CanaryResult:
        """Hear the greeting, then turn after turn (talk, hear the answer) until ``stop``; then hang up."""
        turns = 0
        async with TwilioCaller(self.config, session=self.http) as caller:
            try:
                await caller.dial()
            except DialError as exc:
                return CanaryResult(False, f"dial failed: {exc}", 0, 0.0, "not connected")
            why = ""
            if await caller.wait_agent_speaking(CANARY_GREETING_TIMEOUT_S, since_ms=0) is None:
                why = "no greeting heard"
            while not why and (turns == 0 or not stop.is_set()):  # at least one turn, however short the phase
                await caller.wait_agent_silent(300, 20)
                caller.speak(CANARY_SPEECH_ULAW)
                await caller.wait_spoken(5)
                since_ms = caller.media_time_ms
                if await caller.wait_agent_speaking(CANARY_REPLY_TIMEOUT_S, since_ms=since_ms) is None:
                    why = f"no answer within {CANARY_REPLY_TIMEOUT_S:g} s on turn {turns + 1}"
                else:
                    turns += 1
            if not why and turns == 0:
                why = "no turn completed"
            closed_early = caller.is_closed
            await caller.hang_up()
            record = caller.record
        if closed_early:
            why = f"the gateway ended the call (code {record.close_code}){': ' + why if why else ''}"
        if not why and record.protocol_violations:
            why = f"protocol violation: {record.protocol_violations[0]}"
        outcome = f"{record.close_code} by {record.closed_by}"
        return CanaryResult(not why, why, turns, record.heard_audio_ms, outcome)


# ---------------------------------------------------------------------------------------- raw HTTP peers


HALF_OPEN_VARIANTS = ("connect_only", "partial_request_line", "partial_headers", "slowloris", "partial_body")


@dataclass
class HalfOpen:
    """A TCP connection holding a request the gateway never gets in full."""

    variant: str
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    closed_by_gateway_s: float | None = None
    stats: Counter[str] = field(default_factory=Counter)


def _upgrade_head(target: Target) -> bytes:
    key = base64.b64encode(b"0123456789abcdef").decode()
    signature = sign_request(target.auth_token, target.media_url, {})
    return (
        f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"X-Twilio-Signature: {signature}\r\n"
    ).encode()


async def half_open(target: Target, variant: str) -> HalfOpen:
    """Connect and send the first part of a request (``variant``), then nothing."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), 5)
    head = _upgrade_head(target)
    match variant:
        case "partial_request_line":
            writer.write(b"GET /twilio/media HT")
        case "partial_headers" | "slowloris":
            writer.write(head[: len(head) // 2])
        case "partial_body":
            form = "application/x-www-form-urlencoded"
            post = f"POST /twilio/voice HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nContent-Type: {form}\r\n"
            writer.write(post.encode() + b"Content-Length: 4000\r\n\r\nCallSid=CA")
    await writer.drain()
    return HalfOpen(variant, writer, reader)


async def watch_half_open(conn: HalfOpen, hold_s: float) -> None:
    """Hold the connection for ``hold_s`` (a slowloris adds a header byte every 0.5 s); note when the gateway
    closes it first."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    pending = b"X-Slow: " + b"a" * 1000
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(hold_s):
            while True:
                if conn.variant == "slowloris":
                    conn.writer.write(pending[:1])
                    pending = pending[1:] or b"a"
                    await conn.writer.drain()
                with contextlib.suppress(TimeoutError):
                    data = await asyncio.wait_for(conn.reader.read(4096), 0.5)
                    if not data:
                        conn.closed_by_gateway_s = loop.time() - t0
                        return
                    conn.stats["bytes_answered"] += len(data)
    with contextlib.suppress(OSError):
        conn.writer.close()


@dataclass
class SlowWebhook:
    """What a webhook POST sent a byte at a time got back."""

    status: int | None
    twiml: str
    call_sid: str
    elapsed_s: float


async def slow_webhook(target: Target, to_number: str, byte_delay_s: float, *, abandon: bool = False) -> SlowWebhook:
    """POST the signed voice webhook with its body written one byte per ``byte_delay_s``; with ``abandon``, close
    half-way through the body."""
    call_sid = new_sid("CA")
    params = webhook_params(call_sid, to_number)
    body = urlencode(params).encode()
    signature = sign_request(target.auth_token, target.webhook_url, params)
    head = (
        f"POST /twilio/voice HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nContent-Type: "
        f"application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), 5)
    try:
        writer.write(head)
        for n, byte in enumerate(body):
            if abandon and n >= len(body) // 2:
                return SlowWebhook(None, "", call_sid, time.monotonic() - t0)
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(byte_delay_s)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return SlowWebhook(status, rest.partition(b"\r\n\r\n")[2].decode(errors="replace"), call_sid, time.monotonic() - t0)


def stream_of(answer: SlowWebhook, target: Target) -> tuple[str, dict[str, str]]:
    """The stream URL and parameters of a webhook answer's TwiML."""
    record = CallRecord(frame_ms=20)
    url = read_twiml(answer.twiml, target.webhook_url, record, record.protocol_violations.append)
    return url, record.custom_parameters
