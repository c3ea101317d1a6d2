"""The two per-call transcoders (docs/design.md "Transcoders": benchmarks and other tools call these).

- :class:`InboundTranscoder` — caller μ-law 8 kHz → linear16 at ``out_rate_hz``. At 8000 Hz it is a pure
  G.711 decode: no resampler, zero added delay (docs/audio-path.md "Consequences", item 2). Other rates use the
  low-delay path (integer factors: a 1.5 ms FIR; otherwise soxr LQ).
- :class:`OutboundTranscoder` — EVI linear16 at ``in_rate_hz`` → μ-law 8 kHz through one soxr HQ stream
  whose state is kept across chunks; :meth:`~OutboundTranscoder.flush` releases the held-back tail, so every
  sample pushed in comes out.
"""

from __future__ import annotations

from gateway.codecs.framing import TWILIO_RATE_HZ
from gateway.codecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from gateway.codecs.resample import Quality, Resampler, make_resampler


class InboundTranscoder:
    """μ-law 8 kHz → linear16 at ``out_rate_hz``."""

    def __init__(self, out_rate_hz: int = TWILIO_RATE_HZ) -> None:
        self.out_rate_hz = out_rate_hz
        self._resampler: Resampler | None = (
            None if out_rate_hz == TWILIO_RATE_HZ else make_resampler(TWILIO_RATE_HZ, out_rate_hz, low_delay=True)
        )

    def process(self, ulaw: bytes) -> bytes:
        """Decode (and, off 8 kHz, resample) a chunk of caller audio."""
        pcm = ulaw_to_pcm16(ulaw)
        return pcm if self._resampler is None else self._resampler.process(pcm)

    def flush(self) -> bytes:
        """Release what the resampler holds (always empty at 8 kHz)."""
        return b"" if self._resampler is None else self._resampler.flush()


class OutboundTranscoder:
    """linear16 at ``in_rate_hz`` → μ-law 8 kHz."""

    def __init__(self, in_rate_hz: int, quality: Quality = "HQ") -> None:
        self.in_rate_hz = in_rate_hz
        self._resampler = make_resampler(in_rate_hz, TWILIO_RATE_HZ, quality=quality)

    def process(self, pcm16: bytes) -> bytes:
        """Resample and encode a chunk; some audio may stay held back until :meth:`flush`."""
        return pcm16_to_ulaw(self._resampler.process(pcm16))

    def flush(self) -> bytes:
        """Release everything held back (end of an utterance or a pause)."""
        return pcm16_to_ulaw(self._resampler.flush())

    def reset(self) -> None:
        """Drop everything held back (barge-in)."""
        self._resampler.reset()
