"""The offline EVI-compatible agent: script loading, and whole chats over real sockets checked with the hume SDK."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import re
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from hume.core.pydantic_utilities import parse_obj_as
from hume.empathic_voice import types as sdk
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from gateway.errors import ConfigError
from gateway.simulator.agent import AgentConfig
from gateway.simulator.agent_config import for_evi_config
from gateway.simulator.agent_script import load_agent_script, parse_agent_script, split_sentences
from gateway.simulator.evi import MAX_MESSAGE_BYTES, EviSimulator, serve_simulator, simulate_evi_main
from gateway.simulator.evi_rest_store import RestError, RestStore
from gateway.simulator.vad import TurnParams
from gateway.simulator.voice import CALLER_VOICE, DurationRecognizer, make_synthesizer
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire.evi_messages import ToolErrorMessage, ToolResponseMessage

KEY = "test-key"
HEADERS = {"X-Hume-Api-Key": KEY}
AUDIO_8K = (
    "session_settings%5Baudio%5D%5Bencoding%5D=linear16&session_settings%5Baudio%5D%5Bsample_rate%5D=8000"
    "&session_settings%5Baudio%5D%5Bchannels%5D=1"
)
SDK_CLASS: dict[str, type[Any]] = {
    "chat_metadata": sdk.ChatMetadata,
    "user_message": sdk.UserMessage,
    "assistant_message": sdk.AssistantMessage,
    "audio_output": sdk.AudioOutput,
    "assistant_prosody": sdk.AssistantProsody,
    "assistant_end": sdk.AssistantEnd,
    "user_interruption": sdk.UserInterruption,
    "tool_call": sdk.ToolCallMessage,
    "error": sdk.WebSocketError,
}
ROOT = Path(__file__).resolve().parent.parent
GREETING = load_agent_script().greeting
SILENT_START = dataclasses.replace(load_agent_script(), greeting="")


def agent_config(**overrides: Any) -> AgentConfig:
    """Fast defaults for tests: audio as fast as possible, short turn detection, no inactivity timeout."""
    fields: dict[str, Any] = {
        "realtime_factor": 0.0,
        "turn": TurnParams(end_of_turn_silence_ms=500, min_interruption_ms=300),
        "inactivity_timeout_s": None,
    }
    fields.update(overrides)
    return AgentConfig(**fields)


class Chat:
    """A plain websockets client; every frame it reads must parse with the SDK as the class its type names."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self, timeout_s: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            frame = await self.ws.recv()
        obj = json.loads(frame)
        parsed: object = parse_obj_as(sdk.SubscribeEvent, obj)  # type: ignore[arg-type]
        assert isinstance(parsed, SDK_CLASS[obj["type"]]), (obj["type"], type(parsed))
        return cast(dict[str, Any], obj)

    async def until(self, kind: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Messages up to and including the next one of type ``kind``."""
        out = [await self.recv(timeout_s)]
        while out[-1]["type"] != kind:
            out.append(await self.recv(timeout_s))
        return out

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(obj))

    async def send_audio(self, pcm: bytes, chunk_bytes: int = 320) -> None:
        """8 kHz linear16 in 20 ms audio_input messages, faster than real time (the VAD runs on audio time)."""
        for i in range(0, len(pcm), chunk_bytes):
            await self.send({"type": "audio_input", "data": base64.b64encode(pcm[i : i + chunk_bytes]).decode()})

    async def closed(self, timeout_s: float = 10.0) -> tuple[int, str]:
        """Read until the server closes; return its close code and reason."""
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self.recv(timeout_s)
        assert info.value.rcvd is not None
        return info.value.rcvd.code, info.value.rcvd.reason


@asynccontextmanager
async def chat(sim: EviSimulator, query: str = AUDIO_8K) -> AsyncIterator[tuple[Chat, dict[str, Any]]]:
    """Open a chat; yields the client and its chat_metadata."""
    async with connect(f"{sim.url}?{query}", additional_headers=HEADERS, max_size=MAX_MESSAGE_BYTES) as ws:
        client = Chat(ws)
        metadata = await client.recv()
        assert metadata["type"] == "chat_metadata"
        yield client, metadata


@asynccontextmanager
async def agent_sim(**overrides: Any) -> AsyncIterator[EviSimulator]:
    async with EviSimulator(api_key=KEY, agent_config=agent_config(**overrides)) as sim:
        yield sim


def caller_speech(text: str) -> bytes:
    """eSpeak NG caller audio at 8 kHz with silence around it (the prefix padding needs leading silence)."""
    synthesizer = make_synthesizer(voice=CALLER_VOICE)
    if not synthesizer.real:
        pytest.skip("eSpeak NG is not installed (the 'voice' extra)")
    return bytes(3200) + synthesizer.synthesize(text, 8000) + bytes(9600)


def require_real_ears(sim: EviSimulator) -> None:
    """Skip when pocketsphinx is missing: exact transcripts need real speech recognition."""
    if sim.voice_agent is None or not sim.voice_agent.recognizer.real:
        pytest.skip("pocketsphinx is not installed (the 'voice' extra)")


def wav_info(data_b64: str) -> tuple[int, float]:
    with wave.open(io.BytesIO(base64.b64decode(data_b64)), "rb") as wav:
        return wav.getframerate(), wav.getnframes() / wav.getframerate()


def texts(messages: list[dict[str, Any]], kind: str = "assistant_message") -> list[str]:
    return [m["message"]["content"] for m in messages if m["type"] == kind]


def check_turn(messages: list[dict[str, Any]], rate_hz: int = 24000) -> None:
    """One assistant turn: per sentence a message with its own id, its WAV chunks 0..n, prosody; then the end."""
    assert messages[-1]["type"] == "assistant_end"
    ids: list[str] = []
    for message in messages[:-1]:
        if message["type"] == "assistant_message":
            ids.append(message["id"])
            expected_index = 0
        elif message["type"] == "audio_output":
            assert (message["id"], message["index"]) == (ids[-1], expected_index)
            assert wav_info(message["data"])[0] == rate_hz
            expected_index += 1
        else:
            assert message["type"] == "assistant_prosody" and message["id"] == ids[-1]
    assert len(set(ids)) == len(ids) >= 1


# --- the script --------------------------------------------------------------------------------------


def test_example_config_is_the_bundled_default() -> None:
    """config/agent.example.toml is byte-for-byte the script bundled in the package."""
    bundled = (ROOT / "gateway" / "simulator" / "agent_default.toml").read_bytes()
    assert (ROOT / "config" / "agent.example.toml").read_bytes() == bundled
    assert load_agent_script(ROOT / "config" / "agent.example.toml").rules == load_agent_script(None).rules


def test_default_script_has_greeting_farewell_story_and_echo() -> None:
    """The default script greets, hangs up on goodbye, tells a story of 8 s or more and echoes anything else."""
    script = load_agent_script()
    assert script.greeting and script.inactivity_warning and script.phrases
    farewell = script.reply_to("OK thank you, GOODBYE")
    assert farewell.hang_up and farewell.rule == "farewell"
    story = script.reply_to("can you tell me a long story")
    assert story.rule == "long-story" and len(story.sentences) >= 3 and not story.hang_up
    synthesizer = make_synthesizer()
    if synthesizer.real:
        seconds = sum(len(synthesizer.synthesize(s, 8000)) for s in story.sentences) / 16000
        assert seconds >= 8
    echo = script.reply_to("purple elephants dance")
    assert (echo.rule, echo.sentences, echo.hang_up) == ("fallback", ("You said: purple elephants dance.",), False)


def test_rules_match_in_order_on_whole_words() -> None:
    """The first matching rule answers; keywords match whole words case-insensitively, patterns as regexes."""
    script = parse_agent_script(
        """
        [agent]
        fallback = "Turn {turns}: {transcript}"
        [[rules]]
        name = "hi"
        keywords = ["hi", "good morning"]
        reply = "Hi! Last time: {last_user}."
        [[rules]]
        name = "numbers"
        pattern = "\\\\b[0-9]{3}\\\\b"
        reply = "A number. Noted."
        [[rules]]
        name = "shadowed"
        keywords = ["hi"]
        reply = "never"
        """
    )
    assert script.reply_to("HI there", last_user="x").sentences == ("Hi!", "Last time: x.")
    assert script.reply_to("good morning").sentences == ("Hi!", "Last time: nothing yet.")
    assert script.reply_to("this is it").rule == "fallback"  # "hi" inside "this" is no keyword
    assert script.reply_to("morning good").rule == "fallback"
    assert script.reply_to("call 911 now").sentences == ("A number.", "Noted.")
    assert script.reply_to("call 9110", turns=4).sentences == ("Turn 4: call 9110",)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(whitelist_categories=("L", "Zs")), min_size=1, max_size=40).filter(str.strip))
def test_fallback_echoes_any_transcript(transcript: str) -> None:
    """With no matching rule, the reply is "You said: <transcript>." for any words."""
    script = parse_agent_script('[[rules]]\nkeywords = ["zzqx"]\nreply = "no"')
    reply = script.reply_to(transcript)
    assert (reply.rule, " ".join(reply.sentences)) == ("fallback", f"You said: {transcript.strip()}.")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["One.", "Two!", "Three?", "four", "five,"]), min_size=1, max_size=12))
def test_sentence_split_keeps_every_word(words: list[str]) -> None:
    """Splitting a reply into sentences loses no word and ends every piece but the last with . ! or ?."""
    pieces = split_sentences(" ".join(words))
    assert " ".join(pieces).split() == words
    assert all(p[-1] in ".!?" for p in pieces[:-1])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[agent\ngreeting = 1", "not valid TOML"),
        ("[extra]\nx = 1", "'extra'"),
        ("[agent]\ngreeting = 3", "'agent.greeting'"),
        ("[agent]\ngreting = 'hi'", "'agent.greting'"),
        ("[agent]\nfallback = 'You said {what}'", "{what}"),
        ("[agent]\ngreeting = 'Hi {transcript}'", "{transcript}"),
        ("[recognizer]\nphrases = 'hello'", "'recognizer.phrases'"),
        ("[[rules]]\nkeywords = ['a']", "'rules[0].reply'"),
        ("[[rules]]\nreply = 'x'", "'rules[0]' needs 'keywords' or 'pattern'"),
        ("[[rules]]\nreply = 'x'\npattern = '(unclosed'", "'rules[0].pattern'"),
        ("[[rules]]\nreply = 'x'\nkeywords = ['a']\nhang_up = 'yes'", "'rules[0].hang_up'"),
        ("[[rules]]\nreply = 'x'\nkeywords = ['a']\nmood = 1", "'rules[0].mood'"),
        ("[[rules]]\nreply = 'x'\nkeywords = ['a']\narguments = {a = 1}", "'rules[0].arguments' needs"),
        ("[[rules]]\nreply = 'x'\nkeywords = ['a']\ntool = 'no spaces allowed'", "'rules[0].tool'"),
        ("[[rules]]\nreply = 'It is {tool_result}'\nkeywords = ['a']", "{tool_result}"),
        ("[agent]\nmax_duration_message = 'Bye {turns}'", "{turns}"),
        (
            "[[rules]]\nname = 'a'\nreply = 'x'\nkeywords = ['a']\n[[rules]]\nname = 'a'\nreply = 'y'\npattern = 'b'",
            "a",
        ),
    ],
)
def test_bad_scripts_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    """A bad script raises ConfigError naming the file and the offending key."""
    path = tmp_path / "bad agent.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_agent_script(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_missing_script_file_is_a_config_error(tmp_path: Path) -> None:
    """A script path that does not exist raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="nope.toml"):
        load_agent_script(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "overrides",
    [{"output_rate_hz": 44100}, {"close_code": 1005}, {"chunk_ms": 0}, {"inactivity_timeout_s": 0.0}],
)
def test_agent_config_rejects_bad_values(overrides: dict[str, Any]) -> None:
    """AgentConfig refuses values it cannot honour with a ConfigError naming the field."""
    with pytest.raises(ConfigError, match=next(iter(overrides))):
        AgentConfig(**overrides)


