"""Telephone framing: units of the 8 kHz μ-law stream, and a re-chunker that carries remainders.

Twilio sends 20 ms frames (160 μ-law bytes) in practice, but this is not documented
(twilio-media-streams.md §1.3), so everything that reads caller audio stays length-agnostic.
"""

from __future__ import annotations

TWILIO_RATE_HZ = 8000
FRAME_MS = 20
ULAW_BYTES_PER_MS = TWILIO_RATE_HZ // 1000  # one byte per sample
ULAW_FRAME_BYTES = FRAME_MS * ULAW_BYTES_PER_MS  # 160


def ulaw_bytes_to_ms(n_bytes: int) -> float:
    """Duration in ms of ``n_bytes`` of 8 kHz μ-law."""
    return n_bytes / ULAW_BYTES_PER_MS


class Framer:
    """Cuts a byte stream into fixed-size frames, carrying the remainder to the next push.

    >>> f = Framer(4)
    >>> f.push(b"abcdef"), f.push(b"gh"), f.flush()
    ([b'abcd'], [b'efgh'], b'')
    """

    __slots__ = ("_frame_bytes", "_pending")

    def __init__(self, frame_bytes: int = ULAW_FRAME_BYTES) -> None:
        if frame_bytes <= 0:
            raise ValueError("frame_bytes must be positive")
        self._frame_bytes = frame_bytes
        self._pending = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes held back, waiting to complete a frame."""
        return len(self._pending)

    def push(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every complete frame now available, oldest first."""
        self._pending += data
        n_whole = len(self._pending) // self._frame_bytes * self._frame_bytes
        if not n_whole:
            return []
        cut = bytes(self._pending[:n_whole])
        del self._pending[:n_whole]
        size = self._frame_bytes
        return [cut[i : i + size] for i in range(0, n_whole, size)]

    def flush(self) -> bytes:
        """Return and forget the partial frame held back (possibly empty)."""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest

    def reset(self) -> None:
        """Drop the partial frame (barge-in)."""
        self._pending.clear()
