"""`gateway bench`: CPU per 20 ms frame and held-back audio of the transcoders, against plain audioop + soxr.

docs/audio-path.md "Measurements" records what the per-frame conversions cost and delay; this re-measures
our :class:`~gateway.codecs.InboundTranscoder` / :class:`~gateway.codecs.OutboundTranscoder` on this
machine, in one run, on one deterministic speech-like input, next to the plain baselines:

- inbound 8 kHz μ-law → linear16 8 kHz: ``audioop.ulaw2lin``;
- inbound → 16 kHz: ``audioop.ulaw2lin`` + soxr ``ResampleStream`` HQ (int16);
- outbound 48/24 kHz linear16 → μ-law 8 kHz: soxr ``ResampleStream`` HQ (int16) + ``audioop.lin2ulaw``.

Held-back audio is input duration so far minus output duration so far, after each frame; "after flush" is
what is still missing once the stream is flushed (``flush()`` for ours, ``last=True`` for plain soxr).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import soxr

from gateway.codecs import FRAME_MS, TWILIO_RATE_HZ, InboundTranscoder, OutboundTranscoder
from gateway.codecs.g711 import audioop

__all__ = ["BenchRow", "main", "run", "speech_like_pcm16"]

COST_GOAL_RATIO = 1.5
"""Per-frame cost goal: ours within this factor of the plain audioop + soxr HQ row."""

_PCM_WIDTH = 2
_SPEECH_TOP_HZ = 5000.0  # harmonics above this carry little speech energy


def speech_like_pcm16(seconds: float, rate_hz: int, seed: int = 0) -> bytes:
    """Deterministic mono linear16 that behaves like speech: same arguments, same bytes.

    Voiced syllables (harmonics of a fundamental gliding between ~90 and ~230 Hz, 1/k roll-off, a moving
    formant-like emphasis) alternate with noise bursts (fricatives) and short pauses. Harmonics stay below
    0.45 × ``rate_hz`` and 5 kHz, so the signal is band-limited at every rate. Peak level −3 dBFS.
    """
    n = max(0, round(seconds * rate_hz))
    if n == 0:
        return b""
    rng = np.random.default_rng(seed)
    t_s = np.arange(n) / rate_hz
    f0_hz = 150.0 + 55.0 * np.sin(2 * np.pi * 0.7 * t_s) + 25.0 * np.sin(2 * np.pi * 3.1 * t_s + 1.0)
    phase = 2 * np.pi * np.cumsum(f0_hz) / rate_hz
    formant_hz = 1200.0 + 700.0 * np.sin(2 * np.pi * 1.3 * t_s)
    top_hz = min(0.45 * rate_hz, _SPEECH_TOP_HZ)
    voiced = np.zeros(n)
    for k in range(1, int(top_hz // 60.0) + 1):
        harmonic_hz = k * f0_hz
        gain = (1.0 / k) * (1.0 + 2.0 * np.exp(-(((harmonic_hz - formant_hz) / 400.0) ** 2)))
        voiced += np.where(harmonic_hz < top_hz, gain, 0.0) * np.sin(k * phase)
    voiced /= np.max(np.abs(voiced)) or 1.0
    # Syllables of 120-300 ms: voiced, a noise burst, or a pause.
    envelope_voiced = np.zeros(n)
    envelope_noise = np.zeros(n)
    start = 0
    while start < n:
        length = int(rng.uniform(0.12, 0.3) * rate_hz)
        kind = rng.choice(3, p=[0.6, 0.2, 0.2])
        ramp = np.sin(np.pi * np.arange(min(length, n - start)) / max(length, 1))
        target = envelope_voiced if kind == 0 else envelope_noise if kind == 1 else None
        if target is not None:
            target[start : start + len(ramp)] = ramp
        start += length
    noise = np.diff(rng.standard_normal(n + 1))  # tilted up, like a fricative
    noise *= 0.35 / (np.max(np.abs(noise)) or 1.0)
    if rate_hz > 2 * _SPEECH_TOP_HZ:
        spectrum = np.fft.rfft(noise)
        spectrum[np.fft.rfftfreq(n, 1.0 / rate_hz) > _SPEECH_TOP_HZ * 1.6] = 0
        noise = np.fft.irfft(spectrum, n)
    mix = envelope_voiced * voiced + envelope_noise * noise + 0.003 * rng.standard_normal(n)
    mix *= 0.708 / (np.max(np.abs(mix)) or 1.0)
    return bytes(np.rint(mix * 32767).astype("<i2").tobytes())


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One measured path."""

    name: str
    direction: str  # "in" or "out"
    rate_hz: int  # the non-8 kHz side (8000 for the plain decode)
    ours: bool
    us_per_frame: float
    ratio: float  # to the plain baseline row of the same path
    held_mean_ms: float
    held_max_ms: float
    held_after_flush_ms: float