# --- chats ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate_hz", [24000, 48000])
async def test_agent_greets_a_new_chat_first(rate_hz: int) -> None:
    """On a new chat the agent speaks first: one message per sentence, WAV chunks at the asked rate, one end."""
    async with agent_sim(output_rate_hz=rate_hz) as sim, chat(sim) as (client, _):
        turn = await client.until("assistant_end")
    check_turn(turn, rate_hz)
    assert " ".join(texts(turn)) == GREETING and len(texts(turn)) == len(split_sentences(GREETING))
    assert all(m["from_text"] is False for m in turn if m["type"] == "assistant_message")
    assert sum(wav_info(m["data"])[1] for m in turn if m["type"] == "audio_output") > 1.0


async def test_spoken_turn_gets_transcript_and_reply() -> None:
    """Caller speech gives interim user_messages, a final transcript with prosody and times, then a reply."""
    speech = caller_speech("what is the weather like today")
    async with agent_sim() as sim, chat(sim, AUDIO_8K + "&verbose_transcription=true") as (client, _):
        require_real_ears(sim)
        await client.until("assistant_end")
        await client.send_audio(speech)
        heard = await client.until("user_message")
        while heard[-1]["interim"]:
            heard += await client.until("user_message")
        reply = await client.until("assistant_end")
    interims, final = heard[:-1], heard[-1]
    assert final["message"] == {"role": "user", "content": "what is the weather like today"}
    assert final["from_text"] is False and len(final["models"]["prosody"]["scores"]) == 48
    assert 0 <= final["time"]["begin"] < final["time"]["end"]
    assert interims and all(m["interim"] and m["time"]["begin"] == final["time"]["begin"] for m in interims)
    assert [m["time"]["end"] for m in interims] == sorted({m["time"]["end"] for m in interims})
    assert interims[-1]["time"]["end"] <= final["time"]["end"] + 500
    check_turn(reply)
    assert "sunny" in " ".join(texts(reply))


