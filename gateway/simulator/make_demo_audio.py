"""(Re)creates the bundled recordings with eSpeak NG: the demo caller in ``gateway/simulator/data/`` and the
gateway's own prompts in ``gateway/data/prompts/``.

Owns the demo caller's script (:data:`DEMO_CALLER_LINES`): one 8 kHz 16-bit mono WAV per line under
``data/demo_caller/`` plus ``lines.txt`` (``filename<TAB>text`` per line). The caller speaks with
:data:`~gateway.simulator.voice.CALLER_VOICE`, not the agent's voice, so the two sides are easy to tell apart
in a stereo recording of the demo. Synthesis is deterministic, so running this again reproduces the
committed bytes; ``--check`` verifies that without writing. Needs the ``voice`` extra.

Run with ``python -m gateway.simulator.make_demo_audio [--out DIR] [--check]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.codecs.framing import TWILIO_RATE_HZ
from gateway.codecs.g711 import pcm16_to_ulaw
from gateway.simulator.voice import CALLER_RATE_WPM, CALLER_VOICE, EspeakSynthesizer
from gateway.simulator.wavgen import wav_bytes

__all__ = ["DATA_DIR", "DEMO_CALLER_DIR", "DEMO_CALLER_LINES", "main", "render_demo_caller"]

DATA_DIR = Path(__file__).resolve().parent / "data"
DEMO_CALLER_DIR = DATA_DIR / "demo_caller"

DEMO_CALLER_LINES: tuple[tuple[str, str], ...] = (
    ("01_hello.wav", "Hello, can you hear me?"),
    ("02_weather.wav", "What is the weather like today?"),
    ("03_story.wav", "Can you tell me a long story?"),
    ("04_interrupt.wav", "Sorry, stop. Tell me something short instead."),
    ("05_goodbye.wav", "Thank you, goodbye."),
)
"""The demo caller's lines in order: (file name, text)."""

LINES_FILE = "lines.txt"

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts"
PROMPTS: tuple[tuple[str, str], ...] = (
    ("apology.ulaw", "Sorry, we are having technical trouble. Please call again later."),
)
"""What the gateway itself says to a caller, as raw 8 kHz μ-law: (file name, text)."""


def render_prompts() -> dict[str, bytes]:
    """Every gateway prompt by file name, as 8 kHz μ-law bytes (the agent's voice)."""
    synthesizer = EspeakSynthesizer()
    return {name: pcm16_to_ulaw(synthesizer.synthesize(text, TWILIO_RATE_HZ)) for name, text in PROMPTS}


def render_demo_caller() -> dict[str, bytes]:
    """Every demo caller file (WAVs and ``lines.txt``) by name, as bytes."""
    synthesizer = EspeakSynthesizer(voice=CALLER_VOICE, rate_wpm=CALLER_RATE_WPM)
    files = {
        name: wav_bytes(synthesizer.synthesize(text, TWILIO_RATE_HZ), TWILIO_RATE_HZ)
        for name, text in DEMO_CALLER_LINES
    }
    files[LINES_FILE] = "".join(f"{name}\t{text}\n" for name, text in DEMO_CALLER_LINES).encode("utf-8")
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the demo recordings (or with ``--check`` compare them); returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_CALLER_DIR, help="directory for the caller's files")
    parser.add_argument("--check", action="store_true", help="verify the files are up to date, write nothing")
    args = parser.parse_args(argv)
    out: Path = args.out
    targets = {out / name: data for name, data in render_demo_caller().items()}
    targets.update({PROMPTS_DIR / name: data for name, data in render_prompts().items()})
    if args.check:
        stale = [path for path, data in targets.items() if not path.is_file() or path.read_bytes() != data]
        for path in stale:
            print(f"stale or missing: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path, data in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    total = sum(len(data) for data in targets.values())
    print(f"wrote {len(targets)} files ({total / 1024:.0f} KiB) to {out} and {PROMPTS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