@dataclass(frozen=True, slots=True)
class _Path:
    """A streaming path: ``make()`` gives fresh (process, flush) for one stream."""

    name: str
    direction: str
    rate_hz: int
    ours: bool
    baseline: str | None  # name of the plain row this one is compared with
    make: Callable[[], tuple[Callable[[bytes], bytes], Callable[[], bytes]]]
    in_bytes_per_ms: float
    out_bytes_per_ms: float


def _plain_inbound(out_rate_hz: int) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    if out_rate_hz == TWILIO_RATE_HZ:
        return (lambda ulaw: audioop.ulaw2lin(ulaw, _PCM_WIDTH)), (lambda: b"")
    stream = soxr.ResampleStream(TWILIO_RATE_HZ, out_rate_hz, 1, dtype="int16", quality="HQ")

    def process(ulaw: bytes) -> bytes:
        pcm = np.frombuffer(audioop.ulaw2lin(ulaw, _PCM_WIDTH), dtype=np.int16)
        return bytes(stream.resample_chunk(pcm).tobytes())

    def flush() -> bytes:
        return bytes(stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True).tobytes())

    return process, flush


def _plain_outbound(in_rate_hz: int) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    stream = soxr.ResampleStream(in_rate_hz, TWILIO_RATE_HZ, 1, dtype="int16", quality="HQ")

    def process(pcm16: bytes) -> bytes:
        out = stream.resample_chunk(np.frombuffer(pcm16, dtype=np.int16))
        return bytes(audioop.lin2ulaw(out.tobytes(), _PCM_WIDTH))

    def flush() -> bytes:
        out = stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return bytes(audioop.lin2ulaw(out.tobytes(), _PCM_WIDTH))

    return process, flush


def _ours_inbound(out_rate_hz: int) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    transcoder = InboundTranscoder(out_rate_hz)
    return transcoder.process, transcoder.flush


def _ours_outbound(in_rate_hz: int) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    transcoder = OutboundTranscoder(in_rate_hz)
    return transcoder.process, transcoder.flush


def _paths() -> list[_Path]:
    ulaw_per_ms = TWILIO_RATE_HZ / 1000  # one byte per sample
    paths: list[_Path] = []
    for rate_hz in (8000, 16000):
        pcm_per_ms = rate_hz * _PCM_WIDTH / 1000
        plain = "in 8k: audioop.ulaw2lin" if rate_hz == 8000 else "in 16k: audioop + soxr HQ"
        ours = f"in {rate_hz // 1000}k: InboundTranscoder({rate_hz})"
        paths += [
            _Path(plain, "in", rate_hz, False, None, partial(_plain_inbound, rate_hz), ulaw_per_ms, pcm_per_ms),
            _Path(ours, "in", rate_hz, True, plain, partial(_ours_inbound, rate_hz), ulaw_per_ms, pcm_per_ms),
        ]
    for rate_hz in (48000, 24000):
        pcm_per_ms = rate_hz * _PCM_WIDTH / 1000
        plain = f"out {rate_hz // 1000}k: soxr HQ + audioop"
        ours = f"out {rate_hz // 1000}k: OutboundTranscoder({rate_hz})"
        paths += [
            _Path(plain, "out", rate_hz, False, None, partial(_plain_outbound, rate_hz), pcm_per_ms, ulaw_per_ms),
            _Path(ours, "out", rate_hz, True, plain, partial(_ours_outbound, rate_hz), pcm_per_ms, ulaw_per_ms),
        ]
    return paths