@pytest.mark.parametrize("end_after_interruption", [False, True])
async def test_caller_speech_interrupts_a_long_reply(end_after_interruption: bool) -> None:
    """Speech during the long story gives user_interruption, no more audio of its ids, then a new reply."""
    speech = caller_speech("tell me something else")
    async with (
        agent_sim(
            script=SILENT_START, realtime_factor=0.5, assistant_end_after_interruption=end_after_interruption
        ) as sim,
        chat(sim) as (client, _),
    ):
        require_real_ears(sim)
        await client.send({"type": "user_input", "text": "tell me a story"})
        story = await client.until("audio_output")
        await client.send_audio(speech)
        cut = await client.until("user_interruption")
        ended = (await client.recv())["type"] == "assistant_end" if end_after_interruption else False
        after = await client.until("assistant_end")
    story_ids = {m["id"] for m in story + cut if m["type"] in ("assistant_message", "audio_output")}
    assert "assistant_end" not in [m["type"] for m in story + cut]
    assert ended is end_after_interruption
    assert all(m.get("id") not in story_ids for m in after)
    assert isinstance(cut[-1]["time"], int) and cut[-1]["time"] > 0
    assert after[0]["type"] == "user_message" and after[0]["message"]["content"] == "tell me something else"
    check_turn(after[1:])
    assert "something short" in " ".join(texts(after))


