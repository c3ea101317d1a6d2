"""Hostile peers for fuzzing: every message each peer sends, a deterministic mutator, and a call that uses them.

Owns :func:`mutate` (character-level edits: replace, insert, delete, duplicate, truncate, with JSON syntax,
digits and awkward code points), :func:`random_edits` and :func:`mutated_frame` (drawn from a seeded
``random.Random``, so a run is repeatable), the templates :func:`twilio_frames` (every inbound Media Streams
event, twilio-media-streams.md §1) and :func:`evi_frames` (every EVI server message, evi-protocol.md §3, with
WAVs at the rates of evi-protocol.md §4.2), and :func:`hostile_call`: one call through the real webhook and signed
stream whose Twilio side and whose EVI session (on an :class:`~gateway.simulator.evi.EviSimulator`) both send
mutated frames. ``tests/test_fuzz.py`` drives the parsers, the call core and the served gateway with them.
"""

from __future__ import annotations

import asyncio
import base64
import random
from dataclasses import dataclass
from typing import TypeAlias

import aiohttp
import websockets
from websockets.asyncio.client import connect

from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.codecs.wav import write_wav
from gateway.errors import SessionClosedError
from gateway.simulator.caller_dial import post_webhook, read_twiml
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.recording import CallRecord
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw
from gateway.wire.twilio_signature import sign_request

__all__ = [
    "SPEECH_FRAME_ULAW",
    "Edit",
    "FrameBudget",
    "evi_frames",
    "hostile_call",
    "mutate",
    "mutated_frame",
    "random_edits",
    "twilio_frames",
    "wav_base64",
]

Edit: TypeAlias = tuple[int, int, int]
"""``(operation, position, spice)``: what :func:`mutate` does, where (modulo the length), with which character."""

SPICE = '{}[]",:\\/0123456789-+.eE tfnul\x00\x7f\u2028\ud800\U0001f600'
"""Characters an edit inserts: JSON syntax, digits, literals' letters, NUL, DEL, a line separator, a lone
surrogate and a character outside the BMP."""

SPEECH_FRAME_ULAW = pcm16_to_ulaw(speechlike_pcm16(20, 8000, seed=1))
"""20 ms of speech-like caller audio, as one ``media`` payload carries it."""


def mutate(text: str, edits: list[Edit]) -> str:
    """``text`` after each edit in turn: 0 replaces the character at the position with the spice, 1 inserts
    it, 2 deletes up to 8 characters, 3 repeats up to 16 characters before the position, 4 truncates."""
    for op, pos, spice in edits:
        at = pos % (len(text) + 1)
        char = SPICE[spice % len(SPICE)]
        match op % 5:
            case 0:
                text = text[:at] + char + text[at + 1 :]
            case 1:
                text = text[:at] + char + text[at:]
            case 2:
                text = text[:at] + text[at + 1 + spice % 8 :]
            case 3:
                text = text[:at] + text[at - spice % 16 : at] + text[at:]
            case _:
                text = text[:at]
    return text


def random_edits(rng: random.Random) -> list[Edit]:
    """One to four edits drawn from ``rng``."""
    return [(rng.randrange(5), rng.randrange(2**16), rng.randrange(2**8)) for _ in range(rng.randint(1, 4))]


def twilio_frames(*, stream_sid: str, call_sid: str, account_sid: str, token: str) -> list[str]:
    """One valid frame of each inbound event: connected, start (carrying ``token``), media, a mark echo, dtmf,
    stop, and an event of a kind Twilio does not send (twilio-media-streams.md §1)."""
    return [
        tw.connected_message(),
        tw.start_message(
            sequence_number=1,
            stream_sid=stream_sid,
            account_sid=account_sid,
            call_sid=call_sid,
            custom_parameters={"token": token, "caller_number": "+15550001111"},
        ),
        tw.inbound_media_message(
            sequence_number=2, stream_sid=stream_sid, chunk=1, timestamp_ms=0, ulaw=SPEECH_FRAME_ULAW
        ),
        tw.mark_echo_message(sequence_number=3, stream_sid=stream_sid, name="m1"),
        tw.dtmf_message(sequence_number=4, stream_sid=stream_sid, digit="5"),
        tw.stop_message(sequence_number=5, stream_sid=stream_sid, account_sid=account_sid, call_sid=call_sid),
        '{"event":"surprise","streamSid":"' + stream_sid + '"}',
    ]


