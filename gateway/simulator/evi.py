"""An EVI-compatible chat server for tests, demos and load tests (evi-protocol.md §1–§5, §8).

Owns: the ``/v0/evi/chat`` WebSocket handshake (path, API key / access token auth, query recording),
one :class:`EviSession` per connection that records everything the client sends, and scripted server
behaviour: speech turns (``say``), barge-in (``interrupt``) and faults (raw frames, errors, closes, a
dropped TCP connection, delayed or stalled audio). Messages are built and parsed with the gateway's own
EVI wire models; tests check them against the official SDK.

Growth path: an ``agent`` coroutine runs once per session and drives it through the same public methods
(``wait_audio_ms``, ``wait_message``, ``say``, ``interrupt``); the offline agent (voice activity
detection, ASR, TTS) plugs in there.

Error codes the simulator sends (§8; EVI publishes codes, not slugs, so the slugs are ours):

=====  ============================  ==============================================================
code   slug                          when
=====  ============================  ==============================================================
E0100  invalid_json                  a text frame is not JSON
E0101  invalid_message               valid JSON but not a valid message (no ``type``, bad field)
E0200  audio_format_not_declared     audio before any ``session_settings.audio`` (query or message);
                                     §4.1: raw PCM with no declared format is not parseable media
E0201  invalid_base64                ``audio_input.data`` is not base64
=====  ============================  ==============================================================

An unknown ``type`` is recorded and ignored (what EVI does is unconfirmed; DESIGN.md: never fatal).
The session stays open after every error. Audio sent before it was declared is not kept.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import random
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Literal, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.errors import AudioFormatError, GatewayError, UpstreamProtocolError
from gateway.ids import ResponseId
from gateway.logs import redacting_logger
from gateway.simulator.wavgen import wav_bytes
from gateway.wire import evi_messages as evi
from gateway.wire.evi_messages import ClientMessage, UnknownMessage

__all__ = [
    "AUDIO_NOT_DECLARED",
    "CHAT_PATH",
    "INVALID_BASE64",
    "INVALID_JSON",
    "INVALID_MESSAGE",
    "MAX_MESSAGE_BYTES",
    "Agent",
    "AuthMethod",
    "DeclaredAudio",
    "ErrorKind",
    "EviSession",
    "EviSimulator",
    "QueryTree",
    "SessionClosedError",
    "SpeechOutcome",
    "SpeechResult",
    "serve_simulator",
]

logger = logging.getLogger(__name__)

CHAT_PATH = "/v0/evi/chat"  # §1.1
MAX_MESSAGE_BYTES = 16 * 2**20  # §8: 16 MB per message
UNAUTHORIZED_TEXT = "Websocket initialized with invalid credentials.\n"  # §1.3: what the SDK reports for 401

AuthMethod: TypeAlias = Literal["header", "query", "token", "none"]
SpeechOutcome: TypeAlias = Literal["completed", "interrupted", "stalled", "closed"]
QueryTree: TypeAlias = dict[str, "str | QueryTree"]
Agent: TypeAlias = Callable[["EviSession"], Awaitable[None]]

_BRACKET_KEY = re.compile(r"^session_settings((?:\[[^\[\]]*\])+)$")


class SessionClosedError(GatewayError):
    """A simulator session closed while a test was waiting for something from its client."""


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """An EVI error code with the slug the simulator pairs it with (see the module table)."""

    code: str
    slug: str
    message: str


INVALID_JSON = ErrorKind("E0100", "invalid_json", "Request is not valid JSON.")
INVALID_MESSAGE = ErrorKind("E0101", "invalid_message", "Message must be a JSON object with a string 'type'.")
AUDIO_NOT_DECLARED = ErrorKind(
    "E0200",
    "audio_format_not_declared",
    "Audio received before its format was declared; send session_settings.audio "
    "(encoding, sample_rate, channels) first.",
)
INVALID_BASE64 = ErrorKind("E0201", "invalid_base64", "audio_input.data is not valid base64.")


@dataclass(frozen=True, slots=True)
class DeclaredAudio:
    """The caller's audio format as declared by query (§1.2) or ``session_settings`` message (§2.2)."""

    encoding: str
    rate_hz: int
    channels: int
    source: Literal["query", "session_settings"]

    def pcm_ms(self, n_bytes: int) -> float:
        """Duration of ``n_bytes`` of 16-bit PCM in this format."""
        return n_bytes * 1000 / (2 * self.channels * self.rate_hz)