async def test_farewell_speaks_goodbye_then_hangs_up() -> None:
    """A goodbye gets the goodbye turn in full, then tool_call hang_up (builtin, no response), then close 1000."""
    async with agent_sim() as sim, chat(sim) as (client, _):
        await client.until("assistant_end")
        await client.send({"type": "user_input", "text": "thank you goodbye"})
        heard = await client.until("user_message")
        goodbye = await client.until("assistant_end")
        call = await client.recv()
        code, reason = await client.closed()
    assert heard[-1]["from_text"] is True
    check_turn(goodbye)
    assert " ".join(texts(goodbye)) == "Goodbye! Thanks for calling."
    assert {k: call[k] for k in ("type", "name", "tool_type", "response_required", "parameters")} == {
        "type": "tool_call",
        "name": "hang_up",
        "tool_type": "builtin",
        "response_required": False,
        "parameters": "{}",
    }
    assert (code, reason) == (1000, "hang_up")


async def test_user_input_and_assistant_input() -> None:
    """user_input is a text turn (from_text, no prosody) with a reply; assistant_input is spoken verbatim."""
    async with agent_sim() as sim, chat(sim) as (client, _):
        await client.until("assistant_end")
        await client.send({"type": "user_input", "text": "Hello?"})
        heard = (await client.until("user_message"))[-1]
        reply = await client.until("assistant_end")
        await client.send({"type": "assistant_input", "text": "Please hold. I will be right back."})
        spoken = await client.until("assistant_end")
    assert heard["message"] == {"role": "user", "content": "Hello?"} and heard["from_text"] is True
    assert heard["models"] == {} and heard["interim"] is False
    assert texts(reply) == ["Yes, I can hear you clearly."]
    check_turn(spoken)
    assert texts(spoken) == ["Please hold.", "I will be right back."]
    assert all(m["from_text"] is True for m in spoken if m["type"] == "assistant_message")


