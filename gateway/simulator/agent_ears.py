"""The simulated agent's ears: turn detection on one session's audio, and where that work runs (evi-protocol.md §5).

Owns :class:`Ears`: the session's :class:`~gateway.simulator.vad.TurnDetector` for the declared audio format,
the recent audio that partial transcripts are cut from, and the choice between detecting on the event loop and
on the session's own worker thread. The agent hands it each batch of audio chunks the session has queued
(whatever arrived since it last looked, at most :data:`MAX_BATCH_MS`); the chunks are pushed one by one, and
for each the agent gets its events and the detector's clock after it (:class:`Heard`), so it acts exactly as
if it had seen the chunks one at a time: same events, same positions for partial transcripts.

Where the work runs, measured on the 2-core test machine (CPython 3.11): ``TurnDetector.push`` costs 17 µs for one
20 ms chunk at 8 kHz (22 µs at 48 kHz; 56 µs for one 500 ms chunk). Handing work to a thread and back costs about
70 µs of CPU, four times a chunk's, and the detector is Python code that holds the GIL, so a thread gives the loop
no time back while it runs. A call in real time (50 chunks a second, each its own batch) therefore costs the loop
about 25 µs a chunk with the bookkeeping here, 0.13 % of a core, detected inline. A batch of :data:`OFF_LOOP_MS`
or more (audio arriving faster than real time, a loop too busy to look for a while, or a client's big chunks),
whose work is at least the hand-off's, is detected on the session's single worker thread, so order is kept and the
loop stalls for at most the GIL's switch interval (5 ms) instead of the whole batch: 60 s of 16 kHz audio in one
message stalls it 9-13 ms inline, about 5 ms from the worker.

Memory is bounded: the detector ends an utterance at ``TurnParams.max_utterance_ms`` (30 s; it is transcribed
as it stands, and a warning says so), and the recent audio is kept from the utterance's prefix padding onwards
while the caller speaks and for the last 2 s otherwise, so an endless utterance holds at most about
``max_utterance_ms + prefix_padding_ms`` plus 1 s of audio in each buffer.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.errors import ConfigError
from gateway.simulator.evi_session import DeclaredAudio
from gateway.simulator.vad import SpeechEnded, SpeechStarted, TurnDetector, TurnEvent, TurnParams

__all__ = ["MAX_BATCH_MS", "OFF_LOOP_MS", "Ears", "Heard"]

log = logging.getLogger("gateway.simulator.agent")

MAX_BATCH_MS = 2000
"""Most queued audio the agent hands over as one batch."""
OFF_LOOP_MS = 500
"""Batches of this much audio or more are detected on the session's worker thread (cost ≥ the hand-off's)."""
RECENT_MS = 2000
"""Audio kept before an utterance starts (partial transcripts begin at its prefix padding)."""


class Ears:
    """One session's turn detection. ``name`` (the chat) labels log lines and the worker thread."""

    def __init__(self, params: TurnParams, name: str) -> None:
        self.params = params
        self.name = name
        self.detector: TurnDetector | None = None
        self.audio: DeclaredAudio | None = None
        """The format the detector listens to (None before any audio)."""
        self.origin_ms = 0.0
        """Chat time (ms since it began) at which the detector's audio clock started."""
        self.utterance_start_ms: float | None = None
        """Where the utterance in progress began, on the detector's clock; None between utterances."""
        self._refused: DeclaredAudio | None = None
        self._recent = bytearray()
        self._recent_start_ms = 0.0
        self._worker: ThreadPoolExecutor | None = None

    @property
    def speaking(self) -> bool:
        """An utterance is in progress."""
        return self.detector is not None and self.detector.speaking

    @property
    def rate_hz(self) -> int:
        """The rate of the audio listened to (8 kHz before any)."""
        return self.audio.rate_hz if self.audio is not None else 8000

    @property
    def recent_ms(self) -> float:
        """Duration of the recent audio held for partial transcripts."""
        return len(self._recent) * 500 / self.rate_hz

    def hears(self, audio: DeclaredAudio, origin_ms: float) -> bool:
        """Whether audio in this format can be listened to. A new format starts a new detector whose clock begins
        at chat time ``origin_ms``. Raises ConfigError the first time a format cannot be detected; False after."""
        heard = (audio.rate_hz, audio.channels)
        if self.audio is not None and heard == (self.audio.rate_hz, self.audio.channels):
            return True
        if self._refused is not None and heard == (self._refused.rate_hz, self._refused.channels):
            return False
        try:
            detector = TurnDetector(self.params, audio.rate_hz)
        except ConfigError:
            self._refused = audio
            raise
        self.detector, self.audio, self.origin_ms = detector, audio, origin_ms
        self._recent, self._recent_start_ms, self.utterance_start_ms = bytearray(), 0.0, None
        return True

    async def hear(self, chunks: list[bytes]) -> list[Heard]:
        """Detect turns in a batch of mono chunks (following what came before), pushed one by one as they
        arrived: inline, or on the worker thread for :data:`OFF_LOOP_MS` or more. What each chunk completed, in
        order; nothing before a format was accepted. Call :meth:`trim` once the batch has been acted on."""
        detector = self.detector
        if detector is None:
            return []
        for pcm16 in chunks:
            self._recent += pcm16
        if sum(map(len, chunks)) >= OFF_LOOP_MS * self.rate_hz * 2 // 1000:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ears {self.name}")
            loop = asyncio.get_running_loop()
            heard = await loop.run_in_executor(self._worker, _detect, detector, chunks, self.utterance_start_ms)
        else:
            heard = _detect(detector, chunks, self.utterance_start_ms)
        if heard:
            self.utterance_start_ms = heard[-1].utterance_start_ms
        for event in (e for h in heard for e in h.events if isinstance(e, SpeechEnded) and e.capped):
            log.warning(
                "EVI agent %s: utterance at %.0f ms reached %.0f s, the longest heard; ended and transcribed",
                self.name, event.start_ms, self.params.max_utterance_ms / 1000,
            )  # fmt: skip
        return heard

    def between(self, from_ms: float, to_ms: float) -> bytes:
        """The recent audio from ``from_ms`` (detector clock; or from the oldest kept) to ``to_ms``."""
        lo, hi = (max(0, round((ms - self._recent_start_ms) * self.rate_hz / 1000)) * 2 for ms in (from_ms, to_ms))
        return bytes(self._recent[lo:hi])

    def close(self) -> None:
        """Let the worker thread go (the session ended)."""
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    def trim(self) -> None:
        """Let go of recent audio no partial transcript needs: during an utterance, what comes before its prefix
        padding; between utterances, all but the last RECENT_MS. In steps of at least RECENT_MS / 2, so that the
        buffer is not shifted for every frame."""
        if self.detector is None:
            return
        position_ms = self.detector.position_ms
        start_ms = self.utterance_start_ms
        keep_ms = position_ms - RECENT_MS if start_ms is None else start_ms - self.params.prefix_padding_ms
        excess_ms = keep_ms - self._recent_start_ms
        if excess_ms > RECENT_MS / 2:
            drop = round(excess_ms * self.rate_hz / 1000) * 2
            del self._recent[:drop]
            self._recent_start_ms += drop / 2 * 1000 / self.rate_hz


@dataclass(frozen=True, slots=True)
class Heard:
    """What one chunk of a batch completed: its events, the detector's clock after it, and where the utterance in
    progress then had begun (None between utterances)."""

    events: list[TurnEvent]
    position_ms: float
    utterance_start_ms: float | None


def _detect(detector: TurnDetector, chunks: list[bytes], start_ms: float | None) -> list[Heard]:
    heard = []
    for pcm16 in chunks:
        events = detector.push(pcm16)
        for event in events:
            if isinstance(event, SpeechStarted):
                start_ms = event.at_ms
            elif isinstance(event, SpeechEnded):
                start_ms = None
        heard.append(Heard(events, detector.position_ms, start_ms))
    return heard