@dataclass(frozen=True, slots=True)
class SpeechResult:
    """How a scripted response ended; ``chunks_sent`` counts ``audio_output`` frames handed to the socket."""

    response_id: ResponseId
    outcome: SpeechOutcome
    chunks_sent: int


@dataclass(frozen=True, slots=True)
class _SpeechPlan:
    """What one ``say`` will send."""

    chunks: tuple[bytes, ...]
    rate_hz: int
    channels: int
    text: str
    delay_first_audio_ms: float
    stall_after_chunks: int | None
    end_turn: bool
    extra_wav_chunks: bool


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("EVI simulator response task failed", exc_info=task.exception())


@dataclass(slots=True)
class _Speech:
    """Book-keeping of one ``say`` while its task runs."""

    response_id: ResponseId
    outcome: SpeechOutcome = "completed"
    chunks_sent: int = 0
    task: asyncio.Task[None] | None = None


def _parse_session_settings_query(pairs: list[tuple[str, str]]) -> QueryTree:
    """§1.2: ``session_settings[audio][sample_rate]=8000`` → ``{"audio": {"sample_rate": "8000"}}``."""
    tree: QueryTree = {}
    for key, value in pairs:
        match = _BRACKET_KEY.match(key)
        if match is None:
            continue
        path = match.group(1)[1:-1].split("][")
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return tree


def _query_audio(tree: QueryTree) -> DeclaredAudio | None:
    audio = tree.get("audio")
    if not isinstance(audio, dict):
        return None
    rate = audio.get("sample_rate")
    channels = audio.get("channels", "1")
    encoding = audio.get("encoding", "linear16")
    if not (isinstance(rate, str) and isinstance(channels, str) and isinstance(encoding, str)):
        return None
    if not (rate.isdigit() and channels.isdigit()) or int(rate) == 0 or int(channels) == 0:
        return None
    return DeclaredAudio(encoding=encoding, rate_hz=int(rate), channels=int(channels), source="query")


def _fake_prosody(seed: str) -> evi.Inference:
    rng = random.Random(seed)
    scores = {name: round(rng.random() * 0.3, 4) for name in evi.EMOTION_NAMES}
    return evi.Inference(prosody=evi.ProsodyInference(scores=scores))


