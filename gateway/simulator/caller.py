"""Twilio caller emulator: places a call at the gateway exactly as Twilio would, and listens like a phone.

Owns the Twilio side of one call (twilio-media-streams.md §0): the signed voice webhook POST (§4, §3.6),
reading the TwiML (§3.1), the signed Media Stream WebSocket (§3.6), the inbound messages Twilio sends
(§1: ``connected``, ``start``, a ``media`` frame every ``frame_ms`` on a drift-free media clock, ``dtmf``,
``mark`` echoes, ``stop``), and Twilio's outbound playback (§2), played through the shared model
:class:`~gateway.simulator.twilio_playback.TwilioPlayback`. Every gateway frame is checked with
:func:`parse_gateway_message`, as strictly as Twilio checks it; violations are recorded, never raised.

The caller can talk back while the call runs (:meth:`TwilioCaller.speak`) and wait on what it hears
(:meth:`TwilioCaller.wait_agent_speaking`, :meth:`TwilioCaller.wait_agent_silent`), so load-test scenarios
react to the agent. Its uplink can be made unreliable with :class:`NetworkTrouble` (jitter, bursts, and
dropped frames as under warning 31930, §1.3), deterministic by seed.

Everything the caller said and heard goes into a :class:`~gateway.simulator.recording.CallRecord`,
measured on the media clock (ticks × ``frame_ms``), never on wall time, so tests can assert on it on a
noisy machine. Used by the integration tests, ``gateway demo`` and ``gateway loadtest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeAlias

import aiohttp
import numpy as np

from gateway.codecs.framing import ULAW_BYTES_PER_MS
from gateway.codecs.g711 import ULAW_SILENCE_BYTE, pcm16_to_ulaw, ulaw_silence, ulaw_to_pcm16
from gateway.errors import ConfigError, TwilioProtocolError
from gateway.simulator.caller_dial import API_VERSION, open_stream, post_webhook, read_twiml
from gateway.simulator.caller_network import NetworkTrouble
from gateway.simulator.recording import CallRecord, MarkEcho, PlayoutGap, Received, SpeechSegment
from gateway.simulator.twilio_playback import UNDERRUN_GAP_MAX_MS, TwilioPlayback
from gateway.wire.twilio_media import (
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    connected_message,
    dtmf_message,
    inbound_media_message,
    mark_echo_message,
    parse_gateway_message,
    start_message,
    stop_message,
)

__all__ = [
    "CallRecord",
    "CallerConfig",
    "MarkEcho",
    "NetworkTrouble",
    "PlayoutGap",
    "Received",
    "ScriptedEvent",
    "SendBinary",
    "SendDtmf",
    "SendText",
    "SpeechSegment",
    "TwilioCaller",
    "new_sid",
    "run_call",
]

log = logging.getLogger(__name__)

_DTMF_DIGITS = frozenset("0123456789*#ABCD")


def new_sid(prefix: str) -> str:
    """A Twilio-like SID: two-letter prefix (``AC``, ``CA``, ``MZ``) and 32 hex digits, 34 chars."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class SendDtmf:
    """Press a key (§1.4 ``dtmf``)."""

    digit: str

    def __post_init__(self) -> None:
        if len(self.digit) != 1 or self.digit not in _DTMF_DIGITS:
            raise ConfigError(f"DTMF digit {self.digit!r} is not a telephone key (0-9, *, #, A-D)")


@dataclass(frozen=True, slots=True)
class SendText:
    """Send an arbitrary text frame, as is (for bad-input tests)."""

    text: str


@dataclass(frozen=True, slots=True)
class SendBinary:
    """Send an arbitrary binary frame (for bad-input tests)."""

    data: bytes


ScriptedEvent: TypeAlias = SendDtmf | SendText | SendBinary


