"""G.711 μ-law ⇄ 16-bit linear PCM (little-endian), via the stdlib ``audioop`` (``audioop-lts`` on 3.13+).

Twilio Media Streams carry raw μ-law at 8 kHz mono (twilio-media-streams.md §1.3); EVI accepts only
``linear16`` (evi-protocol.md §4.1). Both functions are stateless and length-agnostic. The ``audioop``
module imported here (its deprecation warning silenced) is the one the rest of the package uses, and
:func:`require_pcm16` is the one check that bytes are whole 16-bit samples.
"""

from __future__ import annotations

import warnings

from gateway.errors import AudioFormatError

with warnings.catch_warnings():
    # audioop is deprecated (not removed) on 3.11/3.12; audioop-lts provides the same module on 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "SAMPLE_WIDTH_BYTES",
    "ULAW_SILENCE_BYTE",
    "audioop",
    "pcm16_to_ulaw",
    "require_pcm16",
    "ulaw_silence",
    "ulaw_to_pcm16",
]

SAMPLE_WIDTH_BYTES = 2
ULAW_SILENCE_BYTE = 0xFF
"""μ-law code for digital silence (linear 0); used to fill gaps in the caller's stream."""


def require_pcm16(pcm16: bytes, channels: int = 1) -> None:
    """Raise :class:`AudioFormatError` unless ``pcm16`` is whole 16-bit samples (whole frames of ``channels``)."""
    if len(pcm16) % (SAMPLE_WIDTH_BYTES * channels):
        if channels == 1:
            raise AudioFormatError(f"linear16 needs an even byte count, got {len(pcm16)} bytes")
        raise AudioFormatError(f"{len(pcm16)} bytes is not a whole number of {channels}-channel 16-bit frames")


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode μ-law bytes to 16-bit little-endian PCM (two bytes out per byte in)."""
    return audioop.ulaw2lin(ulaw, SAMPLE_WIDTH_BYTES)


def pcm16_to_ulaw(pcm16: bytes) -> bytes:
    """Encode 16-bit little-endian PCM to μ-law; an odd byte count is an :class:`AudioFormatError`."""
    require_pcm16(pcm16)
    return audioop.lin2ulaw(pcm16, SAMPLE_WIDTH_BYTES)


def ulaw_silence(n_bytes: int) -> bytes:
    """``n_bytes`` of μ-law silence (one byte per sample)."""
    return bytes([ULAW_SILENCE_BYTE]) * n_bytes
