"""Hostile calls for the fuzz tests: every message each peer sends, and a call whose two peers mutate theirs.

:func:`twilio_frames` (every inbound Media Streams event, twilio-media-streams.md §1) and :func:`evi_frames` (every
EVI server message, evi-protocol.md §3, with WAVs at the rates of evi-protocol.md §4.2) are the valid templates
the parser and core properties of ``tests/test_fuzz.py`` edit (:func:`gateway.simulator.mutator.mutate`).
:func:`hostile_call` is one call through the real webhook and signed stream whose Twilio side and whose EVI
session (on an :class:`~gateway.simulator.evi.EviSimulator`) both send frames of the mutation kinds of
:mod:`gateway.simulator.mutator`, the ones ``gateway bench faults`` sends, seeded from the caller's ``rng``.
"""

from __future__ import annotations

import asyncio
import base64
import random
from dataclasses import dataclass

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection, connect

from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.codecs.wav import write_wav
from gateway.errors import SessionClosedError
from gateway.simulator.caller_dial import post_webhook, read_twiml
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.mutator import EviMutator, Frame, TwilioMutator
from gateway.simulator.recording import CallRecord
from gateway.simulator.wavgen import speechlike_pcm16
from gateway.wire import evi_messages as evi
from gateway.wire import twilio_media as tw
from gateway.wire.twilio_signature import sign_request

__all__ = ["SPEECH_FRAME_ULAW", "FrameBudget", "evi_frames", "hostile_call", "twilio_frames", "wav_base64"]

SPEECH_FRAME_ULAW = pcm16_to_ulaw(speechlike_pcm16(20, 8000, seed=1))
"""20 ms of speech-like caller audio, as one ``media`` payload carries it."""


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
        *(
            evi.UserMessage(
                message=user,
                models=evi.Inference(),
                time=evi.MillisecondInterval(begin=0, end=end_ms),
                from_text=False,
                interim=interim,
            )
            for end_ms, interim in ((400, True), (900, False))
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
    mutator = EviMutator(f"hostile-evi:{rng.getrandbits(64)}")
    while not done.is_set() and budget.evi > 0:
        session = _session_of(sim, call_sid)
        if session is None:
            await asyncio.sleep(0.01)
            continue
        frame = mutator.next()
        try:
            await session.send_frame(frame.data, binary=frame.binary)
            budget.evi -= 1
        except SessionClosedError:
            pass
        await asyncio.sleep(0.001 * rng.randrange(3))


async def _send(ws: ClientConnection, frame: Frame) -> None:
    await ws.send(frame.data, text=not frame.binary)


async def hostile_call(
    webhook_url: str,
    auth_token: str,
    sim: EviSimulator,
    rng: random.Random,
    budget: FrameBudget,
    *,
    call_sid: str,
    frames: int,
) -> None:
    """One call through the signed webhook and stream with a valid ``start``, then up to ``frames`` frames of
    which one in three is a good ``media`` frame and the rest a :class:`~gateway.simulator.mutator.TwilioMutator`
    frame of any kind, while its EVI session sends :class:`~gateway.simulator.mutator.EviMutator` frames; then a
    ``stop``. Ends when the gateway closes the stream. Each mutated frame spends one of ``budget``; a
    :class:`~gateway.errors.DialError` means the webhook refused."""
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
    mutator = TwilioMutator(
        f"hostile-twilio:{rng.getrandbits(64)}", stream_sid=stream_sid, account_sid=account_sid, call_sid=call_sid
    )
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
                    await _send(ws, Frame("valid", mutator.clean_media()))
                elif budget.twilio > 0:
                    budget.twilio -= 1
                    await _send(ws, mutator.next())
                else:
                    break
                await asyncio.sleep(0.002)  # about 3x real time: within the caller's burst budget
            stop = tw.stop_message(
                sequence_number=mutator.sequence + 1, stream_sid=stream_sid, account_sid=account_sid, call_sid=call_sid
            )
            await ws.send(stop)
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        except websockets.ConnectionClosed:
            pass
        finally:
            done.set()
            await evi_side