async def test_pause_keeps_transcribing_and_resume_answers_the_last_message() -> None:
    """While paused user messages come but no reply; on resume only the last user message is answered."""
    async with agent_sim() as sim, chat(sim) as (client, _):
        await client.until("assistant_end")
        await client.send({"type": "pause_assistant_message"})
        await client.send({"type": "user_input", "text": "hello"})
        await client.send({"type": "assistant_input", "text": "Dropped while paused."})
        await client.send({"type": "user_input", "text": "is it going to rain"})
        paused = [await client.recv(), await client.recv()]
        await client.send({"type": "resume_assistant_message"})
        reply = await client.until("assistant_end")
        await client.send({"type": "user_input", "text": "who are you"})
        next_message = await client.recv()
    assert texts(paused, "user_message") == ["hello", "is it going to rain"]
    assert texts(reply) == ["It is sunny today, with a light breeze from the sea."]
    assert texts([next_message], "user_message") == ["who are you"]


async def test_pause_stops_the_response_in_flight() -> None:
    """pause_assistant_message during a reply stops it: nothing more of it, before or after the resume."""
    async with agent_sim(realtime_factor=0.5) as sim, chat(sim) as (client, _):
        first = await client.until("audio_output")
        await client.send({"type": "pause_assistant_message"})
        await client.send({"type": "user_input", "text": "hello"})
        paused = await client.until("user_message")
        await client.send({"type": "resume_assistant_message"})
        resumed = await client.until("assistant_end")
    greeting_ids = {m["id"] for m in first}
    assert [m["type"] for m in paused if m.get("id") not in greeting_ids] == ["user_message"]
    assert "assistant_end" not in [m["type"] for m in paused]
    assert texts(resumed) == ["Yes, I can hear you clearly."]
    check_turn(resumed)


async def test_resumed_chat_group_continues_the_conversation() -> None:
    """A chat opened with resumed_chat_group_id keeps the group and remembers what the caller said before."""
    async with agent_sim() as sim:
        async with chat(sim) as (client, metadata):
            await client.until("assistant_end")
            await client.send({"type": "user_input", "text": "tell me a joke"})
            await client.until("assistant_end")
        group = metadata["chat_group_id"]
        async with chat(sim, f"{AUDIO_8K}&resumed_chat_group_id={group}") as (client, resumed):
            welcome = await client.until("assistant_end")
            await client.send({"type": "user_input", "text": "what did I say"})
            recap = await client.until("assistant_end")
        async with chat(sim) as (client, fresh):
            await client.until("assistant_end")
            await client.send({"type": "user_input", "text": "what did I say"})
            nothing = await client.until("assistant_end")
        history = sim.voice_agent.conversations[group] if sim.voice_agent else None
    assert resumed["chat_group_id"] == group != fresh["chat_group_id"]
    assert resumed["chat_id"] != metadata["chat_id"]
    assert texts(welcome) == ["Welcome back.", "Where were we?"]
    assert texts(recap) == ["Before that you said: tell me a joke."]
    assert texts(nothing) == ["Before that you said: nothing yet."]
    assert history is not None and history.user_turns == 2


async def test_inactivity_warning_then_close() -> None:
    """After the inactivity timeout the agent speaks its warning, then closes if the caller stays silent."""
    async with agent_sim(inactivity_timeout_s=0.2, inactivity_grace_s=0.3) as sim, chat(sim) as (client, _):
        greeting = await client.until("assistant_end")
        warning = await client.until("assistant_end")
        code, reason = await client.closed()
    assert " ".join(texts(greeting)) == GREETING
    assert texts(warning)[0] == "Are you still there?"
    assert (code, reason) == (1000, "inactivity_timeout")


async def test_user_activity_postpones_the_inactivity_warning() -> None:
    """Caller turns reset the inactivity clock: turns closer together than the timeout get no warning."""
    async with agent_sim(inactivity_timeout_s=0.6, inactivity_grace_s=0.2) as sim, chat(sim) as (client, _):
        await client.until("assistant_end")
        replies = []
        for _ in range(3):
            await asyncio.sleep(0.3)
            await client.send({"type": "user_input", "text": "hello"})
            replies += texts(await client.until("assistant_end"))
        warning = await client.until("assistant_end")
        code, _reason = await client.closed()
    assert replies == ["Yes, I can hear you clearly."] * 3
    assert texts(warning)[0] == "Are you still there?" and code == 1000


