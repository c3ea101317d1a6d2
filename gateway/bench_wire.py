"""`gateway bench wire`: what JSON and base64 cost per message on the hot paths, the standard library against
the alternatives (``orjson``, ``pybase64``) when they are installed, side by side in one run.

Each caller frame is one Twilio ``media`` message read (JSON, then base64 of 160 μ-law bytes) and one EVI
``audio_input`` written (base64 of 320 linear16 bytes); each playout message is one Twilio ``media`` written
(base64 of up to 200 ms of μ-law). The rows time exactly those operations on those sizes, and the whole
parse the gateway does per caller frame (:func:`gateway.wire.twilio_media.parse_twilio_message`) for scale.
The gateway reads JSON with ``pydantic_core.from_json`` and does base64 with ``binascii``; a library
earns its place only if it saves a visible share of a frame's whole cost (``gateway bench capacity``).
"""

from __future__ import annotations

import argparse
import binascii
import importlib
import json
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from gateway.wire.twilio_media import inbound_media_message, parse_twilio_message

__all__ = ["WireRow", "main", "run"]

_ULAW_FRAME = bytes(range(0x20, 0xC0))[:160]
_PCM_FRAME = bytes(320)
_ULAW_MESSAGE = bytes(1600)  # 200 ms: playout_max_message_ms


@dataclass(frozen=True)
class WireRow:
    """One operation by one library: microseconds per call, and × the standard library's row (if any)."""

    operation: str
    library: str
    us: float
    ratio: float | None


def _cases() -> list[tuple[str, str, Callable[[], object]]]:
    media = inbound_media_message(
        sequence_number=10, stream_sid="MZ" + "2" * 32, chunk=9, timestamp_ms=180, ulaw=_ULAW_FRAME
    )
    payload = binascii.b2a_base64(_ULAW_FRAME, newline=False).decode("ascii")
    cases: list[tuple[str, str, Callable[[], object]]] = [
        ("media message → dict", "json (stdlib)", lambda: json.loads(media)),
        ("media message → dict", "pydantic_core", lambda: from_json(media)),
        ("160 B base64 → bytes", "binascii (stdlib)", lambda: binascii.a2b_base64(payload, strict_mode=True)),
        ("320 B → base64", "binascii (stdlib)", lambda: binascii.b2a_base64(_PCM_FRAME, newline=False)),
        ("1600 B → base64", "binascii (stdlib)", lambda: binascii.b2a_base64(_ULAW_MESSAGE, newline=False)),
        ("whole media parse (ours)", "gateway", lambda: parse_twilio_message(media)),
    ]
    orjson = _optional("orjson")
    if orjson is not None:
        cases.append(("media message → dict", "orjson", lambda: orjson.loads(media)))
    pybase64 = _optional("pybase64")
    if pybase64 is not None:
        cases += [
            ("160 B base64 → bytes", "pybase64", lambda: pybase64.b64decode(payload, validate=True)),
            ("320 B → base64", "pybase64", lambda: pybase64.b64encode(_PCM_FRAME)),
            ("1600 B → base64", "pybase64", lambda: pybase64.b64encode(_ULAW_MESSAGE)),
        ]
    return cases


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def run(number: int = 20_000, repeats: int = 5) -> list[WireRow]:
    """Time every case (best of ``repeats`` passes of ``number`` calls); rows grouped by operation."""
    cases = _cases()
    best_us = {(op, lib): min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6 for op, lib, fn in cases}
    rows = []
    for op in dict.fromkeys(op for op, _lib, _fn in cases):
        base = next((us for (o, lib), us in best_us.items() if o == op and "stdlib" in lib), None)
        for (o, lib), us in best_us.items():
            if o == op:
                rows.append(WireRow(op, lib, round(us, 3), round(us / base, 2) if base else None))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0."""
    p = argparse.ArgumentParser(prog="gateway bench wire", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--number", type=int, default=20_000, help="calls per timed pass (default 20000)")
    args = p.parse_args(argv)
    rows = run(args.number)
    print(f"{'operation':<28} {'library':<18} {'µs':>7} {'× stdlib':>9}")
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
        print(f"{row.operation:<28} {row.library:<18} {row.us:>7.2f} {ratio:>9}")
    return 0