def _frames(seconds: float) -> dict[int, list[bytes]]:
    """20 ms frames of the same speech-like signal: μ-law at 8 kHz, linear16 at 24/48 kHz."""
    n_frames = max(1, int(seconds * 1000) // FRAME_MS)
    frames: dict[int, list[bytes]] = {}
    for rate_hz in (8000, 24000, 48000):
        frame_bytes = rate_hz * FRAME_MS // 1000 * _PCM_WIDTH
        pcm = speech_like_pcm16(n_frames * FRAME_MS / 1000, rate_hz)
        if rate_hz == TWILIO_RATE_HZ:
            pcm = audioop.lin2ulaw(pcm, _PCM_WIDTH)
            frame_bytes //= _PCM_WIDTH
        frames[rate_hz] = [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
    return frames


def _time_pass_s(path: _Path, frames: Sequence[bytes]) -> float:
    """One timed pass over the frames on a fresh stream (construction not timed, GC off)."""
    process, _flush = path.make()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start_s = time.perf_counter()
        for frame in frames:
            process(frame)
        return time.perf_counter() - start_s
    finally:
        if gc_was_enabled:
            gc.enable()


def _held_ms(path: _Path, frames: Sequence[bytes]) -> tuple[float, float, float]:
    """(mean, max) of input-minus-output duration after each frame, and what a final flush leaves."""
    process, flush = path.make()
    in_ms = out_ms = 0.0
    held: list[float] = []
    for frame in frames:
        in_ms += len(frame) / path.in_bytes_per_ms
        out_ms += len(process(frame)) / path.out_bytes_per_ms
        held.append(in_ms - out_ms)
    out_ms += len(flush()) / path.out_bytes_per_ms
    return float(np.mean(held)), max(held), in_ms - out_ms


def run(seconds: float = 10.0, repeats: int = 5) -> list[BenchRow]:
    """Measure every path on the same input; rows in display order.

    Passes are interleaved (every path once per round, after one warm-up round) so that drift in the
    machine's speed hits all rows alike; each row keeps its best pass.
    """
    frames = _frames(seconds)
    paths = _paths()
    inputs = [frames[TWILIO_RATE_HZ if path.direction == "in" else path.rate_hz] for path in paths]
    best_s = [float("inf")] * len(paths)
    for round_index in range(repeats + 1):
        for i, (path, path_frames) in enumerate(zip(paths, inputs, strict=True)):
            elapsed_s = _time_pass_s(path, path_frames)
            if round_index:  # round 0 is the warm-up
                best_s[i] = min(best_s[i], elapsed_s)
    us_per_frame = {
        path.name: best / len(frames_) * 1e6 for path, best, frames_ in zip(paths, best_s, inputs, strict=True)
    }
    rows: list[BenchRow] = []
    for path, path_frames in zip(paths, inputs, strict=True):
        held_mean, held_max, held_after = _held_ms(path, path_frames)
        us = us_per_frame[path.name]
        base_us = us_per_frame[path.baseline] if path.baseline else us
        rows.append(
            BenchRow(
                name=path.name,
                direction=path.direction,
                rate_hz=path.rate_hz,
                ours=path.ours,
                us_per_frame=round(us, 3),
                ratio=round(us / base_us, 2),
                held_mean_ms=round(held_mean, 3),
                held_max_ms=round(held_max, 3),
                held_after_flush_ms=round(held_after, 3),
            )
        )
    return rows


def _table(rows: Sequence[BenchRow], seconds: float, repeats: int) -> str:
    header = ("path", "µs/frame", "× plain", "held mean ms", "held max ms", "after flush ms")
    lines = [
        f"{FRAME_MS} ms frames, {seconds:g} s of speech-like audio, best of {repeats} repeats",
        f"{header[0]:<34} {header[1]:>9} {header[2]:>8} {header[3]:>13} {header[4]:>12} {header[5]:>15}",
    ]
    for row in rows:
        lines.append(
            f"{row.name:<34} {row.us_per_frame:>9.2f} {row.ratio:>8.2f} {row.held_mean_ms:>13.2f}"
            f" {row.held_max_ms:>12.2f} {row.held_after_flush_ms:>15.2f}"
        )
    ours = [row for row in rows if row.ours]
    inbound_8k = [row for row in ours if row.direction == "in" and row.rate_hz == TWILIO_RATE_HZ]
    outbound = [row for row in ours if row.direction == "out"]
    lines.append("")
    lines.append(f"inbound 8 kHz holds back 0 ms: {_yes(all(r.held_max_ms == 0 for r in inbound_8k))}")
    lines.append(f"outbound holds back 0 ms after flush: {_yes(all(r.held_after_flush_ms == 0 for r in outbound))}")
    for row in ours:
        verdict = _yes(row.ratio <= COST_GOAL_RATIO)
        lines.append(f"{row.name} within {COST_GOAL_RATIO}× of plain: {verdict} ({row.ratio:.2f}×)")
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (or JSON with ``--json``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="gateway bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=_positive_float, default=10.0, help="audio length (default 10)")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed passes, best kept (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = run(args.seconds, args.repeats)
    if args.json:
        report = {"frame_ms": FRAME_MS, "seconds": args.seconds, "repeats": args.repeats}
        print(json.dumps({**report, "rows": [asdict(row) for row in rows]}, indent=2))
    else:
        print(_table(rows, args.seconds, args.repeats))
    return 0
