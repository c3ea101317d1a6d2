"""A tiny scripted EVI-side agent, and caller material, for load tests that must not depend on speech backends.

``energy_responder`` is an ``EviSimulator(agent=...)`` hook: it greets, answers each caller utterance once
the caller has been quiet for 300 ms, and yields (``user_interruption``) when the caller talks while its
reply may still be playing — turn-taking by signal energy alone.
"""

from __future__ import annotations

import asyncio
import math

from gateway.codecs.levels import FULL_SCALE, level_dbfs
from gateway.simulator.evi_session import EviSession
from gateway.simulator.wavgen import speechlike_pcm16

AGENT_RATE_HZ = 24000
GREETING_MS = 600
REPLY_MS = 1500
LOUD_DBFS = 20 * math.log10(500 / FULL_SCALE)
"""Caller audio at or above this RMS level counts as speech (about 500 in linear16)."""
QUIET_FOR_BYTES = 300 * 16  # 300 ms of linear16 at 8 kHz
BLIP_BYTES = 40 * 16


async def energy_responder(session: EviSession) -> None:
    """Greet, then answer every caller utterance; interrupt itself when talked over."""
    loop = asyncio.get_running_loop()
    await session.wait_message("session_settings")
    await session.say(speechlike_pcm16(GREETING_MS, AGENT_RATE_HZ, seed=1), AGENT_RATE_HZ)
    reply_until_s = loop.time() + GREETING_MS / 1000 + 0.5
    while True:
        while level_dbfs(bytes(session.audio_pcm[-BLIP_BYTES:])) < LOUD_DBFS:
            await session.wait_audio_ms(session.audio_ms + 20, 60)
        if loop.time() < reply_until_s:
            await session.interrupt()
        while level_dbfs(bytes(session.audio_pcm[-QUIET_FOR_BYTES:])) >= LOUD_DBFS:
            await session.wait_audio_ms(session.audio_ms + 20, 60)
        await session.say(speechlike_pcm16(REPLY_MS, AGENT_RATE_HZ, seed=2), AGENT_RATE_HZ)
        reply_until_s = loop.time() + REPLY_MS / 1000 + 0.5


BARGE_IN_SCENARIO = """
agent_silence_ms = 500
hangup_after_last_turn_ms = 800
[[turn]]
wait_for_agent = true
[[turn]]
barge_in_after_ms = 400
[[turn]]
wait_for_agent = true
"""
"""A `gateway loadtest` scenario for a three-utterance recording: answer, talk over the reply, answer."""


def speech_then_silence(parts_ms: list[int], gap_ms: int, rate_hz: int = 8000, seed: int = 10) -> bytes:
    """Speech-like stretches of the given lengths with ``gap_ms`` of digital silence between them."""
    silence = b"\x00\x00" * (rate_hz * gap_ms // 1000)
    return silence.join(speechlike_pcm16(ms, rate_hz, seed=seed + i) for i, ms in enumerate(parts_ms))