async def test_cheap_mode_uses_no_speech_backends() -> None:
    """Cheap mode hears durations and speaks tones as long as the reply's text would take."""
    speech = bytes(3200) + speechlike_pcm16(1000, 8000, seed=5) + bytes(9600)
    async with agent_sim(cheap=True) as sim, chat(sim, AUDIO_8K + "&verbose_transcription=true") as (client, _):
        assert sim.voice_agent is not None and sim.voice_agent.synthesizer is None
        assert isinstance(sim.voice_agent.recognizer, DurationRecognizer)
        greeting = await client.until("assistant_end")
        await client.send_audio(speech)
        heard = await client.until("user_message")
        while heard[-1]["interim"]:
            heard += await client.until("user_message")
        reply = await client.until("assistant_end")
    check_turn(greeting)
    final = heard[-1]["message"]["content"]
    assert re.fullmatch(r"\[speech 1\.[0-9] s\]", final) and len(heard) >= 2
    assert texts(reply) == [f"You said: {final}."]
    seconds = sum(wav_info(m["data"])[1] for m in reply if m["type"] == "audio_output")
    assert seconds == pytest.approx(0.065 * len(texts(reply)[0]), abs=0.03)


async def test_an_endless_utterance_is_answered_in_bounded_pieces(caplog: pytest.LogCaptureFixture) -> None:
    """A caller who never pauses long enough to end a turn gets each max_utterance_ms of speech transcribed and
    answered as a turn of its own, with a warning line for each piece ended at the bound."""
    breathless = b"".join(speechlike_pcm16(850, 8000, seed=i) + bytes(2400) for i in range(5))  # 5 s, 150 ms breaths
    turn = TurnParams(end_of_turn_silence_ms=500, min_interruption_ms=300, max_utterance_ms=2000)
    with caplog.at_level("WARNING", logger="gateway.simulator.agent"):
        async with agent_sim(cheap=True, script=SILENT_START, turn=turn) as sim, chat(sim) as (client, _):
            await client.send_audio(bytes(3200) + breathless + bytes(9600))
            heard = [m for m in await client.until("user_message") if m["type"] == "user_message"]
            heard += [m for m in await client.until("user_message") if m["type"] == "user_message"]
    assert [m["interim"] for m in heard] == [False, False]
    assert all(re.fullmatch(r"\[speech 2\.[0-9] s\]", m["message"]["content"]) for m in heard)
    assert len([r for r in caplog.records if "reached 2 s" in r.getMessage()]) >= 2


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ({"close_after_s": 0.2, "close_code": 4002}, "close"),
        ({"error_after_s": 0.2, "error_code": "I0118"}, "error"),
        ({"drop_after_s": 0.2}, "drop"),
    ],
)
async def test_timed_faults_are_observable(fault: dict[str, Any], expect: str) -> None:
    """close_after_s closes with its code, error_after_s sends an error, drop_after_s cuts TCP (1006)."""
    async with agent_sim(**fault) as sim, chat(sim) as (client, _):
        await client.until("assistant_end")
        if expect == "close":
            assert await client.closed() == (4002, "simulated close")
        elif expect == "error":
            error = (await client.until("error"))[-1]
            assert error["code"] == "I0118" and error["slug"] == "simulated_error"
        else:
            with pytest.raises(ConnectionClosedError) as info:
                await client.until("never")
            assert info.value.rcvd is None


async def test_delay_first_audio_holds_back_each_response() -> None:
    """delay_first_audio_ms keeps at least that long between a response's first text and its first audio."""
    loop = asyncio.get_running_loop()
    async with agent_sim(delay_first_audio_ms=250) as sim, chat(sim) as (client, _):
        assert (await client.recv())["type"] == "assistant_message"
        start_s = loop.time()
        assert (await client.recv())["type"] == "audio_output"
    assert loop.time() - start_s >= 0.2


async def test_stall_mid_response_stops_after_n_chunks() -> None:
    """stall_mid_response=2 sends two audio chunks of each response and then nothing, not even assistant_end."""
    async with agent_sim(stall_mid_response=2) as sim, chat(sim) as (client, _):
        await asyncio.sleep(0.3)
        await client.send({"type": "user_input", "text": "tell me a story"})
        greeting = await client.until("user_message")
        story = await client.until("audio_output")
        story += await client.until("audio_output")
        await client.send({"type": "user_input", "text": "hello"})
        between = await client.until("user_message")
    kinds = [m["type"] for m in greeting[:-1]]
    assert kinds == ["assistant_message", "audio_output", "audio_output"]
    assert [m["type"] for m in story] == ["assistant_message", "audio_output", "audio_output"]
    assert [m["type"] for m in between] == ["user_message"]


