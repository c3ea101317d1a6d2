"""Twilio caller emulator: places a call at the gateway exactly as Twilio would, and listens like a phone.

Owns the Twilio side of one call (twilio-media-streams.md §0): the signed voice webhook POST (§4, §3.6),
reading the TwiML (§3.1), the signed Media Stream WebSocket (§3.6), the inbound messages Twilio sends
(§1: ``connected``, ``start``, a ``media`` frame every ``frame_ms`` on a drift-free media clock, ``dtmf``,
``mark`` echoes, ``stop``), and Twilio's outbound playback model (§2): audio is buffered and played in
order at real time, a mark is echoed when playback reaches it (at once if nothing is queued before it),
and ``clear`` drops the queued audio and echoes every pending mark. Every gateway frame is checked with
:func:`parse_gateway_message`, as strictly as Twilio checks it; violations are recorded, never raised.

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
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeAlias
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from gateway.codecs.framing import ULAW_BYTES_PER_MS
from gateway.codecs.g711 import ulaw_silence
from gateway.errors import ConfigError, RemoteProtocolError, TwilioProtocolError
from gateway.simulator.recording import CallRecord, MarkEcho, PlayoutGap, Received
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
from gateway.wire.twilio_signature import sign_request

__all__ = [
    "CallRecord",
    "CallerConfig",
    "DialError",
    "MarkEcho",
    "PlayoutGap",
    "Received",
    "ScriptedEvent",
    "SendBinary",
    "SendDtmf",
    "SendText",
    "TwilioCaller",
    "new_sid",
    "run_call",
]

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
WEBHOOK_USER_AGENT = "TwilioProxy/1.1"
MAX_WS_MESSAGE_BYTES = 16 * 1024 * 1024
_PARAMETER_MAX_CHARS = 500  # §3.1: name + value must be under 500 characters
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
    """One simulated inbound call. SIDs are generated when not given."""

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
    connect_timeout_s: float = 10.0
    underrun_gap_max_ms: float = 400.0

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


class DialError(RemoteProtocolError):
    """The call could not be set up: webhook refused, TwiML unusable, or stream handshake refused."""

    def __init__(
        self, message: str, *, stage: Literal["webhook", "twiml", "stream"], status: int | None = None
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.status = status


@dataclass(frozen=True, slots=True)
class _QueuedMark:
    name: str


class TwilioCaller:
    """One emulated Twilio call leg. ``async with TwilioCaller(cfg) as c: await c.dial(); ...``.

    Leaving the ``async with`` block hangs up if the call is still up.
    """

    def __init__(self, config: CallerConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self.record = CallRecord(frame_ms=config.frame_ms, underrun_gap_max_ms=config.underrun_gap_max_ms)
        self._session = session
        self._owns_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._frame_bytes = config.frame_ms * ULAW_BYTES_PER_MS
        self._seq = 0
        self._outbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._playout: deque[bytes | _QueuedMark] = deque()
        self._gap_start: int | None = None
        self._audio_seen = False
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
        twiml = await self._post_webhook(self._session)
        stream_url = self._read_twiml(twiml)
        self._ws = await self._open_stream(self._session, stream_url)
        cfg = self.config
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

    async def _post_webhook(self, session: aiohttp.ClientSession) -> str:
        """§0 step 1, §4: form POST with Twilio's parameters, signed per §3.6."""
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
        self.record.webhook_params = params
        headers = {"User-Agent": WEBHOOK_USER_AGENT}
        if cfg.auth_token is not None:
            headers["X-Twilio-Signature"] = sign_request(cfg.auth_token, cfg.webhook_url, params)
        timeout = aiohttp.ClientTimeout(total=cfg.webhook_timeout_s)
        try:
            async with session.post(
                cfg.webhook_url, data=params, headers=headers, allow_redirects=False, timeout=timeout
            ) as resp:
                status, content_type, body = resp.status, resp.content_type, await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DialError(f"webhook POST {cfg.webhook_url} failed: {exc!r}", stage="webhook") from exc
        self.record.webhook_status = status
        if status != 200:
            raise DialError(
                f"webhook POST {cfg.webhook_url} answered HTTP {status}, not 200 with TwiML",
                stage="webhook",
                status=status,
            )
        self.record.twiml = body
        if content_type not in ("text/xml", "application/xml"):
            self._violation(f"webhook answered Content-Type {content_type!r}; TwiML needs text/xml (§4)")
        return body

    def _read_twiml(self, twiml: str) -> str:
        """§3.1: ``<Response><Connect><Stream url>`` with ``<Parameter>`` children; returns the stream URL."""
        try:
            root = ET.fromstring(twiml)
        except ET.ParseError as exc:
            raise DialError(f"TwiML is not well-formed XML: {exc}", stage="twiml") from None
        if root.tag != "Response":
            raise DialError(f"TwiML root is <{root.tag}>, not <Response>", stage="twiml")
        verbs = list(root)
        connect_at = next((i for i, verb in enumerate(verbs) if verb.tag == "Connect"), None)
        if connect_at is None:
            found = ", ".join(f"<{v.tag}>" for v in verbs) or "nothing"
            raise DialError(f"TwiML has no <Connect> (found {found})", stage="twiml")
        for verb in verbs:
            verb.tail = None
        rec = self.record
        rec.twiml_before_connect = [ET.tostring(v, encoding="unicode") for v in verbs[:connect_at]]
        rec.twiml_after_connect = [ET.tostring(v, encoding="unicode") for v in verbs[connect_at + 1 :]]
        streams = [child for child in verbs[connect_at] if child.tag == "Stream"]
        if len(streams) != 1:
            raise DialError(f"<Connect> holds {len(streams)} <Stream> elements, need exactly 1", stage="twiml")
        stream = streams[0]
        rec.stream_attributes = dict(stream.attrib)
        url = stream.get("url")
        if not url:
            raise DialError("<Stream> has no url attribute", stage="twiml")
        if stream.get("track", "inbound_track") != "inbound_track":
            self._violation(f"<Connect><Stream track={stream.get('track')!r}>: Twilio error 31941 (§3.1)")
        for param in stream:
            if param.tag != "Parameter":
                continue
            name, value = param.get("name"), param.get("value")
            if name is None or value is None:
                raise DialError("<Parameter> needs both name and value attributes", stage="twiml")
            if len(name) + len(value) >= _PARAMETER_MAX_CHARS:
                self._violation(f"<Parameter name={name!r}> is {len(name) + len(value)} chars; limit 499 (§3.1)")
            rec.custom_parameters[name] = value
        rec.stream_url = self._resolve_stream_url(url)
        return rec.stream_url

    def _resolve_stream_url(self, url: str) -> str:
        """Absolute ws/wss URLs are used exactly as written (that is what gets signed); others resolved."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            absolute = urlsplit(urljoin(self.config.webhook_url, url))
            scheme = {"http": "ws", "https": "wss"}.get(absolute.scheme)
            if scheme is None or parts.scheme:
                raise DialError(f"<Stream url={url!r}>: Twilio needs a wss URL (error 31922)", stage="twiml")
            parts = absolute._replace(scheme=scheme)
            url = urlunsplit(parts)
        if parts.query:
            self._violation(f"<Stream url={url!r}> has a query string; Twilio's handshake breaks (31920, P9)")
        return url

    async def _open_stream(self, session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
        """§0 step 3: upgrade with lowercase ``x-twilio-signature`` over the URL with no params (§3.6)."""
        cfg = self.config
        headers = {}
        if cfg.auth_token is not None:
            headers["x-twilio-signature"] = sign_request(cfg.auth_token, url, {})
        try:
            async with asyncio.timeout(cfg.connect_timeout_s):
                return await session.ws_connect(
                    url,
                    headers=headers,
                    compress=0,
                    max_msg_size=MAX_WS_MESSAGE_BYTES,
                    autoclose=True,
                    autoping=True,
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=cfg.connect_timeout_s),
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise DialError(
                f"stream upgrade to {url} answered HTTP {exc.status}", stage="stream", status=exc.status
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DialError(f"stream connect to {url} failed: {exc!r}", stage="stream") from exc

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

    def _enqueue(self, frame: str | bytes, event: str) -> None:
        """Queue a frame for the writer; frames go out in the order they were queued."""
        if self._closed.is_set():
            return
        self._outbox.put_nowait(frame)
        self.record.sent_events.append(event)

    async def _run_writer(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            frame = await self._outbox.get()
            try:
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
        t0 = loop.time()
        n = 0
        while not self._closed.is_set():
            delay_s = t0 + n * frame_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if self._closed.is_set() or self._hanging_up:
                return
            now_ms = n * cfg.frame_ms
            if now_ms >= hangup_at_ms:
                await self._hang_up()
                return
            while script and script[0][0] <= now_ms:
                self.send(script.popleft()[1])
            # §1.3: frames keep flowing after the recording ends, as μ-law silence.
            frame = audio[n * fb : (n + 1) * fb]
            frame += ulaw_silence(fb - len(frame))
            self._enqueue(
                inbound_media_message(
                    sequence_number=self._next_seq(),
                    stream_sid=cfg.stream_sid,
                    chunk=n + 1,
                    timestamp_ms=now_ms,
                    ulaw=frame,
                ),
                "media",
            )
            self.record.sent_ulaw += frame
            self._play_tick()
            self._notify()
            n += 1

    # -- playback (§1.5, §2) -----------------------------------------------------------------------

    def _play_tick(self) -> None:
        """Play ``frame_ms`` of queued audio, echoing marks as playback reaches them; pad with silence."""
        rec, fb = self.record, self._frame_bytes
        base = len(rec.heard_ulaw)
        out = bytearray()
        while True:
            while self._playout and isinstance(self._playout[0], _QueuedMark):
                mark = self._playout.popleft()
                assert isinstance(mark, _QueuedMark)
                self._echo(mark.name, (base + len(out)) / ULAW_BYTES_PER_MS, cleared=False)
            if len(out) == fb or not self._playout:
                break
            audio = self._playout[0]
            assert isinstance(audio, bytes)
            take = min(fb - len(out), len(audio))
            if self._gap_start is not None:
                gap_end = base + len(out)
                rec.playout_gaps.append(
                    PlayoutGap(self._gap_start / ULAW_BYTES_PER_MS, (gap_end - self._gap_start) / ULAW_BYTES_PER_MS)
                )
                self._gap_start = None
            out += audio[:take]
            if take == len(audio):
                self._playout.popleft()
            else:
                self._playout[0] = audio[take:]
            rec.heard_audio_samples += take
            self._audio_seen = True
        if len(out) < fb:
            if self._audio_seen and self._gap_start is None:
                self._gap_start = base + len(out)
            out += ulaw_silence(fb - len(out))
        rec.heard_ulaw += out

    def _echo(self, name: str, media_time_ms: float, *, cleared: bool) -> None:
        msg = mark_echo_message(sequence_number=self._next_seq(), stream_sid=self.config.stream_sid, name=name)
        self._enqueue(msg, "mark")
        self.record.marks_echoed.append(MarkEcho(name, media_time_ms, cleared))

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
        if isinstance(msg, OutboundMedia):
            audio = msg.ulaw
            rec.received.append(Received(now_ms, "media", len(audio)))
            if audio:
                self._playout.append(audio)
        elif isinstance(msg, OutboundMark):
            rec.received.append(Received(now_ms, "mark", msg.name))
            if self._playout:
                self._playout.append(_QueuedMark(msg.name))
            else:
                self._echo(msg.name, now_ms, cleared=False)  # §1.5: nothing buffered, echo at once
        elif isinstance(msg, OutboundClear):
            rec.received.append(Received(now_ms, "clear", ""))
            rec.clears.append(now_ms)
            # §2.3: drop every queued byte, echo every pending mark (flushed, not played).
            for item in self._playout:
                if isinstance(item, _QueuedMark):
                    self._echo(item.name, now_ms, cleared=True)
                else:
                    rec.cleared_audio_samples += len(item)
            self._playout.clear()
            self._gap_start = None
            self._audio_seen = False

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
