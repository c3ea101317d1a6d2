"""The EVI side of ``gateway bench faults``: one EVI-compatible server process whose chats behave by phone line.

The gateway opens each chat with the ``config_id`` of the caller's line (the numbers file written by
:mod:`gateway.loadtest.faults`), and :class:`FaultAgent` picks the chat's behaviour by it:

- ``canary``, ``soak``: the simulator's own agent (:class:`~gateway.simulator.agent.VoiceAgent`, cheap mode: turn
  detection on, replies as tones), so canaries talk and are answered;
- ``talker``: 300 ms of tone every second; ``talker_long``: speech without a pause (for callers that read slowly);
- ``evi_mutate``: mutated server messages (:class:`~gateway.simulator.mutator.EviMutator`) at a steady rate;
- ``evi_drop``: speaks, then aborts the TCP connection or closes with 1011, 1001, 1000 or 4000, in turn;
- ``evi_stall``: sends nothing after ``chat_metadata``; ``evi_stall_mid``: stops in the middle of a response;
- ``evi_noread``: stops reading its socket (a frozen process), then drops it after a bound;
- ``evi_slowread``: reads its socket for 20 ms every half second;
- ``evi_garbage``: answers with random text and binary frames.

A resumed chat (``resumed_chat_group_id``, evi-protocol.md §7) on a hostile line behaves like ``talker``, so
the gateway's resume can succeed. Run as ``python -m gateway.loadtest.faults_evi --port N``; it prints
``{"port": N}`` once listening and answers ``{"cmd": "stats"}`` lines on stdin with its cumulative counts
(relay.py's JSON-lines plumbing); stdin closing ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections import Counter
from dataclasses import replace
from typing import Any

from gateway.errors import SessionClosedError
from gateway.loadtest.relay import answer, command_lines
from gateway.simulator.agent import AgentConfig, VoiceAgent
from gateway.simulator.agent_script import load_agent_script
from gateway.simulator.evi import EviSession, EviSimulator
from gateway.simulator.mutator import EviMutator, Frame
from gateway.simulator.wavgen import tone_pcm16

__all__ = ["EVI_API_KEY", "FaultAgent", "LINES", "main"]

EVI_API_KEY = "faults-evi-key"
LINES = (
    "canary", "soak", "talker", "talker_long", "evi_mutate", "evi_drop", "evi_stall", "evi_stall_mid",
    "evi_noread", "evi_slowread", "evi_garbage",
)  # fmt: skip
"""Every behaviour, named as the config_id of its line."""
HOSTILE = frozenset({"evi_mutate", "evi_drop", "evi_stall", "evi_stall_mid", "evi_noread", "evi_slowread",
                     "evi_garbage"})  # fmt: skip
MUTATED_PER_S = 150.0
NOREAD_HOLD_S = 8.0
"""A chat that stopped reading is dropped by us after this long, if the gateway has not given up on it first."""
_DROP_CLOSES = (None, 1011, 1001, 1000, 4000)
"""How ``evi_drop`` chats end, in turn: None aborts the TCP connection (the gateway sees 1006)."""

log = logging.getLogger("gateway.loadtest.faults_evi")


class FaultAgent:
    """The agent hook of the simulator: one behaviour per chat, chosen by its ``config_id``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        # Short lines and no rules (no keyword can hang up), so a canary's turn takes about 3 s.
        script = replace(load_agent_script(), greeting="Hello.", resume_greeting="Hello again.", fallback="I hear you.",
                         rules=())  # fmt: skip
        config = AgentConfig(script=script, cheap=True, inactivity_timeout_s=None, max_duration_s=None)
        self.voice = VoiceAgent(config)
        self.sessions: Counter[str] = Counter()
        self.resumed: Counter[str] = Counter()
        self.mutated: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._short = tone_pcm16(300.0, 300, 24000, amplitude=0.2)
        self._long = tone_pcm16(260.0, 3000, 24000, amplitude=0.2)

    def stats(self) -> dict[str, Any]:
        """Cumulative counts since start."""
        return {
            "sessions": dict(self.sessions),
            "resumed": dict(self.resumed),
            "mutated": sum(self.mutated.values()),
            "mutated_kinds": dict(self.mutated),
            "agent_failures": dict(self.failures),
        }

    async def __call__(self, session: EviSession) -> None:
        line = session.config_id if session.config_id in LINES else "talker"
        index = self.sessions[line]
        self.sessions[line] += 1
        if line in HOSTILE and session.resumed_chat_group_id is not None:
            self.resumed[line] += 1
            line = "talker"
        try:
            await self._behave(line, session, index)
        except SessionClosedError:
            pass
        except (ConnectionError, RuntimeError) as exc:  # the gateway went away while we wrote
            log.info("chat %s (%s) ended while sending: %r", session.chat_id, line, exc)
        except Exception:
            self.failures[line] += 1
            raise

    async def _behave(self, line: str, session: EviSession, index: int) -> None:
        match line:
            case "canary" | "soak":
                await self.voice(session)
            case "talker":
                await self._talk(session, self._short, pause_s=0.7)
            case "talker_long":
                await self._talk(session, self._long, pause_s=0.0)
            case "evi_mutate":
                await self._mutate(session, EviMutator(f"{self.seed}:evi:{index}"))
            case "evi_drop":
                await self._drop(session, index)
            case "evi_stall":
                await session.closed.wait()
            case "evi_stall_mid":
                await session.say(self._long, 24000, stall_after_chunks=2)
                await session.closed.wait()
            case "evi_noread":
                await self._no_read(session)
            case "evi_slowread":
                await self._slow_read(session)
            case "evi_garbage":
                await self._garbage(session, index)

    @staticmethod
    async def _talk(session: EviSession, pcm: bytes, pause_s: float) -> None:
        while not session.closed.is_set():
            response = await session.say(pcm, 24000)
            await session.wait_said(response, timeout_s=30)
            session.forget_speech(response)
            if pause_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.closed.wait(), pause_s)

    async def _mutate(self, session: EviSession, mutator: EviMutator) -> None:
        loop = asyncio.get_running_loop()
        start_s = loop.time()
        sent = 0
        while not session.closed.is_set():
            frame = mutator.next()
            await send_frame(session, frame)
            self.mutated[frame.kind] += 1
            sent += 1
            await asyncio.sleep(max(0.0, start_s + sent / MUTATED_PER_S - loop.time()))

    async def _drop(self, session: EviSession, index: int) -> None:
        await session.say(self._long, 24000)
        await asyncio.sleep(0.3 + (index % 5) * 0.25)
        code = _DROP_CLOSES[index % len(_DROP_CLOSES)]
        if code is None:
            session.drop()
        else:
            await session.close(code, "faults bench")

    async def _no_read(self, session: EviSession) -> None:
        transport = server_transport(session)
        if transport is None:
            return
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        transport.pause_reading()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.closed.wait(), NOREAD_HOLD_S)
        session.drop()  # the frozen peer's own end goes too (it would never read the gateway's close)

    async def _slow_read(self, session: EviSession) -> None:
        transport = server_transport(session)
        if transport is None:
            return
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deadline_s = asyncio.get_running_loop().time() + 4 * NOREAD_HOLD_S
        while not session.closed.is_set() and asyncio.get_running_loop().time() < deadline_s:
            transport.pause_reading()
            await asyncio.sleep(0.5)
            transport.resume_reading()
            await asyncio.sleep(0.02)
        if not session.closed.is_set():
            session.drop()

    async def _garbage(self, session: EviSession, index: int) -> None:
        mutator = EviMutator(f"{self.seed}:garbage:{index}")
        while not session.closed.is_set():
            frame = mutator.next()
            data = frame.data[::-1] if not frame.binary else frame.data  # reversed JSON is never JSON
            await send_frame(session, Frame("garbage", data, binary=frame.binary))
            self.mutated["garbage"] += 1
            await asyncio.sleep(0.02)