def wav_base64(rate_hz: int, ms: int, channels: int = 1, seed: int = 0) -> str:
    """Base64 of a whole WAV of speech-like audio, as ``audio_output.data`` carries it (evi-protocol.md §4.2)."""
    pcm = speechlike_pcm16(ms, rate_hz, seed=seed)
    if channels == 2:
        pcm = b"".join(pcm[i : i + 2] * 2 for i in range(0, len(pcm), 2))
    return base64.b64encode(write_wav(pcm, rate_hz, channels)).decode("ascii")


def _tool_call(name: str, parameters: str, tool_type: str = "function") -> evi.ToolCallMessage:
    return evi.ToolCallMessage(
        name=name,
        parameters=parameters,
        tool_call_id=f"t-{name}",
        response_required=tool_type == "function",
        tool_type=tool_type,
    )


def evi_frames() -> list[str]:
    """One valid frame of each EVI server message (evi-protocol.md §3): chat_metadata first, audio of two
    interleaving responses at 8, 24, 44.1 and 48 kHz (one stereo), text, transcripts, an interruption, tool calls
    (a transfer to a known and an unknown destination, a function tool, a bad one, ``hang_up``), a non-fatal and
    a fatal error (§8), and messages the gateway only notes."""
    user = evi.ChatMessage(role="user", content="hi there")
    messages: list[evi.EviModel] = [
        evi.ChatMetadata(chat_id="chat-1", chat_group_id="group-1", request_id="req"),
        evi.AudioOutput(id="r1", index=0, data=wav_base64(24000, 100)),
        evi.AudioOutput(id="r2", index=0, data=wav_base64(48000, 40, channels=2)),
        evi.AudioOutput(id="r1", index=1, data=wav_base64(8000, 200)),
        evi.AudioOutput(id="r3", index=0, data=wav_base64(44100, 60)),
        evi.AssistantMessage(
            id="r1",
            message=evi.ChatMessage(role="assistant", content="Hello there."),
            models=evi.Inference(),
            from_text=False,
            is_quick_response=False,
        ),
        evi.AssistantEnd(),
        evi.UserInterruption(time=1_700_000_000_000),
        evi.UserMessage(
            message=user,
            models=evi.Inference(),
            time=evi.MillisecondInterval(begin=0, end=400),
            from_text=False,
            interim=True,
        ),
        evi.UserMessage(
            message=user,
            models=evi.Inference(),
            time=evi.MillisecondInterval(begin=0, end=900),
            from_text=False,
            interim=False,
        ),
        _tool_call("transfer_call", '{"destination":"sales"}'),
        _tool_call("transfer_call", '{"destination":"nowhere"}'),
        _tool_call("lookup", '{"order":"42"}'),
        _tool_call("mystery", "not json"),
        _tool_call("hang_up", "{}", tool_type="builtin"),
        evi.WebSocketError(code="E0101", slug="invalid_message", message="bad", request_id="req"),
        evi.WebSocketError(code="I0118", slug="fatal", message="over"),
        evi.AssistantProsody(id="r1", models=evi.Inference()),
        evi.SessionSettings(),
        evi.ToolResponseMessage(tool_call_id="t-web", content="found"),
    ]
    return [m.to_json() for m in messages] + ['{"type":"from_the_future","x":1}']


def mutated_frame(rng: random.Random, templates: list[str], limit_bytes: int) -> str:
    """A template, mutated four times in five, as text a WebSocket can carry (a lone surrogate becomes ``?``);
    one in 500 is padded past ``limit_bytes``."""
    text = rng.choice(templates)
    if rng.random() < 0.8:
        text = mutate(text, random_edits(rng))
    if rng.random() < 0.002:
        text += " " * limit_bytes
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass
class FrameBudget:
    """Mutated frames still to send on each side, shared by the hostile calls of one run."""

    twilio: int
    evi: int


