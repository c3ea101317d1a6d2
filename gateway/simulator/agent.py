"""The offline EVI-compatible voice agent that the simulator runs per chat (evi-protocol.md §1.4–§8).

Owns :class:`VoiceAgent`, the ``agent`` hook of ``EviSimulator``, configured by
:class:`~gateway.simulator.agent_config.AgentConfig` (script, turn detection, output format, event timeouts,
fault injection): it listens to each session's audio with its ears (``agent_ears.py``: the turn detector of
``vad.py`` on whatever audio has queued up since it last looked, inline for a little and on the session's
worker thread for 500 ms or more, with every utterance bounded at 30 s), transcribes utterances (``voice.py``,
off the event loop), answers from the :class:`~gateway.simulator.agent_script.AgentScript`, and speaks through
the session's ``say``. Per chat group it keeps the conversation, so a chat opened with
``resumed_chat_group_id`` carries on where it stopped (§7).

Behaviour where EVI's is unconfirmed (§5, §6, §8, §11), as chosen here:

- After ``user_interruption`` no ``assistant_end`` is sent for the interrupted turn (the interruption ends
  it); ``AgentConfig.assistant_end_after_interruption`` turns one on.
- ``pause_assistant_message`` stops the response in flight silently (no interruption, no end); ``user_input``
  during a response queues its answer after it; ``assistant_input`` while paused is dropped, and so is the
  inactivity warning (the inactivity close still comes).
- ``user_message.time`` is ms since the chat started, ``user_interruption.time`` a Unix time in ms (as the
  SDK documents it); audio positions are
  counted from the first caller audio (the turn detector runs on audio time, so audio may come faster than
  real time). An utterance with no recognised words sends no ``user_message``. If the caller's audio stops
  mid-utterance, the end-of-turn silence is assumed after ``end_of_turn_silence_ms`` of wall time. An utterance
  that reaches ``max_utterance_ms`` (30 s) is ended there and answered like any other; speech that goes on is
  the next one.
- Farewell: the goodbye turn ends with ``assistant_end``, then ``tool_call`` ``hang_up`` (builtin, no
  response required), then the close. Close codes: every scripted end is 1000 with the reasons below.
- Function tools (§6): a rule with ``tool`` sends a ``tool_call`` (``response_required``) and waits up to
  ``tool_timeout_s`` for the client's ``tool_response`` or ``tool_error``, then speaks its reply with
  ``{tool_result}`` (the content, the error's content, or a sentence saying the tool did not answer).
- At the maximum duration the script's ``max_duration_message`` is spoken (EVI's
  ``on_max_duration_timeout`` event message), then the chat closes.

=========================  ====  ================================================================
reason                     code  when
=========================  ====  ================================================================
``hang_up``                1000  after a rule with ``hang_up = true`` has been sent in full
``inactivity_timeout``     1000  no caller speech for ``inactivity_timeout_s``, a spoken warning,
                                 then ``inactivity_grace_s`` more of silence
``max_duration_timeout``   1000  the chat lasted ``max_duration_s``
``simulated close``        any   fault injection ``close_after_s`` (``close_code``, default 1011)
=========================  ====  ================================================================
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.errors import ConfigError, SessionClosedError
from gateway.simulator.agent_config import OUTPUT_RATES_HZ, AgentConfig, for_evi_config
from gateway.simulator.agent_ears import MAX_BATCH_MS, Ears
from gateway.simulator.agent_script import fill, split_sentences
from gateway.simulator.evi_session import AudioChunk, EviSession, Inbound, fake_prosody
from gateway.simulator.vad import SpeechEnded, SpeechOngoing, SpeechStarted
from gateway.simulator.voice import DurationRecognizer, Recognizer, Synthesizer, make_recognizer, make_synthesizer
from gateway.simulator.wavgen import tone_pcm16
from gateway.wire import evi_messages as evi

__all__ = ["OUTPUT_RATES_HZ", "AgentConfig", "Conversation", "VoiceAgent"]

log = logging.getLogger(__name__)

HANG_UP_TOOL = "hang_up"
_CHEAP_MS_PER_CHAR = 65  # about eSpeak's 170 words per minute
_CHEAP_TONE_HZ = 220.0
_SPEECH_WAIT_S = 3600.0

_Step = Callable[[], Awaitable[None]]


@functools.lru_cache(maxsize=128)
def _cheap_speech(duration_ms: int, rate_hz: int) -> bytes:
    return tone_pcm16(_CHEAP_TONE_HZ, duration_ms, rate_hz, amplitude=0.2)


@dataclass(slots=True)
class Conversation:
    """One chat group's history (§7): ``(role, text)`` events, oldest first, and the caller's turn count."""

    chat_group_id: str
    history: list[tuple[str, str]] = field(default_factory=list)
    user_turns: int = 0

    def last(self, role: str) -> str | None:
        """The most recent event text of ``role``."""
        return next((text for r, text in reversed(self.history) if r == role), None)


class VoiceAgent:
    """The simulator's agent hook: ``EviSimulator(agent_config=...)`` runs one per session."""

    def __init__(self, config: AgentConfig | None = None) -> None:
        self.config = config or AgentConfig()
        self.synthesizer: Synthesizer | None = None
        self.recognizer: Recognizer = DurationRecognizer()
        self.conversations: OrderedDict[str, Conversation] = OrderedDict()
        self._prepared = False

    async def prepare(self) -> None:
        """Pick and load the speech backends (off the event loop); ConfigError if a forced one is missing."""
        if self._prepared:
            return
        if not self.config.cheap:
            self.synthesizer = await asyncio.to_thread(make_synthesizer, self.config.synthesizer)
            self.recognizer = await asyncio.to_thread(
                make_recognizer, self.config.recognizer, phrases=self.config.script.phrases
            )
        self._prepared = True

    def conversation(self, session: EviSession) -> tuple[Conversation, bool]:
        """The chat group's conversation and whether it existed (a real resume)."""
        group = session.chat_group_id
        existing = self.conversations.get(group)
        if existing is not None and session.resumed_chat_group_id is not None:
            self.conversations.move_to_end(group)
            return existing, True
        conversation = Conversation(group)
        self.conversations[group] = conversation
        while len(self.conversations) > self.config.max_chat_groups:
            self.conversations.popitem(last=False)
        return conversation, False

    async def __call__(self, session: EviSession) -> None:
        await self.prepare()
        await _AgentRun(self, session).run()