def server_transport(session: EviSession) -> asyncio.Transport | None:
    """The simulator's end of a chat's TCP connection (to freeze it as a stuck EVI process would be)."""
    transport = session._ws._request.transport  # noqa: SLF001 - the bench plays a frozen peer
    return transport if isinstance(transport, asyncio.Transport) else None


async def send_frame(session: EviSession, frame: Frame) -> None:
    """Send a mutated frame as is: binary, or text whose bytes may not be UTF-8."""
    await session.send_frame(frame.data, binary=frame.binary)


async def _serve(port: int, seed: int) -> None:
    agent = FaultAgent(seed)
    await agent.voice.prepare()
    async with EviSimulator(
        api_key=EVI_API_KEY,
        port=port,
        agent=agent,
        accept_unknown_configs=True,
        max_sessions=100_000,
        retain_closed_sessions=False,
        record_audio=False,
        realtime_factor=0.5,
    ) as sim:
        answer({"port": sim.port})
        async for command in command_lines():
            if command.get("cmd") == "stats":
                answer(agent.stats())


def main(argv: list[str] | None = None) -> int:
    """Serve until stdin closes or ``--max-life-s`` passes."""
    parser = argparse.ArgumentParser(prog="gateway.loadtest.faults_evi")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-life-s", type=float, default=1200.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def bounded() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.max_life_s):
                await _serve(args.port, args.seed)

    asyncio.run(bounded())
    return 0


if __name__ == "__main__":
    sys.exit(main())