def _session_of(sim: EviSimulator, call_sid: str) -> EviSession | None:
    """The newest open EVI session of a call (a resumed chat replaces a dropped one)."""
    found = [s for s in sim.sessions if s.custom_session_id == call_sid and not s.closed.is_set()]
    return found[-1] if found else None


async def _hostile_evi(
    sim: EviSimulator, call_sid: str, rng: random.Random, budget: FrameBudget, done: asyncio.Event
) -> None:
    templates = evi_frames()
    while not done.is_set() and budget.evi > 0:
        session = _session_of(sim, call_sid)
        if session is None:
            await asyncio.sleep(0.01)
            continue
        try:
            await session.send_raw(mutated_frame(rng, templates, 16 * 2**20))
            budget.evi -= 1
        except SessionClosedError:
            pass
        await asyncio.sleep(0.001 * rng.randrange(3))


async def hostile_call(
    webhook_url: str,
    auth_token: str,
    sim: EviSimulator,
    rng: random.Random,
    budget: FrameBudget,
    *,
    call_sid: str,
    frames: int,
    twilio_limit_bytes: int = 64 * 1024,
) -> None:
    """One call through the signed webhook and stream with a valid ``start``, then up to ``frames`` frames of
    which one in three is a good ``media`` frame and the rest :func:`mutated_frame` of every inbound event, while
    its EVI session sends mutated server messages; then a ``stop``. Ends when the gateway closes the stream.
    Each mutated frame spends one of ``budget``; a :class:`~gateway.errors.DialError` means the webhook refused."""
    stream_sid = "MZ" + call_sid[2:]
    account_sid = "AC" + call_sid[2:]
    record = CallRecord(frame_ms=20)
    params = {"AccountSid": account_sid, "CallSid": call_sid, "From": "+15550100009", "To": "+15550100002"}
    async with aiohttp.ClientSession() as http:
        twiml = await post_webhook(
            http, record, record.protocol_violations.append,
            webhook_url=webhook_url, auth_token=auth_token, params=params, timeout_s=5,
        )  # fmt: skip
    url = read_twiml(twiml, webhook_url, record, record.protocol_violations.append)
    token = record.custom_parameters.get("token", "")
    templates = twilio_frames(stream_sid=stream_sid, call_sid=call_sid, account_sid=account_sid, token=token)
    done = asyncio.Event()
    signature = {"X-Twilio-Signature": sign_request(auth_token, url, {})}
    async with connect(url, additional_headers=signature, compression=None, max_size=None) as ws:
        evi_side = asyncio.create_task(_hostile_evi(sim, call_sid, rng, budget, done))
        try:
            await ws.send(tw.connected_message())
            await ws.send(
                tw.start_message(
                    sequence_number=1,
                    stream_sid=stream_sid,
                    account_sid=account_sid,
                    call_sid=call_sid,
                    custom_parameters=record.custom_parameters,
                )
            )
            for n in range(frames):
                if n % 3 == 0:
                    frame = tw.inbound_media_message(
                        sequence_number=n + 2, stream_sid=stream_sid, chunk=n + 1, timestamp_ms=20 * n,
                        ulaw=SPEECH_FRAME_ULAW,
                    )  # fmt: skip
                elif budget.twilio > 0:
                    frame, budget.twilio = mutated_frame(rng, templates, twilio_limit_bytes), budget.twilio - 1
                else:
                    break
                await ws.send(frame)
                await asyncio.sleep(0.002)  # about 3x real time: within the caller's burst budget
            await ws.send(
                tw.stop_message(
                    sequence_number=frames + 2, stream_sid=stream_sid, account_sid=account_sid, call_sid=call_sid
                )
            )
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        except websockets.ConnectionClosed:
            pass
        finally:
            done.set()
            await evi_side