async def test_answers_to_no_tool_call_and_bad_input_get_errors() -> None:
    """A tool_response or tool_error for a call the chat never made is refused (unknown_tool_call); malformed
    frames get E0100/E0101/E0201; the chat goes on."""
    async with agent_sim() as sim, chat(sim) as (client, _):
        session = await sim.wait_session()
        await client.until("assistant_end")
        await client.send({"type": "tool_response", "tool_call_id": "t1", "content": "42"})
        await client.send({"type": "tool_error", "tool_call_id": "t2", "error": "boom", "content": "sorry"})
        await client.ws.send("not json")
        await client.send({"type": "user_input"})
        await client.send({"type": "audio_input", "data": "@@"})
        errors = [(await client.until("error"))[-1] for _ in range(5)]
        await client.send({"type": "user_input", "text": "hello"})
        await client.until("assistant_end")
    assert [(e["code"], e["slug"]) for e in errors] == [
        ("E0101", "unknown_tool_call"),
        ("E0101", "unknown_tool_call"),
        ("E0100", "invalid_json"),
        ("E0101", "invalid_message"),
        ("E0201", "invalid_base64"),
    ]
    assert not any(isinstance(m, ToolResponseMessage | ToolErrorMessage) for m in session.received)


@pytest.mark.parametrize(
    ("answer", "spoken"),
    [
        ({"type": "tool_response", "content": "Your order ships on Friday."}, ["Your order ships on Friday."]),
        (
            {"type": "tool_error", "error": "down", "content": "The order system is down."},
            ["The order system is down."],
        ),
        (None, ["Sorry, I could not get an answer from our systems."]),
    ],
    ids=["response", "error", "timeout"],
)
async def test_a_tool_rule_calls_the_tool_and_says_its_result(answer: dict[str, Any] | None, spoken: list[str]) -> None:
    """A script rule with a tool sends a function tool_call with its arguments, waits (bounded) for the answer,
    then says the result, the error's content, or that nothing came."""
    async with agent_sim(tool_timeout_s=0.5) as sim, chat(sim) as (client, _):
        session = await sim.wait_session()
        await client.until("assistant_end")
        await client.send({"type": "user_input", "text": "What is my order status?"})
        call = (await client.until("tool_call"))[-1]
        assert (call["name"], json.loads(call["parameters"]), call["tool_type"]) == (
            "lookup_order",
            {"order_id": "A17"},
            "function",
        )
        assert call["response_required"] is True
        if answer is not None:
            await client.send({**answer, "tool_call_id": call["tool_call_id"]})
        reply = await client.until("assistant_end")
    assert texts(reply) == spoken
    assert session.awaiting_tools == (set() if answer is not None else {call["tool_call_id"]})


async def test_max_duration_says_its_line_then_closes() -> None:
    """At max_duration_s the script's max_duration_message is spoken (EVI's on_max_duration_timeout), then the
    chat closes with 1000 max_duration_timeout."""
    async with agent_sim(max_duration_s=0.5) as sim, chat(sim) as (client, _):
        await client.until("assistant_end")
        goodbye = await client.until("assistant_end")
        assert texts(goodbye) == ["We have reached the time limit for this call.", "Goodbye."]
        assert await client.closed() == (1000, "max_duration_timeout")


async def test_serve_simulator_runs_the_agent() -> None:
    """serve_simulator (the simulate-evi server) serves the agent and keeps no closed sessions."""
    ready: asyncio.Future[EviSimulator] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_simulator("127.0.0.1", 0, KEY, agent_config(cheap=True), on_ready=ready.set_result)
    )
    try:
        sim = await asyncio.wait_for(ready, 10)
        async with chat(sim) as (client, _):
            greeting = await client.until("assistant_end")
        check_turn(greeting)
        for _ in range(100):
            if not sim.sessions:
                break
            await asyncio.sleep(0.02)
        assert sim.sessions == [] and sim.record_audio is False
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


