"""One connection of the EVI-compatible simulator (evi-protocol.md §1.2, §1.4–§5, §8).

Owns :class:`EviSession`: it records everything the client sends (messages, declared audio format, raw
PCM), answers malformed input with EVI ``error`` messages (their codes are listed in
:mod:`gateway.simulator.evi_session_protocol`, with the declared audio format and the handshake's query
parsing, all importable from here too), feeds an optional listener queue (the agent's ears), and sends
scripted server behaviour: speech turns (``say``), barge-in (``interrupt``) and faults (raw frames, errors,
closes, a dropped TCP connection, delayed or stalled audio). Messages are built and parsed with the gateway's
own EVI wire models.

An unknown ``type`` is recorded and ignored (what EVI does is unconfirmed; docs/design.md "Conventions": never fatal).
The session stays open after every error. Audio sent before it was declared is not kept.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from gateway.codecs.g711 import require_pcm16
from gateway.errors import AudioFormatError, SessionClosedError, UpstreamProtocolError
from gateway.ids import ResponseId
from gateway.simulator.chat_socket import ChatSocket
from gateway.simulator.evi_session_protocol import (
    AUDIO_NOT_DECLARED,
    INVALID_BASE64,
    INVALID_JSON,
    INVALID_MESSAGE,
    UNKNOWN_TOOL_CALL,
    AudioChunk,
    DeclaredAudio,
    ErrorKind,
    Inbound,
    QueryTree,
    fake_prosody,
    parse_session_settings_query,
    query_audio,
)
from gateway.simulator.wavgen import wav_bytes
from gateway.wire import evi_messages as evi
from gateway.wire.evi_messages import ClientMessage, UnknownMessage
from gateway.wire.evi_rest_configs import ReturnConfig

__all__ = [
    "AUDIO_NOT_DECLARED",
    "INVALID_BASE64",
    "UNKNOWN_TOOL_CALL",
    "INVALID_JSON",
    "INVALID_MESSAGE",
    "Agent",
    "AudioChunk",
    "AuthMethod",
    "DeclaredAudio",
    "ErrorKind",
    "EviSession",
    "Inbound",
    "QueryTree",
    "SessionHost",
    "SpeechOutcome",
    "SpeechResult",
    "fake_prosody",
    "parse_session_settings_query",
]

logger = logging.getLogger("gateway.simulator.evi")

AuthMethod: TypeAlias = Literal["header", "query", "token", "none"]
SpeechOutcome: TypeAlias = Literal["completed", "interrupted", "stalled", "closed"]
Agent: TypeAlias = Callable[["EviSession"], Awaitable[None]]


class SessionHost(Protocol):
    """What a session reads from its server when it speaks (``EviSimulator`` provides it)."""

    output_rate_hz: int
    chunk_ms: int
    realtime_factor: float
    record_audio: bool


@dataclass(frozen=True, slots=True)
class SpeechResult:
    """How a scripted response ended; ``chunks_sent`` counts ``audio_output`` frames handed to the socket."""

    response_id: ResponseId
    outcome: SpeechOutcome
    chunks_sent: int


@dataclass(frozen=True, slots=True)
class _SpeechPlan:
    chunks: tuple[bytes, ...]
    rate_hz: int
    channels: int
    text: str
    from_text: bool
    delay_first_audio_ms: float
    stall_after_chunks: int | None
    end_turn: bool
    extra_wav_chunks: bool


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("EVI simulator response task failed", exc_info=task.exception())


@dataclass(slots=True)
class _Speech:
    response_id: ResponseId
    outcome: SpeechOutcome = "completed"
    chunks_sent: int = 0
    task: asyncio.Task[None] | None = None


class EviSession:
    """One chat connection: what the client sent, plus scripted server behaviour (§1.4–§5)."""

    def __init__(
        self,
        host: SessionHost,
        ws: ChatSocket,
        index: int,
        auth: AuthMethod,
        query_pairs: list[tuple[str, str]],
        headers: Mapping[str, str],
        *,
        listening: bool = False,
    ) -> None:
        """``listening=True`` starts a listener queue at once, so nothing is missed before ``listen()``."""
        self.index = index
        self.auth: AuthMethod = auth
        self.query_pairs = query_pairs
        self.query: dict[str, str] = dict(query_pairs)
        self.headers = headers
        self.config_id = self.query.get("config_id")
        self.resumed_chat_group_id = self.query.get("resumed_chat_group_id")
        self.verbose_transcription = self.query.get("verbose_transcription", "").lower() == "true"  # §1.2
        self.session_settings_query: QueryTree = parse_session_settings_query(query_pairs)
        custom = self.session_settings_query.get("custom_session_id")
        self.custom_session_id: str | None = custom if isinstance(custom, str) else None
        self.chat_id = str(uuid.uuid4())
        self.chat_group_id = self.resumed_chat_group_id or str(uuid.uuid4())  # §7: resume keeps the group
        self.request_id = uuid.uuid4().hex
        self.received: list[ClientMessage | UnknownMessage] = []
        self.session_settings: list[evi.SessionSettings] = []
        self.user_inputs: list[str] = []
        self.declared_audio: DeclaredAudio | None = query_audio(self.session_settings_query)
        self.audio_pcm = bytearray()
        self.audio_ms = 0.0
        self.binary_frames = 0
        self.undeclared_audio_chunks = 0
        self.assistant_paused = False
        self.errors_sent: list[evi.WebSocketError] = []
        self.awaiting_tools: set[str] = set()
        self.control_plane_messages = 0
        self.evi_config: ReturnConfig | None = None
        """The config the chat was opened with (``config_id``), as the simulator's REST store holds it."""
        """Function tool calls sent and not yet answered (§6)."""
        self.sent_counts: Counter[str] = Counter()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._host = host
        self._ws = ws
        self._loop = asyncio.get_running_loop()
        self._started_s = self._loop.time()
        self._changed = asyncio.Event()
        self._speak_lock = asyncio.Lock()
        self._speeches: dict[ResponseId, _Speech] = {}
        self._listeners: list[asyncio.Queue[Inbound]] = []
        self._early: asyncio.Queue[Inbound] | None = None
        if listening:
            self._early = asyncio.Queue()
            self._listeners.append(self._early)

    def __repr__(self) -> str:
        return f"EviSession(#{self.index}, chat_id={self.chat_id}, {len(self.received)} messages received)"

    # -- time and waiting ---------------------------------------------------------------------------

    def elapsed_ms(self) -> int:
        """Milliseconds since the session was accepted (the chat start)."""
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
        """Wait until ``count`` client messages of ``message_type`` arrived; return the ``count``-th.

        With ``record_audio`` off on the server, ``audio_input`` messages are not kept and cannot be awaited.
        """

        def matching() -> list[ClientMessage | UnknownMessage]:
            return [m for m in self.received if m.type == message_type]

        await self._wait_until(lambda: len(matching()) >= count, timeout_s, f"{count} x {message_type!r}")
        return matching()[count - 1]

    def listen(self) -> asyncio.Queue[Inbound]:
        """A queue of every client message accepted from now on, audio as :class:`AudioChunk`, in order.

        The first call on a session made with ``listening=True`` gets everything since the session began.
        """
        if self._early is not None:
            queue, self._early = self._early, None
            return queue
        queue = asyncio.Queue()
        self._listeners.append(queue)
        return queue

    def _publish(self, item: Inbound) -> None:
        for queue in self._listeners:
            queue.put_nowait(item)

    # -- receiving ----------------------------------------------------------------------------------

    async def run(self, agent: Agent | None) -> None:
        """Serve the connection until it closes: ``chat_metadata`` first (§1.4), then the client's frames."""
        agent_task: asyncio.Task[None] | None = None
        try:
            await self._send(
                evi.ChatMetadata(chat_id=self.chat_id, chat_group_id=self.chat_group_id, request_id=self.request_id)
            )
            if agent is not None:
                agent_task = asyncio.create_task(self._run_agent(agent))
            async for frame in self._ws.frames():
                if isinstance(frame, bytes):
                    await self._on_binary(frame)
                else:
                    await self._on_text(frame)
                self._notify()
        except SessionClosedError:
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
        except SessionClosedError:
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
        if isinstance(message, evi.AudioInput) and pcm is not None:
            if self._host.record_audio:
                self.received.append(message)
            await self._on_audio(pcm)
            return
        if isinstance(message, evi.ToolResponseMessage | evi.ToolErrorMessage):
            # §6: an answer must name a function call this chat sent and has not had answered.
            if message.tool_call_id not in self.awaiting_tools:
                await self._reject(UNKNOWN_TOOL_CALL, f"no tool call {message.tool_call_id!r} awaits an answer")
                return
            self.awaiting_tools.discard(message.tool_call_id)
        self._record(message)
        self._publish(message)

    def inject(self, message: ClientMessage | UnknownMessage) -> None:
        """A message delivered through the control plane (§7): handled as if the client had sent it."""
        self.control_plane_messages += 1
        self._record(message)
        self._publish(message)
        self._notify()

    def _record(self, message: ClientMessage | UnknownMessage) -> None:
        """Keep an accepted client message and what it declares."""
        self.received.append(message)
        if isinstance(message, evi.SessionSettings):
            self.session_settings.append(message)
            if message.custom_session_id is not None:
                self.custom_session_id = message.custom_session_id
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
        if self._host.record_audio:
            self.audio_pcm += pcm
        self.audio_ms += self.declared_audio.pcm_ms(len(pcm))
        if self._listeners:
            self._publish(AudioChunk(pcm, self.declared_audio))

    # -- sending ------------------------------------------------------------------------------------

    async def _send(self, message: evi.EviModel) -> None:
        # §2.2: a custom_session_id set by the client is echoed on server messages.
        if self.custom_session_id is not None and getattr(message, "custom_session_id", "") is None:
            message = message.model_copy(update={"custom_session_id": self.custom_session_id})
        if isinstance(message, evi.ToolCallMessage) and message.tool_type == "function" and message.response_required:
            self.awaiting_tools.add(message.tool_call_id)
        text = message.to_json()
        self.sent_counts[str(getattr(message, "type", "?"))] += 1
        await self._ws.send(text)

    async def send_raw(self, text: str | bytes) -> None:
        """Send one frame exactly as given (text for ``str``, binary for ``bytes``)."""
        await self._ws.send(text)

    async def send_frame(self, data: bytes, *, binary: bool) -> None:
        """Send a hostile peer's frame as is: binary, or a text frame whose bytes need not be UTF-8."""
        if binary:
            await self._ws.send(data)
        else:
            await self._ws.send_text_bytes(data)

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

    async def refuse(self, code: str, slug: str, message: str, close_code: int = 1008) -> None:
        """Answer a connection that cannot become a chat: an ``error``, then a close (no ``chat_metadata``)."""
        try:
            await self.send_error(code, slug, message)
            await self._ws.close(close_code, slug)
        except SessionClosedError:
            pass
        self.close_code, self.close_reason = self._ws.close_code, self._ws.close_reason
        self.closed.set()
        self._notify()

    def drop(self) -> None:
        """Abort the TCP connection without a close frame (the client sees 1006)."""
        self._ws.drop()

    # -- scripted speech (§3 typical turn, §4.2, §5) --------------------------------------------------

    async def say(
        self,
        pcm16: bytes,
        rate_hz: int | None = None,
        text: str = "…",
        channels: int = 1,
        *,
        from_text: bool = False,
        delay_first_audio_ms: float = 0.0,
        stall_after_chunks: int | None = None,
        end_turn: bool = True,
        extra_wav_chunks: bool = False,
    ) -> ResponseId:
        """Start one assistant response in the background and return its id at once.

        Sends ``assistant_message`` (id A, ``from_text`` as given), ``audio_output`` chunks (id A, index
        0..n, each a whole WAV of ``chunk_ms`` at ``rate_hz``), ``assistant_prosody`` and, if ``end_turn``,
        ``assistant_end``. Responses go out one after another in call order. ``stall_after_chunks=n`` sends
        the first n chunks (all, if fewer) and then nothing more for this response (no prosody, no
        ``assistant_end``). Bad arguments raise at the call, before anything is sent.
        """
        rate = self._host.output_rate_hz if rate_hz is None else rate_hz
        if rate <= 0 or channels <= 0:
            raise AudioFormatError(f"say() needs a positive rate and channel count, got {rate} Hz, {channels} ch")
        require_pcm16(pcm16, channels)
        if stall_after_chunks is not None and stall_after_chunks < 0:
            raise ValueError(f"stall_after_chunks must be >= 0, got {stall_after_chunks}")
        step = self._chunk_bytes(rate, channels)
        chunks = tuple(pcm16[i : i + step] for i in range(0, len(pcm16), step))
        response_id = ResponseId(f"sim-{uuid.uuid4().hex[:16]}")
        speech = _Speech(response_id)
        self._speeches[response_id] = speech
        plan = _SpeechPlan(
            chunks, rate, channels, text, from_text,
            delay_first_audio_ms, stall_after_chunks, end_turn, extra_wav_chunks,
        )  # fmt: skip
        speech.task = asyncio.create_task(self._speak(speech, plan))
        speech.task.add_done_callback(_log_task_failure)
        return response_id

    def _chunk_bytes(self, rate_hz: int, channels: int) -> int:
        return max(1, round(rate_hz * self._host.chunk_ms / 1000)) * 2 * channels

    def chunk_count(self, n_bytes: int, rate_hz: int | None = None, channels: int = 1) -> int:
        """How many ``audio_output`` chunks ``say`` cuts ``n_bytes`` of PCM into."""
        return -(-n_bytes // self._chunk_bytes(self._host.output_rate_hz if rate_hz is None else rate_hz, channels))

    async def _speak(self, speech: _Speech, plan: _SpeechPlan) -> None:
        rid = speech.response_id
        try:
            async with self._speak_lock:
                await self._send(
                    evi.AssistantMessage(
                        id=rid,
                        message=evi.ChatMessage(role="assistant", content=plan.text),
                        models=evi.Inference(),
                        from_text=plan.from_text,
                        is_quick_response=False,
                    )
                )
                if plan.delay_first_audio_ms > 0:
                    await asyncio.sleep(plan.delay_first_audio_ms / 1000)
                # §4.2: EVI produces faster than real time; realtime_factor scales each chunk's duration.
                factor = self._host.realtime_factor
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
                await self._send(evi.AssistantProsody(id=rid, models=fake_prosody(rid)))
                if plan.end_turn:
                    await self._send(evi.AssistantEnd())
        except SessionClosedError:
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

    def forget_speech(self, response_id: ResponseId) -> None:
        """Drop the book-keeping of a finished response (long-running agents call this)."""
        speech = self._speeches.get(response_id)
        if speech is not None and (speech.task is None or speech.task.done()):
            del self._speeches[response_id]

    @property
    def speaking(self) -> bool:
        """True while any response is queued or sending."""
        return any(s.task is not None and not s.task.done() for s in self._speeches.values())

    async def stop_speech(self) -> int:
        """Stop every in-flight or queued response without telling the client; returns how many stopped.

        No ``audio_output`` of a stopped response is sent after this returns.
        """
        pending = [s for s in self._speeches.values() if s.task is not None and not s.task.done()]
        for speech in pending:
            speech.outcome = "interrupted"
            assert speech.task is not None
            speech.task.cancel()
        if pending:
            await asyncio.wait([s.task for s in pending if s.task is not None])
        return len(pending)

    async def interrupt(self, *, then_assistant_end: bool = False) -> None:
        """Barge-in (§5): stop every in-flight or queued response, then send ``user_interruption``.

        No ``audio_output`` of a stopped response follows the interruption. ``time`` is ms since session
        start. Whether EVI sends ``assistant_end`` after an interrupted turn is unconfirmed (§11.2), so it is
        optional here.
        """
        await self.stop_speech()
        # The SDK documents user_interruption.time as a Unix timestamp (ms): when the interruption was detected.
        await self._send(evi.UserInterruption(time=int(time.time() * 1000)))
        if then_assistant_end:
            await self._send(evi.AssistantEnd())