class EviSession:
    """One chat connection: what the client sent, plus scripted server behaviour (§1.4–§5)."""

    def __init__(
        self,
        simulator: EviSimulator,
        ws: ServerConnection,
        index: int,
        auth: AuthMethod,
        query_pairs: list[tuple[str, str]],
        headers: Headers,
    ) -> None:
        self.index = index
        self.auth: AuthMethod = auth
        self.query_pairs = query_pairs
        self.query: dict[str, str] = dict(query_pairs)
        self.headers = headers
        self.config_id = self.query.get("config_id")
        self.resumed_chat_group_id = self.query.get("resumed_chat_group_id")
        self.session_settings_query: QueryTree = _parse_session_settings_query(query_pairs)
        self.chat_id = str(uuid.uuid4())
        self.chat_group_id = self.resumed_chat_group_id or str(uuid.uuid4())  # §7: resume keeps the group
        self.request_id = uuid.uuid4().hex
        self.received: list[ClientMessage | UnknownMessage] = []
        self.session_settings: list[evi.SessionSettings] = []
        self.user_inputs: list[str] = []
        self.declared_audio: DeclaredAudio | None = _query_audio(self.session_settings_query)
        self.audio_pcm = bytearray()
        self.audio_ms = 0.0
        self.binary_frames = 0
        self.undeclared_audio_chunks = 0
        self.assistant_paused = False
        self.errors_sent: list[evi.WebSocketError] = []
        self.sent_counts: Counter[str] = Counter()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._simulator = simulator
        self._ws = ws
        self._loop = asyncio.get_running_loop()
        self._started_s = self._loop.time()
        self._changed = asyncio.Event()
        self._speak_lock = asyncio.Lock()
        self._speeches: dict[ResponseId, _Speech] = {}

    def __repr__(self) -> str:
        return f"EviSession(#{self.index}, chat_id={self.chat_id}, {len(self.received)} messages received)"

    # -- time and waiting ---------------------------------------------------------------------------

    def elapsed_ms(self) -> int:
        """Milliseconds since the session was accepted."""
        return round((self._loop.time() - self._started_s) * 1000)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    if self.closed.is_set():
                        raise SessionClosedError(f"session #{self.index} closed before {what}")
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"session #{self.index}: no {what} within {timeout_s} s") from None

    async def wait_audio_ms(self, ms: float, timeout_s: float = 5.0) -> None:
        """Wait until at least ``ms`` of caller audio arrived (measured at the rate declared at the time)."""
        await self._wait_until(lambda: self.audio_ms >= ms, timeout_s, f"{ms} ms of caller audio")

    async def wait_message(
        self, message_type: str, timeout_s: float = 5.0, *, count: int = 1
    ) -> ClientMessage | UnknownMessage:
        """Wait until ``count`` client messages of ``message_type`` arrived; return the ``count``-th."""

        def matching() -> list[ClientMessage | UnknownMessage]:
            return [m for m in self.received if m.type == message_type]

        await self._wait_until(lambda: len(matching()) >= count, timeout_s, f"{count} x {message_type!r}")
        return matching()[count - 1]

    # -- receiving ----------------------------------------------------------------------------------

    async def _run(self, agent: Agent | None) -> None:
        agent_task: asyncio.Task[None] | None = None
        try:
            await self._send(
                evi.ChatMetadata(chat_id=self.chat_id, chat_group_id=self.chat_group_id, request_id=self.request_id)
            )
            if agent is not None:
                agent_task = asyncio.create_task(self._run_agent(agent))
            async for frame in self._ws:
                if isinstance(frame, bytes):
                    await self._on_binary(frame)
                else:
                    await self._on_text(frame)
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason
            for speech in self._speeches.values():
                if speech.task is not None and not speech.task.done():
                    speech.outcome = "closed"
                    speech.task.cancel()
            if agent_task is not None:
                agent_task.cancel()
            self.closed.set()
            self._notify()

    async def _run_agent(self, agent: Agent) -> None:
        try:
            await agent(self)
        except (ConnectionClosed, SessionClosedError):
            pass
        except Exception:
            logger.exception("EVI simulator agent failed in session #%d; closing it", self.index)
            await self._ws.close(1011, "simulator agent failed")

    async def _on_text(self, text: str) -> None:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            await self._reject(INVALID_JSON)
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            await self._reject(INVALID_MESSAGE)
            return
        pcm: bytes | None = None
        if obj["type"] == "audio_input" and isinstance(obj.get("data"), str):
            try:
                pcm = evi.decode_audio_data(obj["data"], "audio_input.data")
            except UpstreamProtocolError:
                await self._reject(INVALID_BASE64)
                return
        try:
            message = evi.validate_client_object(obj)
        except UpstreamProtocolError as exc:
            await self._reject(INVALID_MESSAGE, str(exc))
            return
        self.received.append(message)
        if isinstance(message, evi.AudioInput) and pcm is not None:
            await self._on_audio(pcm)
        elif isinstance(message, evi.SessionSettings):
            self.session_settings.append(message)
            if message.audio is not None:
                audio = message.audio
                self.declared_audio = DeclaredAudio(
                    audio.encoding, audio.sample_rate, audio.channels, "session_settings"
                )
        elif isinstance(message, evi.UserInput):
            self.user_inputs.append(message.text)
        elif isinstance(message, evi.PauseAssistantMessage | evi.ResumeAssistantMessage):
            self.assistant_paused = isinstance(message, evi.PauseAssistantMessage)
        elif isinstance(message, UnknownMessage):
            logger.info("EVI simulator session #%d ignored unknown message type %r", self.index, message.type)

    async def _on_binary(self, frame: bytes) -> None:
        # §2.1: the official microphone clients send raw audio as binary frames in the declared format.
        self.binary_frames += 1
        await self._on_audio(frame)

    async def _on_audio(self, pcm: bytes) -> None:
        if self.declared_audio is None:
            self.undeclared_audio_chunks += 1
            await self._reject(AUDIO_NOT_DECLARED)
            return
        self.audio_pcm += pcm
        self.audio_ms += self.declared_audio.pcm_ms(len(pcm))

    # -- sending ------------------------------------------------------------------------------------

    async def _send(self, message: evi.EviModel) -> None:
        text = message.to_json()
        self.sent_counts[str(getattr(message, "type", "?"))] += 1
        await self._ws.send(text)

    async def send_raw(self, text: str | bytes) -> None:
        """Send one frame exactly as given (text for ``str``, binary for ``bytes``)."""
        await self._ws.send(text)

    async def send_message(self, message: evi.EviModel) -> None:
        """Send any EVI server message model (e.g. ``UserMessage``, ``ToolCallMessage``)."""
        await self._send(message)

    async def _reject(self, kind: ErrorKind, detail: str | None = None) -> None:
        await self.send_error(kind.code, kind.slug, detail or kind.message)

    async def send_error(self, code: str, slug: str, message: str) -> None:
        """Send an EVI ``error`` (§8) carrying this session's request id; the session stays open."""
        error = evi.WebSocketError(code=code, slug=slug, message=message, request_id=self.request_id)
        self.errors_sent.append(error)
        await self._send(error)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket with a close frame and wait for the closing handshake."""
        await self._ws.close(code, reason)
        await self.closed.wait()

    def drop(self) -> None:
        """Abort the TCP connection without a close frame (the client sees 1006)."""
        self._ws.transport.abort()

    # -- scripted speech (§3 typical turn, §4.2, §5) --------------------------------------------------

    async def say(
        self,
        pcm16: bytes,
        rate_hz: int | None = None,
        text: str = "…",
        channels: int = 1,
        *,
        delay_first_audio_ms: float = 0.0,
        stall_after_chunks: int | None = None,
        end_turn: bool = True,
        extra_wav_chunks: bool = False,
    ) -> ResponseId:
        """Start one assistant response in the background and return its id at once.

        Sends ``assistant_message`` (id A), ``audio_output`` chunks (id A, index 0..n, each a whole WAV of
        ``chunk_ms`` at ``rate_hz``), ``assistant_prosody`` and, if ``end_turn``, ``assistant_end``. Responses
        go out one after another in call order. ``stall_after_chunks=n`` sends the first n chunks (all, if
        fewer) and then nothing more for this response (no prosody, no ``assistant_end``).
        """
        rate = self._simulator.output_rate_hz if rate_hz is None else rate_hz
        if rate <= 0 or channels <= 0:
            raise AudioFormatError(f"say() needs a positive rate and channel count, got {rate} Hz, {channels} ch")
        frame_bytes = 2 * channels
        if len(pcm16) % frame_bytes:
            raise AudioFormatError(f"say() PCM is {len(pcm16)} bytes, not whole {channels}-channel 16-bit frames")
        if stall_after_chunks is not None and stall_after_chunks < 0:
            raise ValueError(f"stall_after_chunks must be >= 0, got {stall_after_chunks}")
        chunk_bytes = max(1, round(rate * self._simulator.chunk_ms / 1000)) * frame_bytes
        response_id = ResponseId(f"sim-{uuid.uuid4().hex[:16]}")
        speech = _Speech(response_id)
        self._speeches[response_id] = speech
        plan = _SpeechPlan(
            chunks=tuple(pcm16[i : i + chunk_bytes] for i in range(0, len(pcm16), chunk_bytes)),
            rate_hz=rate,
            channels=channels,
            text=text,
            delay_first_audio_ms=delay_first_audio_ms,
            stall_after_chunks=stall_after_chunks,
            end_turn=end_turn,
            extra_wav_chunks=extra_wav_chunks,
        )
        speech.task = asyncio.create_task(self._speak(speech, plan))
        speech.task.add_done_callback(_log_task_failure)
        return response_id

    async def _speak(self, speech: _Speech, plan: _SpeechPlan) -> None:
        rid = speech.response_id
        try:
            async with self._speak_lock:
                await self._send(
                    evi.AssistantMessage(
                        id=rid,
                        message=evi.ChatMessage(role="assistant", content=plan.text),
                        models=evi.Inference(),
                        from_text=False,
                        is_quick_response=False,
                    )
                )
                if plan.delay_first_audio_ms > 0:
                    await asyncio.sleep(plan.delay_first_audio_ms / 1000)
                # §4.2: EVI produces faster than real time; realtime_factor scales each chunk's duration.
                factor = self._simulator.realtime_factor
                start_s = self._loop.time()
                audio_s = 0.0
                stall = plan.stall_after_chunks
                for index, chunk in enumerate(plan.chunks if stall is None else plan.chunks[:stall]):
                    if factor > 0:
                        await asyncio.sleep(max(0.0, start_s + audio_s * factor - self._loop.time()))
                    else:
                        await asyncio.sleep(0)
                    data = base64.b64encode(
                        wav_bytes(chunk, plan.rate_hz, plan.channels, plan.extra_wav_chunks)
                    ).decode()
                    speech.chunks_sent += 1
                    await self._send(evi.AudioOutput(id=rid, index=index, data=data))
                    audio_s += len(chunk) / (2 * plan.channels * plan.rate_hz)
                if stall is not None:
                    speech.outcome = "stalled"
                    return
                await self._send(evi.AssistantProsody(id=rid, models=_fake_prosody(rid)))
                if plan.end_turn:
                    await self._send(evi.AssistantEnd())
        except ConnectionClosed:
            speech.outcome = "closed"

    async def wait_said(self, response_id: ResponseId, timeout_s: float = 10.0) -> SpeechResult:
        """Wait until the response finished sending (completed, interrupted, stalled or closed)."""
        speech = self._speeches.get(response_id)
        if speech is None or speech.task is None:
            raise KeyError(f"session #{self.index} has no response {response_id!r}")
        done, _ = await asyncio.wait([speech.task], timeout=timeout_s)
        if not done:
            raise TimeoutError(f"session #{self.index}: response {response_id} still sending after {timeout_s} s")
        return SpeechResult(response_id, speech.outcome, speech.chunks_sent)

    async def interrupt(self, *, then_assistant_end: bool = False) -> None:
        """Barge-in (§5): stop every in-flight or queued response, then send ``user_interruption``.

        No ``audio_output`` of a stopped response follows the interruption. ``time`` is ms since session
        start. Whether EVI sends ``assistant_end`` after an interrupted turn is unconfirmed (§11.2), so it is
        optional here.
        """
        pending = [s for s in self._speeches.values() if s.task is not None and not s.task.done()]
        for speech in pending:
            speech.outcome = "interrupted"
            assert speech.task is not None
            speech.task.cancel()
        if pending:
            await asyncio.wait([s.task for s in pending if s.task is not None])
        await self._send(evi.UserInterruption(time=self.elapsed_ms()))
        if then_assistant_end:
            await self._send(evi.AssistantEnd())


class EviSimulator:
    """An EVI chat server on a local port; ``async with EviSimulator() as sim: ... sim.url ...``.

    ``api_key=None`` turns auth off. ``realtime_factor`` scales the pacing of ``audio_output`` chunks:
    0 sends them as fast as possible, 1.0 at real time, 0.5 twice as fast. ``agent`` runs once per session.
    With ``retain_closed_sessions=False`` (long runs) closed sessions leave ``sessions``, so indexes shift.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        output_rate_hz: int = 24000,
        chunk_ms: int = 200,
        realtime_factor: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        agent: Agent | None = None,
        retain_closed_sessions: bool = True,
    ) -> None:
        if output_rate_hz <= 0 or chunk_ms <= 0 or realtime_factor < 0:
            raise ValueError(
                f"EviSimulator needs output_rate_hz > 0, chunk_ms > 0, realtime_factor >= 0; got "
                f"{output_rate_hz}, {chunk_ms}, {realtime_factor}"
            )
        self.api_key = api_key
        self.output_rate_hz = output_rate_hz
        self.chunk_ms = chunk_ms
        self.realtime_factor = realtime_factor
        self.host = host
        self.port = port
        self.agent = agent
        self.retain_closed_sessions = retain_closed_sessions
        self.sessions: list[EviSession] = []
        self.connection_attempts = 0
        self.rejected_attempts = 0
        self._tokens: set[str] = set()
        self._server: Server | None = None
        self._session_added = asyncio.Event()
        self._sessions_started = 0

    async def __aenter__(self) -> EviSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """``ws://host:port/v0/evi/chat`` of the running server."""
        if self._server is None:
            raise RuntimeError("EviSimulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{CHAT_PATH}"

    async def start(self) -> None:
        """Listen; with ``port=0`` the OS picks a free port (read it from ``port`` or ``url``)."""
        if self._server is not None:
            return
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=MAX_MESSAGE_BYTES,
            logger=redacting_logger("gateway.simulator.evi"),
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close every open session (1001 going away)."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    def mint_access_token(self) -> str:
        """Mint a token this simulator accepts as ``access_token`` (§1.3), like Hume's OAuth endpoint."""
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        return token

    async def wait_session(self, index: int = 0, timeout_s: float = 5.0) -> EviSession:
        """Wait until the ``index``-th accepted session (0-based, in accept order) exists and return it."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self.sessions) <= index:
                    await self._session_added.wait()
        except TimeoutError:
            raise TimeoutError(f"no EVI session #{index} within {timeout_s} s") from None
        return self.sessions[index]

    def _authenticate(self, request: Request, query: dict[str, str]) -> AuthMethod | None:
        if self.api_key is None:
            return "none"
        header = request.headers.get(evi.API_KEY_HEADER)
        if header is not None and hmac.compare_digest(header.encode(), self.api_key.encode()):
            return "header"
        key = query.get("api_key")
        if key is not None and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return "query"
        if query.get("access_token") in self._tokens:
            return "token"
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.connection_attempts += 1
        parts = urlsplit(request.path)
        if parts.path != CHAT_PATH:
            self.rejected_attempts += 1
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self._authenticate(request, dict(parse_qsl(parts.query, keep_blank_values=True))) is None:
            self.rejected_attempts += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, UNAUTHORIZED_TEXT)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # set by the handshake before the handler runs
        query_pairs = parse_qsl(urlsplit(ws.request.path).query, keep_blank_values=True)
        auth = self._authenticate(ws.request, dict(query_pairs)) or "none"
        session = EviSession(self, ws, self._sessions_started, auth, query_pairs, ws.request.headers)
        self._sessions_started += 1
        self.sessions.append(session)
        self._session_added.set()
        self._session_added = asyncio.Event()
        try:
            await session._run(self.agent)
        finally:
            if not self.retain_closed_sessions:
                self.sessions.remove(session)


async def serve_simulator(
    host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None, *, agent: Agent | None = None
) -> None:
    """Run an EVI simulator until cancelled (``gateway simulate-evi``); closed sessions are not kept."""
    async with EviSimulator(
        api_key=api_key, host=host, port=port, agent=agent, retain_closed_sessions=False
    ) as simulator:
        logger.info("EVI simulator listening on %s (auth %s)", simulator.url, "on" if api_key else "off")
        await asyncio.Future[None]()