@dataclass
class CallerConfig:
    """One simulated inbound call. SIDs are generated when not given.

    ``speech_threshold`` (linear16 magnitude) and ``speech_merge_gap_ms`` decide which heard audio counts as
    agent speech (``record.agent_speech_segments``); ``network`` injects uplink trouble.
    """

    webhook_url: str
    auth_token: str | None = None
    from_number: str = "+15550100001"
    to_number: str = "+15550100002"
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    audio_ulaw: bytes = b""
    frame_ms: int = 20
    hangup_after_ms: int | None = None
    tail_silence_ms: int = 1000
    scripted: list[tuple[int, ScriptedEvent]] = field(default_factory=list)
    extra_webhook_params: dict[str, str] = field(default_factory=dict)
    webhook_timeout_s: float = 15.0
    webhook_method: Literal["POST", "GET"] = "POST"
    """How the number's webhook is configured: GET puts Twilio's parameters in the query (§4)."""
    webhook_signed_url: str | None = None
    """The URL Twilio signs when it differs from ``webhook_url`` (the public URL of a load balancer that
    forwards to the gateway at ``webhook_url``)."""
    connect_timeout_s: float = 10.0
    underrun_gap_max_ms: float = UNDERRUN_GAP_MAX_MS
    speech_threshold: int = 300
    speech_merge_gap_ms: float = 120.0
    network: NetworkTrouble = NetworkTrouble()

    def __post_init__(self) -> None:
        if self.frame_ms <= 0:
            raise ConfigError(f"frame_ms must be positive, got {self.frame_ms}")
        if self.hangup_after_ms is not None and self.hangup_after_ms < 0:
            raise ConfigError(f"hangup_after_ms must not be negative, got {self.hangup_after_ms}")
        if self.tail_silence_ms < 0:
            raise ConfigError(f"tail_silence_ms must not be negative, got {self.tail_silence_ms}")
        for at_ms, event in self.scripted:
            if at_ms < 0:
                raise ConfigError(f"scripted event {event!r} has a negative media time {at_ms} ms")

    @property
    def hangup_at_ms(self) -> int:
        """Media time at which the caller hangs up."""
        if self.hangup_after_ms is not None:
            return self.hangup_after_ms
        return math.ceil(len(self.audio_ulaw) / ULAW_BYTES_PER_MS) + self.tail_silence_ms