def test_simulate_evi_main_reports_a_bad_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """simulate_evi_main returns 2 and names the file when the agent script is bad."""
    bad = tmp_path / "agent.toml"
    bad.write_text("[agent]\ngreeting = 1\n", encoding="utf-8")
    assert simulate_evi_main(["--agent-script", str(bad), "--cheap", "--port", "0"]) == 2
    assert str(bad) in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # hume 0.14.1 uses websockets.legacy
async def test_official_sdk_client_holds_a_conversation() -> None:
    """The hume SDK's own receive loop accepts everything the agent sends through a text turn and hang-up."""
    from hume import AsyncHumeClient
    from hume.environment import HumeClientEnvironment

    async with agent_sim() as sim:
        evi_base = sim.url.removesuffix("/chat")
        env = HumeClientEnvironment(base="http://unused", evi=evi_base, tts="http://unused", stream=evi_base)
        client = AsyncHumeClient(api_key=KEY, environment=env)
        received: list[str] = []
        async with client.empathic_voice.chat.connect(verbose_transcription=True) as socket:
            async for message in socket:
                received.append(type(message).__name__)
                if received.count("AssistantEnd") == 1 and received[-1] == "AssistantEnd":
                    await socket.send_publish(sdk.UserInput(text="goodbye"))
                if received[-1] == "ToolCallMessage":
                    break
    assert received[0] == "ChatMetadata"
    assert received[-4:] == ["AudioOutput", "AssistantProsody", "AssistantEnd", "ToolCallMessage"]
    assert "UserMessage" in received


async def test_a_chat_opened_with_a_config_follows_it() -> None:
    """config_id: the config's on_new_chat line greets, and only its function tools may be called (the script's
    tool rules for other tools are skipped)."""
    async with agent_sim() as sim:
        tool = sim.store.tools.create(
            {"name": "lookup_order", "parameters": '{"type": "object", "properties": {}}'}, now_s=1e9
        )
        assert not isinstance(tool, RestError)
        body = {
            "name": "phone",
            "evi_version": "3",
            "event_messages": {"on_new_chat": {"enabled": True, "text": "Welcome to Acme."}},
            "turn_detection": {"end_of_turn_silence_ms": 1200},
        }
        bare = sim.store.configs.create(body, now_s=1e9)
        with_tool = sim.store.configs.create({**body, "tools": [{"id": tool.id}]}, now_s=1e9)
        assert not isinstance(bare, RestError) and not isinstance(with_tool, RestError)
        for config, calls_tool in ((bare, False), (with_tool, True)):
            async with chat(sim, f"{AUDIO_8K}&config_id={config.id}") as (client, _):
                greeting = await client.until("assistant_end")
                assert texts(greeting) == ["Welcome to Acme."]
                session = sim.sessions[-1]
                assert session.evi_config is not None and session.evi_config.id == config.id
                await client.send({"type": "user_input", "text": "What is my order status?"})
                answer = (await client.until("user_message"))[-1]
                nxt = await client.recv()
                assert answer["from_text"] is True
                assert (nxt["type"] == "tool_call") is calls_tool, nxt


def test_a_configs_timeouts_turn_detection_and_interruption_replace_the_agents() -> None:
    """for_evi_config maps the config's timeouts, turn detection, interruption and event lines onto the agent."""
    store = RestStore()
    config = store.configs.create(
        {
            "name": "phone",
            "evi_version": "3",
            "event_messages": {
                "on_inactivity_timeout": {"enabled": False},
                "on_max_duration_timeout": {"enabled": True, "text": "Time is up."},
            },
            "timeouts": {"inactivity": {"enabled": True, "duration_secs": 60}, "max_duration": {"enabled": False}},
            "turn_detection": {"end_of_turn_silence_ms": 1200, "speech_detection_threshold": 0.7},
            "interruption": {"min_interruption_ms": 400},
        },
        now_s=1e9,
    )
    assert not isinstance(config, RestError)
    cfg = for_evi_config(agent_config(), config)
    assert (cfg.inactivity_timeout_s, cfg.max_duration_s) == (60.0, None)
    assert (cfg.turn.end_of_turn_silence_ms, cfg.turn.speech_detection_threshold, cfg.turn.min_interruption_ms) == (
        1200,
        0.7,
        400,
    )
    assert (cfg.script.inactivity_warning, cfg.script.max_duration_message) == ("", "Time is up.")