class _AgentRun:
    """The agent on one session: ears (turn detection, transcription), mouth (responses) and clocks."""

    def __init__(self, agent: VoiceAgent, session: EviSession) -> None:
        self.agent = agent
        self.cfg = for_evi_config(agent.config, session.evi_config) if session.evi_config else agent.config
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.conversation, self.resumed = agent.conversation(session)
        self.inbox = session.listen()
        self.paused = False
        self.pending_text: str | None = None
        self.responses: list[asyncio.Task[None]] = []
        self.background: list[asyncio.Task[None]] = []
        self.turn_lock = asyncio.Lock()
        self.last_activity_s = self.loop.time()
        self.user_activity = 0
        self.interruptions = 0
        self.ears = Ears(self.cfg.turn, f"chat {session.chat_id}")
        self.next_interim_ms = 0.0
        self.interim_task: asyncio.Task[None] | None = None
        self.tool_answers: dict[str, asyncio.Future[str]] = {}

    # -- lifecycle ------------------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.cfg
        session = self.session
        timers: list[tuple[float | None, _Step]] = [
            (cfg.max_duration_s, self._max_duration),
            (cfg.close_after_s, functools.partial(session.close, cfg.close_code, "simulated close")),
            (cfg.error_after_s, functools.partial(session.send_error, cfg.error_code, "simulated_error", "Simulated.")),
            (cfg.drop_after_s, self._drop),
        ]
        try:
            for delay_s, action in timers:
                if delay_s is not None:
                    self._background(functools.partial(self._after, delay_s, action))
            if cfg.inactivity_timeout_s is not None:
                self._background(
                    functools.partial(self._watch_inactivity, cfg.inactivity_timeout_s, cfg.inactivity_grace_s)
                )
            self._open()
            await self._consume()
        finally:
            for task in self.responses + self.background:
                task.cancel()
            self.ears.close()
            log.info(
                "EVI agent chat %s ended: %d caller turns in group, %d interruptions",
                self.session.chat_id,
                self.conversation.user_turns,
                self.interruptions,
            )

    def _background(self, step: _Step) -> None:
        self.background.append(asyncio.create_task(self._guard(step)))

    async def _guard(self, step: _Step) -> None:
        # A factory, not a coroutine object: a task cancelled before it starts leaves nothing un-awaited.
        try:
            await step()
        except SessionClosedError:
            pass
        except Exception:
            log.exception("EVI agent failed in chat %s; closing it", self.session.chat_id)
            await self.session.close(1011, "simulator agent failed")

    async def _after(self, delay_s: float, action: _Step) -> None:
        await asyncio.sleep(delay_s)
        await action()

    async def _drop(self) -> None:
        self.session.drop()

    def _open(self) -> None:
        # §1.4: with on_new_chat enabled EVI speaks first; a resumed group gets the resume line instead.
        script = self.cfg.script
        conversation = self.conversation
        if self.resumed:
            line = fill(script.resume_greeting, "", conversation.last("user"), conversation.user_turns)
        else:
            line = fill(script.greeting)
        if line:
            self._remember("assistant", " ".join(line))
            self._respond(line)

    # -- inbound --------------------------------------------------------------------------------------

    async def _consume(self) -> None:
        flush_s = (self.cfg.turn.end_of_turn_silence_ms + 2 * self.cfg.turn.frame_ms) / 1000
        taken: Inbound | None = None
        while True:
            try:
                async with asyncio.timeout(flush_s if self.ears.speaking and taken is None else None):
                    item = taken if taken is not None else await self.inbox.get()
            except TimeoutError:
                # The caller stopped sending mid-utterance: its silence ends the turn.
                await self._on_mono([bytes(2 * round(flush_s * self.ears.rate_hz))])
                continue
            taken = None
            match item:
                case AudioChunk():
                    batch, taken = self._queued_audio(item)
                    await self._on_audio(batch)
                case evi.UserInput():
                    await self._on_user_input(item.text)
                case evi.AssistantInput():
                    self._on_assistant_input(item.text)
                case evi.PauseAssistantMessage():
                    await self._pause()
                case evi.ResumeAssistantMessage():
                    self._resume()
                case evi.ToolResponseMessage():
                    self._tool_answered(item.tool_call_id, item.content)
                    log.info("EVI agent: tool_response for %s", item.tool_call_id)
                case evi.ToolErrorMessage():
                    self._tool_answered(item.tool_call_id, item.content or item.error)
                    log.info("EVI agent: tool_error for %s: %s", item.tool_call_id, item.error)
                case _:
                    pass

    def _queued_audio(self, first: AudioChunk) -> tuple[list[AudioChunk], Inbound | None]:
        """``first`` and the audio queued behind it in its format, up to MAX_BATCH_MS: one hand-over for what a
        busy loop let pile up. Also the first other item taken from the inbox, to be handled next."""
        batch, batch_ms = [first], first.audio.pcm_ms(len(first.pcm16))
        while batch_ms < MAX_BATCH_MS and not self.inbox.empty():
            item = self.inbox.get_nowait()
            if not isinstance(item, AudioChunk) or item.audio != first.audio:
                return batch, item
            batch.append(item)
            batch_ms += item.audio.pcm_ms(len(item.pcm16))
        return batch, None

    async def _on_audio(self, batch: list[AudioChunk]) -> None:
        audio = batch[0].audio
        try:
            if not self.ears.hears(audio, self.session.elapsed_ms()):
                return
        except ConfigError as exc:
            await self.session.send_error("E0200", "audio_format_unsupported", f"Cannot detect speech: {exc}")
            return
        channels = audio.channels
        chunks = [chunk.pcm16 for chunk in batch]
        if channels > 1:  # the first channel of each chunk's whole frames
            chunks = [
                np.frombuffer(pcm[: len(pcm) - len(pcm) % (2 * channels)], dtype="<i2")[::channels].tobytes()
                for pcm in chunks
            ]
        await self._on_mono(chunks)

    async def _on_mono(self, chunks: list[bytes]) -> None:
        for heard in await self.ears.hear(chunks):
            for event in heard.events:
                match event:
                    case SpeechStarted():
                        self._user_active()
                        self.next_interim_ms = event.at_ms + self.cfg.interim_interval_ms
                    case SpeechOngoing():
                        # §5: speech lasting min_interruption_ms during a response interrupts it.
                        if self._responding():
                            await self._interrupt()
                    case SpeechEnded():
                        self._user_active()
                        self._spawn_turn(functools.partial(self._final, event.start_ms, event.end_ms, event.pcm16))
            if heard.utterance_start_ms is not None and self.session.verbose_transcription:
                self._maybe_interim(heard.utterance_start_ms, heard.position_ms)
        self.ears.trim()

    def _maybe_interim(self, start_ms: float, position_ms: float) -> None:
        """A partial transcript of the utterance so far, once per ``interim_interval_ms`` of it."""
        if position_ms < self.next_interim_ms:
            return
        interval_ms = self.cfg.interim_interval_ms
        self.next_interim_ms += interval_ms * (1 + int((position_ms - self.next_interim_ms) // interval_ms))
        # A real recognizer costs CPU per partial: at most one in flight, the rest are skipped.
        if not self.agent.recognizer.real or self.interim_task is None or self.interim_task.done():
            partial = self.ears.between(start_ms - self.cfg.turn.prefix_padding_ms, position_ms)
            self.interim_task = self._spawn_turn(functools.partial(self._interim, start_ms, position_ms, partial))

    def _spawn_turn(self, step: _Step) -> asyncio.Task[None]:
        task = asyncio.create_task(self._guard(step))
        self.background.append(task)
        task.add_done_callback(self.background.remove)
        return task

    async def _transcribe(self, pcm: bytes) -> str:
        recognizer = self.agent.recognizer
        rate_hz = self.ears.rate_hz
        if recognizer.real:
            return await asyncio.to_thread(recognizer.transcribe, pcm, rate_hz)
        return recognizer.transcribe(pcm, rate_hz)

    async def _interim(self, start_ms: float, position_ms: float, pcm: bytes) -> None:
        # §3: interim transcripts of the speech so far; the turn lock keeps them before the final one.
        async with self.turn_lock:
            text = await self._transcribe(pcm)
            if text:
                await self._send_user_message(text, start_ms, position_ms, interim=True)

    async def _final(self, start_ms: float, end_ms: float, pcm: bytes) -> None:
        async with self.turn_lock:
            text = await self._transcribe(pcm)
            if not text.strip():
                log.info("EVI agent: utterance at %.0f ms had no words; no user_message", start_ms)
                return
            log.debug("EVI agent chat %s heard %r (%.0f-%.0f ms)", self.session.chat_id, text, start_ms, end_ms)
            await self._send_user_message(text, start_ms, end_ms, interim=False)
            self._user_turn(text)

    async def _send_user_message(self, text: str, start_ms: float, end_ms: float, *, interim: bool) -> None:
        # §3: time is ms since the chat started; audio positions are offset by when the audio began.
        begin = round(self.ears.origin_ms + start_ms)
        interval = evi.MillisecondInterval(begin=begin, end=max(begin, round(self.ears.origin_ms + end_ms)))
        await self.session.send_message(
            evi.UserMessage(
                message=evi.ChatMessage(role="user", content=text),
                models=fake_prosody(f"{text}@{begin}"),
                time=interval,
                from_text=False,
                interim=interim,
            )
        )

    async def _on_user_input(self, text: str) -> None:
        # §2.3: text is a user turn without prosody.
        self._user_active()
        async with self.turn_lock:
            now_ms = self.session.elapsed_ms()
            await self.session.send_message(
                evi.UserMessage(
                    message=evi.ChatMessage(role="user", content=text),
                    models=evi.Inference(),
                    time=evi.MillisecondInterval(begin=now_ms, end=now_ms),
                    from_text=True,
                    interim=False,
                )
            )
            self._user_turn(text)

    def _on_assistant_input(self, text: str) -> None:
        # §2.4: spoken verbatim; dropped while paused (§2.7: no assistant messages while paused).
        if self.paused:
            log.info("EVI agent: assistant_input dropped while paused")
            return
        sentences = tuple(split_sentences(text))
        if sentences:
            self._remember("assistant", " ".join(sentences))
            self._respond(sentences, from_text=True)

    def _user_turn(self, text: str) -> None:
        conversation = self.conversation
        last_user = conversation.last("user")
        conversation.user_turns += 1
        self._remember("user", text)
        if self.paused:
            self.pending_text = text  # §2.7: on resume only the last user message is answered
            return
        self._answer(text, last_user)

    def _answer(self, text: str, last_user: str | None) -> None:
        turns = self.conversation.user_turns
        reply = self.cfg.script.reply_to(text, last_user=last_user, turns=turns)
        if reply.tool is not None:
            fill_in = functools.partial(fill, reply.template, text, last_user, turns)
            step = functools.partial(self._call_tool, reply.tool, dict(reply.arguments or {}), fill_in, reply.hang_up)
            self._background(step)
            return
        self._remember("assistant", " ".join(reply.sentences))
        self._respond(reply.sentences, hang_up=reply.hang_up)

    async def _call_tool(
        self, name: str, arguments: dict[str, object], reply: Callable[..., tuple[str, ...]], hang_up: bool
    ) -> None:
        """§6: send a function tool_call, wait for its answer (bounded), then say the reply with the result."""
        tool_call_id = f"toolu_{uuid.uuid4().hex[:20]}"
        answer = self.loop.create_future()
        self.tool_answers[tool_call_id] = answer
        self._remember("tool", name)
        message = evi.ToolCallMessage(
            name=name,
            parameters=json.dumps(arguments),
            tool_call_id=tool_call_id,
            response_required=True,
            tool_type="function",
        )
        await self.session.send_message(message)
        try:
            result = await asyncio.wait_for(answer, self.cfg.tool_timeout_s)
        except TimeoutError:
            result = "Sorry, I could not get an answer from our systems."
        finally:
            self.tool_answers.pop(tool_call_id, None)
        sentences = reply(tool_result=result) or ("Done.",)
        self._remember("assistant", " ".join(sentences))
        self._respond(sentences, hang_up=hang_up)

    def _tool_answered(self, tool_call_id: str, content: str) -> None:
        self._remember("tool", content)
        answer = self.tool_answers.get(tool_call_id)
        if answer is not None and not answer.done():
            answer.set_result(content)

    def _remember(self, role: str, text: str) -> None:
        history = self.conversation.history
        history.append((role, text))
        if len(history) > self.cfg.history_limit:
            del history[: len(history) - self.cfg.history_limit]

    async def _pause(self) -> None:
        self.paused = True
        await self._stop_responses()
        await self.session.stop_speech()

    def _resume(self) -> None:
        self.paused = False
        text, self.pending_text = self.pending_text, None
        if text is not None:
            history = [t for r, t in self.conversation.history if r == "user"]
            self._answer(text, history[-2] if len(history) > 1 else None)

    # -- activity and events ----------------------------------------------------------------------------

    def _user_active(self) -> None:
        self.user_activity += 1
        self.last_activity_s = self.loop.time()

    def _responding(self) -> bool:
        return any(not t.done() for t in self.responses) or self.session.speaking

    async def _watch_inactivity(self, timeout_s: float, grace_s: float) -> None:
        # §8: after the inactivity timeout EVI speaks a warning and ends the chat 15 s later if still silent.
        while True:
            wait_s = self.last_activity_s + timeout_s - self.loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            if self.responses:
                await asyncio.wait(self.responses)
                self.last_activity_s = self.loop.time()
                continue
            if self.ears.speaking:
                self.last_activity_s = self.loop.time()
                continue
            seen = self.user_activity
            warning = fill(self.cfg.script.inactivity_warning)
            if not warning:  # §8: with no inactivity message the chat ends at the timeout itself
                await self.session.close(1000, "inactivity_timeout")
                return
            if not self.paused:
                self._respond(warning)
                await asyncio.wait(self.responses)
            await asyncio.sleep(grace_s)
            if seen == self.user_activity and not self.ears.speaking:
                await self.session.close(1000, "inactivity_timeout")
                return

    # -- responses --------------------------------------------------------------------------------------

    def _respond(self, sentences: tuple[str, ...], *, from_text: bool = False, hang_up: bool = False) -> None:
        previous = [t for t in self.responses if not t.done()]
        task = asyncio.create_task(self._guard(functools.partial(self._speak, previous, sentences, from_text, hang_up)))
        self.responses.append(task)
        task.add_done_callback(self.responses.remove)

    async def _speak(
        self, previous: list[asyncio.Task[None]], sentences: tuple[str, ...], from_text: bool, hang_up: bool
    ) -> None:
        if previous:
            await asyncio.wait(previous)  # responses go out whole, one after another
        session = self.session
        rate_hz = self.cfg.output_rate_hz
        budget = self.cfg.stall_mid_response
        said = []
        for index, sentence in enumerate(sentences):
            pcm = await self._synthesize(sentence)
            stall: int | None = None
            if budget is not None:
                chunks = session.chunk_count(len(pcm), rate_hz)
                if chunks >= budget:
                    stall = budget
                budget -= min(budget, chunks)
            rid = await session.say(
                pcm,
                rate_hz,
                text=sentence,
                from_text=from_text,
                delay_first_audio_ms=self.cfg.delay_first_audio_ms if index == 0 else 0.0,
                stall_after_chunks=stall,
                end_turn=index == len(sentences) - 1 and stall is None,
            )
            said.append(rid)
            if stall is not None:
                break
        try:
            outcomes = [(await session.wait_said(rid, _SPEECH_WAIT_S)).outcome for rid in said]
        finally:
            for rid in said:
                session.forget_speech(rid)
        self.last_activity_s = self.loop.time()
        if hang_up and outcomes and all(o == "completed" for o in outcomes):
            await self._hang_up()

    async def _synthesize(self, text: str) -> bytes:
        rate_hz = self.cfg.output_rate_hz
        synthesizer = self.agent.synthesizer
        if synthesizer is None:
            duration_ms = _CHEAP_MS_PER_CHAR * len(text) // 20 * 20
            return _cheap_speech(duration_ms, rate_hz)
        if synthesizer.real:
            return await asyncio.to_thread(synthesizer.synthesize, text, rate_hz)
        return synthesizer.synthesize(text, rate_hz)

    async def _stop_responses(self) -> None:
        pending = [t for t in self.responses if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _interrupt(self) -> None:
        # §5: stop generating, send nothing more of the interrupted ids, then user_interruption.
        self.interruptions += 1
        await self._stop_responses()
        await self.session.interrupt(then_assistant_end=self.cfg.assistant_end_after_interruption)

    async def _max_duration(self) -> None:
        # §8: with on_max_duration_timeout on, EVI says its line before the chat ends.
        line = fill(self.cfg.script.max_duration_message)
        await self._stop_responses()
        if line and not self.paused:
            self._remember("assistant", " ".join(line))
            self._respond(line)
            await asyncio.wait(self.responses)
        await self.session.close(1000, "max_duration_timeout")

    async def _hang_up(self) -> None:
        # §6: the built-in hang_up tool; the socket closes once the goodbye's audio has been sent.
        self._remember("tool", HANG_UP_TOOL)
        await self.session.send_message(
            evi.ToolCallMessage(
                name=HANG_UP_TOOL,
                parameters="{}",
                tool_call_id=f"toolu_{uuid.uuid4().hex[:20]}",
                response_required=False,
                tool_type="builtin",
            )
        )
        await self.session.close(1000, "hang_up")