class TwilioCaller:
    """One emulated Twilio call leg. ``async with TwilioCaller(cfg) as c: await c.dial(); ...``.

    Leaving the ``async with`` block hangs up if the call is still up.
    """

    def __init__(self, config: CallerConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self.record = CallRecord(
            frame_ms=config.frame_ms,
            speech_threshold=config.speech_threshold,
            speech_merge_gap_ms=config.speech_merge_gap_ms,
        )
        self._session = session
        self._owns_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._frame_bytes = config.frame_ms * ULAW_BYTES_PER_MS
        self._seq = 0
        self._outbox: asyncio.Queue[tuple[float, str | bytes, str]] = asyncio.Queue()
        self._last_release_s = 0.0
        self._speech: deque[bytes] = deque()
        self._speech_head_started = False
        self._playback = TwilioPlayback(config.frame_ms, config.underrun_gap_max_ms)
        self._hanging_up = False
        self._closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ticker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TwilioCaller:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def media_time_ms(self) -> float:
        """The media clock (see :attr:`CallRecord.media_time_ms`)."""
        return self.record.media_time_ms

    @property
    def is_closed(self) -> bool:
        """True once the stream socket is closed, by either side."""
        return self._closed.is_set()

    # -- set-up ------------------------------------------------------------------------------------

    async def dial(self) -> CallRecord:
        """POST the webhook, read the TwiML, open the stream, send ``connected`` and ``start``, stream."""
        if self._ws is not None:
            raise ConfigError("dial() was already called on this TwilioCaller")
        if self._session is None:
            raise ConfigError("use TwilioCaller inside 'async with', or pass a session")
        cfg = self.config
        params = {
            "AccountSid": cfg.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": cfg.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": cfg.from_number,
            "To": cfg.to_number,
            **cfg.extra_webhook_params,
        }
        twiml = await post_webhook(
            self._session,
            self.record,
            self._violation,
            webhook_url=cfg.webhook_url,
            auth_token=cfg.auth_token,
            params=params,
            timeout_s=cfg.webhook_timeout_s,
            method=cfg.webhook_method,
            signed_url=cfg.webhook_signed_url,
        )
        stream_url = read_twiml(twiml, cfg.webhook_url, self.record, self._violation)
        self._ws = await open_stream(
            self._session, stream_url, auth_token=cfg.auth_token, timeout_s=cfg.connect_timeout_s
        )
        self.record.stream_open_s = asyncio.get_running_loop().time()
        self._enqueue(connected_message(), "connected")
        self._enqueue(
            start_message(
                sequence_number=self._next_seq(),
                stream_sid=cfg.stream_sid,
                account_sid=cfg.account_sid,
                call_sid=cfg.call_sid,
                custom_parameters=self.record.custom_parameters,
            ),
            "start",
        )
        self._tasks.append(asyncio.create_task(self._run_writer(self._ws), name="caller-writer"))
        self._tasks.append(asyncio.create_task(self._run_reader(self._ws), name="caller-reader"))
        self._ticker = asyncio.create_task(self._run_ticker(), name="caller-ticker")
        self._tasks.append(self._ticker)
        return self.record

    # -- talking -----------------------------------------------------------------------------------

    def send(self, event: ScriptedEvent) -> None:
        """Send a scripted event now (DTMF, or raw text/binary for bad-input tests)."""
        if isinstance(event, SendDtmf):
            msg = dtmf_message(sequence_number=self._next_seq(), stream_sid=self.config.stream_sid, digit=event.digit)
            self._enqueue(msg, "dtmf")
        elif isinstance(event, SendText):
            self._enqueue(event.text, "text")
        else:
            self._enqueue(event.data, "binary")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _enqueue(self, frame: str | bytes, event: str, release_s: float | None = None) -> None:
        """Queue a frame for the writer, to go out at ``release_s`` (loop time; default now), in queue order."""
        if self._closed.is_set():
            return
        now_s = asyncio.get_running_loop().time()
        self._last_release_s = max(self._last_release_s, now_s if release_s is None else release_s)
        self._outbox.put_nowait((self._last_release_s, frame, event))
        self.record.sent_events.append(event)

    async def _run_writer(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        loop = asyncio.get_running_loop()
        first_sent = self.record.first_sent_s
        while True:
            release_s, frame, event = await self._outbox.get()
            try:
                if release_s > loop.time():
                    await asyncio.sleep(release_s - loop.time())
                first_sent.setdefault(event, loop.time())
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                log.debug("caller send failed (socket closing): %r", exc)
            finally:
                self._outbox.task_done()

    async def _run_ticker(self) -> None:
        """One tick per ``frame_ms`` at ``t0 + n * frame_ms`` (drift-free): send a frame, play a frame."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        frame_s = cfg.frame_ms / 1000
        audio, fb = cfg.audio_ulaw, self._frame_bytes
        script = deque(sorted(cfg.scripted, key=lambda item: item[0]))
        hangup_at_ms = cfg.hangup_at_ms
        planner = cfg.network.planner(cfg.frame_ms)
        rec = self.record
        t0 = loop.time()
        rec.media_t0_s = t0
        n = 0
        while not self._closed.is_set():
            tick_s = t0 + n * frame_s
            delay_s = tick_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            rec.max_tick_late_ms = max(rec.max_tick_late_ms, (loop.time() - tick_s) * 1000)
            if self._closed.is_set() or self._hanging_up:
                return
            now_ms = n * cfg.frame_ms
            if now_ms >= hangup_at_ms:
                await self._hang_up()
                return
            while script and script[0][0] <= now_ms:
                self.send(script.popleft()[1])
            # §1.3: frames keep flowing after the recording ends, as μ-law silence.
            frame = _mix(audio[n * fb : (n + 1) * fb], self._take_speech(fb), fb)
            plan = planner.plan(n)
            if plan.drop:
                rec.dropped_frames_ms.append(now_ms)  # §1.3, 31930: discarded; the timestamp still advances
            else:
                rec.media_frames_sent += 1
                chunk = n + 1 if cfg.network.chunk_skips else rec.media_frames_sent
                message = inbound_media_message(
                    sequence_number=self._next_seq(),
                    stream_sid=cfg.stream_sid,
                    chunk=chunk,
                    timestamp_ms=now_ms,
                    ulaw=frame,
                )
                rec.max_send_delay_ms = max(rec.max_send_delay_ms, plan.extra_delay_ms)
                self._enqueue(message, "media", tick_s + plan.extra_delay_ms / 1000)
            rec.sent_ulaw += frame
            self._play_tick()
            self._notify()
            n += 1

    def _take_speech(self, n_bytes: int) -> bytes:
        """Up to ``n_bytes`` of queued speech; notes where each queued piece starts in what was said."""
        out = bytearray()
        base = len(self.record.sent_ulaw)
        while self._speech and len(out) < n_bytes:
            head = self._speech[0]
            if not self._speech_head_started:
                start_ms = (base + len(out)) / ULAW_BYTES_PER_MS
                self.record.caller_utterances.append(SpeechSegment(start_ms, start_ms + len(head) / ULAW_BYTES_PER_MS))
                self._speech_head_started = True
            take = head[: n_bytes - len(out)]
            out += take
            if len(take) == len(head):
                self._speech.popleft()
                self._speech_head_started = False
            else:
                self._speech[0] = head[len(take) :]
        return bytes(out)

    def speak(self, ulaw: bytes) -> None:
        """Say ``ulaw`` (8 kHz μ-law) from the next tick on, after anything still queued; mixed over the
        configured recording if that is still playing. Where it lands is in ``record.caller_utterances``."""
        if ulaw:
            self._speech.append(bytes(ulaw))

    @property
    def speaking(self) -> bool:
        """True while audio queued with :meth:`speak` is still being sent."""
        return bool(self._speech)

    async def wait_spoken(self, timeout_s: float) -> bool:
        """Wait until everything queued with :meth:`speak` has been said; False on timeout or close."""
        return await self.wait_for(lambda _rec: not self._speech, timeout_s)

    async def wait_agent_speaking(self, timeout_s: float, *, since_ms: float | None = None) -> SpeechSegment | None:
        """Wait until agent speech is heard that goes on at or after ``since_ms`` (default: now); return its
        segment (its ``end_ms`` is as of now), or None if none came within ``timeout_s``."""
        since = self.media_time_ms if since_ms is None else since_ms
        await self.wait_for(lambda rec: rec.agent_speech_after(since) is not None, timeout_s)
        return self.record.agent_speech_after(since)

    async def wait_agent_silent(self, silence_ms: float, timeout_s: float) -> bool:
        """Wait until no agent speech has been heard for ``silence_ms`` of media time."""
        return await self.wait_for(lambda rec: rec.agent_quiet_ms >= silence_ms, timeout_s)

    # -- playback (§1.5, §2) -----------------------------------------------------------------------

    def _play_tick(self) -> None:
        """Play one frame through Twilio's playback model; echo the marks it reached."""
        rec = self.record
        played = self._playback.play()
        for echo in played.echoes:
            self._echo(echo)
        if played.gap is not None:
            rec.playout_gaps.append(played.gap)
            if played.underrun:
                rec.underruns.append(played.gap)
        rec.heard_audio_samples += played.audio_bytes
        rec.append_heard(played.ulaw)

    def _echo(self, echo: MarkEcho) -> None:
        msg = mark_echo_message(sequence_number=self._next_seq(), stream_sid=self.config.stream_sid, name=echo.name)
        self._enqueue(msg, "mark")
        self.record.marks_echoed.append(echo)

    def _on_gateway_text(self, text: str) -> None:
        rec = self.record
        now_ms = rec.media_time_ms
        try:
            msg = parse_gateway_message(text)
        except TwilioProtocolError as exc:
            rec.received.append(Received(now_ms, "invalid", len(text)))
            self._violation(str(exc))
            return
        if msg.stream_sid != self.config.stream_sid:
            # §5.1 31951: a wrong streamSid makes Twilio ignore the message.
            rec.received.append(Received(now_ms, "invalid", len(text)))
            self._violation(f"gateway {msg.event!r} has streamSid {msg.stream_sid!r}, not this stream's")
            return
        match msg:
            case OutboundMedia():
                rec.received.append(Received(now_ms, "media", len(msg.ulaw)))
            case OutboundMark():
                rec.received.append(Received(now_ms, "mark", msg.name))
            case OutboundClear():
                rec.received.append(Received(now_ms, "clear", ""))
                rec.clears.append(now_ms)
        for echo in self._playback.receive(msg):
            self._echo(echo)
        rec.cleared_audio_samples = self._playback.cleared_bytes

    def _violation(self, what: str) -> None:
        log.debug("gateway protocol violation: %s", what)
        self.record.protocol_violations.append(what)

    async def _run_reader(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_gateway_text(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    self.record.received.append(Received(self.record.media_time_ms, "invalid", len(msg.data)))
                    self._violation("gateway sent a binary frame; Twilio accepts JSON text only (31950)")
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    self._violation(f"stream socket error: {ws.exception()!r}")
                    break
                self._notify()
        finally:
            if self.record.closed_by is None:
                self.record.closed_by = "gateway"
                self.record.close_code = ws.close_code
                if self._ticker is not None and self._ticker is not asyncio.current_task():
                    self._ticker.cancel()
            self._closed.set()
            self._notify()

    # -- ending ------------------------------------------------------------------------------------

    async def hang_up(self) -> None:
        """The caller hangs up: send ``stop`` (§1.6), then close the socket. No-op once closed."""
        if self._hanging_up:
            await self._closed.wait()
        elif self._ws is not None and not self._closed.is_set():
            await self._hang_up()

    async def _hang_up(self) -> None:
        ws = self._ws
        assert ws is not None
        if self._hanging_up or self._closed.is_set():
            return
        self._hanging_up = True
        self.record.closed_by = "caller"
        cfg = self.config
        msg = stop_message(
            sequence_number=self._next_seq(),
            stream_sid=cfg.stream_sid,
            account_sid=cfg.account_sid,
            call_sid=cfg.call_sid,
        )
        self._enqueue(msg, "stop")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.connect_timeout_s):
                await self._outbox.join()
        await ws.close()
        self.record.close_code = ws.close_code
        self._closed.set()
        self._notify()

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait until the stream socket is closed (by the gateway, usually); True if it is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._closed.wait()
        return self._closed.is_set()

    async def wait_for(self, predicate: Callable[[CallRecord], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(record)`` holds (checked every tick and every gateway frame)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate(self.record):
            remaining = deadline - loop.time()
            if self._closed.is_set() or remaining <= 0:
                return predicate(self.record)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()
        return True

    async def wait_media_ms(self, media_time_ms: float, timeout_s: float) -> bool:
        """Wait until the media clock reaches ``media_time_ms``; False if the call ended first."""
        return await self.wait_for(lambda rec: rec.media_time_ms >= media_time_ms, timeout_s)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def close(self) -> None:
        """Hang up if still connected, stop every task, release the session if we made it."""
        try:
            if self._ws is not None and not self._closed.is_set():
                await self.hang_up()
        finally:
            for task in self._tasks:
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            if self._owns_session and self._session is not None:
                await self._session.close()
                self._session = None
        for result in results:
            if isinstance(result, Exception):
                raise result


def _mix(a: bytes, b: bytes, n_bytes: int) -> bytes:
    """Two μ-law pieces played at once, as one ``n_bytes`` frame (summed in linear, clipped)."""
    if not b:
        pass
    elif not a.strip(bytes([ULAW_SILENCE_BYTE])):
        a = b
    else:
        pa = np.frombuffer(ulaw_to_pcm16(a + ulaw_silence(n_bytes - len(a))), "<i2").astype(np.int32)
        pb = np.frombuffer(ulaw_to_pcm16(b + ulaw_silence(n_bytes - len(b))), "<i2").astype(np.int32)
        a = pcm16_to_ulaw(np.clip(pa + pb, -32768, 32767).astype("<i2").tobytes())
    return a + ulaw_silence(n_bytes - len(a))


async def run_call(
    config: CallerConfig, *, session: aiohttp.ClientSession | None = None, timeout_s: float | None = None
) -> CallRecord:
    """Dial, say the recording, and hang up at ``config.hangup_at_ms`` (or stop when the gateway closes)."""
    if timeout_s is None:
        timeout_s = config.hangup_at_ms / 1000 + config.webhook_timeout_s + config.connect_timeout_s
    async with TwilioCaller(config, session=session) as caller:
        await caller.dial()
        await caller.wait_closed(timeout_s)
    return caller.record
