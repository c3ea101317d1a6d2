"""Load-test input: a folder of recorded caller audio, each with an optional ``<name>.toml`` scenario.

Owns reading and validating everything before any call is placed: every recording is loaded once
(WAV at any rate, or raw μ-law, resampled to 8 kHz μ-law by :func:`load_recording`), every scenario file
is parsed and checked, and all problems found anywhere are raised together as one
:class:`ScenarioError` naming each file and what is wrong with it.

A recording is cut into the caller's utterances either by silence (the default) or by explicit
``[[turn]]`` segments. Each turn says when the caller starts talking:

- ``wait_for_agent = true``: after the agent's reply to the previous turn (or its greeting) has started
  and then been quiet for ``agent_silence_ms``; then ``pause_before_ms``;
- ``barge_in_after_ms = N``: N ms after the agent *starts* its reply, talking over it;
- otherwise ``pause_before_ms`` after the caller's previous utterance ended.

Example ``greeting.toml``::

    agent_silence_ms = 700          # quiet that counts as "the agent finished"
    hangup_after_last_turn_ms = 3000

    [defaults]
    wait_for_agent = true
    pause_before_ms = 300

    [[turn]]                        # explicit segments of the recording, in ms
    start_ms = 0
    end_ms = 1800
    [[turn]]
    start_ms = 2400
    end_ms = 4100
    barge_in_after_ms = 600
    [[turn]]
    dtmf = "1#"                     # a keypress-only turn

Without ``start_ms``/``end_ms`` the ``[[turn]]`` tables apply, in order, to the utterances found by
silence (``silence_threshold_dbfs``, ``min_silence_ms``, ``min_utterance_ms``).
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gateway.codecs.framing import FRAME_MS, ULAW_BYTES_PER_MS
from gateway.codecs.g711 import ulaw_to_pcm16
from gateway.codecs.levels import frame_levels_dbfs
from gateway.errors import AudioFormatError, ScenarioError
from gateway.simulator.recording import RAW_ULAW_SUFFIXES, load_recording

__all__ = [
    "RECORDING_SUFFIXES",
    "Scenario",
    "SplitParams",
    "Turn",
    "TurnKind",
    "load_folder",
    "split_utterances",
]

RECORDING_SUFFIXES = (".wav", ".wave", *RAW_ULAW_SUFFIXES)
TurnKind = Literal["wait", "pause", "barge_in", "dtmf"]

_DTMF_KEYS = frozenset("0123456789*#ABCD")
_TURN_KEYS = {"start_ms", "end_ms", "pause_before_ms", "wait_for_agent", "barge_in_after_ms", "dtmf"}
_OPTION_KEYS = _TURN_KEYS - {"start_ms", "end_ms"}
_TOP_KEYS = {
    "split",
    "silence_threshold_dbfs",
    "min_silence_ms",
    "min_utterance_ms",
    "agent_silence_ms",
    "greeting_timeout_ms",
    "response_timeout_ms",
    "hangup_after_ms",
    "hangup_after_last_turn_ms",
    "defaults",
    "turn",
}
_DEFAULT_SPLIT = (-40.0, 350, 150)  # silence_threshold_dbfs, min_silence_ms, min_utterance_ms
_DEFAULT_TIMING = {"agent_silence_ms": 700, "greeting_timeout_ms": 3000, "response_timeout_ms": 10_000}
_DEFAULT_OPTIONS: dict[str, Any] = {"wait_for_agent": True, "pause_before_ms": 200}


@dataclass(frozen=True, slots=True)
class SplitParams:
    """How a recording is cut into utterances by silence (20 ms frames, RMS level)."""

    silence_threshold_dbfs: float = _DEFAULT_SPLIT[0]
    min_silence_ms: int = _DEFAULT_SPLIT[1]
    min_utterance_ms: int = _DEFAULT_SPLIT[2]


@dataclass(frozen=True, slots=True)
class Turn:
    """One thing the caller does: optional keypresses, then an utterance cut from the recording."""

    index: int
    audio_ulaw: bytes
    source_start_ms: int | None
    source_end_ms: int | None
    wait_for_agent: bool = False
    pause_before_ms: int = 0
    barge_in_after_ms: int | None = None
    dtmf: str = ""

    @property
    def kind(self) -> TurnKind:
        """How the turn is timed (``dtmf`` for a keypress-only turn)."""
        if not self.audio_ulaw:
            return "dtmf"
        if self.barge_in_after_ms is not None:
            return "barge_in"
        return "wait" if self.wait_for_agent else "pause"

    @property
    def audio_ms(self) -> float:
        """Duration of the utterance."""
        return len(self.audio_ulaw) / ULAW_BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class Scenario:
    """A recording and the turns the caller plays from it."""

    name: str
    recording_path: Path
    scenario_path: Path | None
    recording_ms: float
    turns: tuple[Turn, ...]
    agent_silence_ms: int = _DEFAULT_TIMING["agent_silence_ms"]
    greeting_timeout_ms: int = _DEFAULT_TIMING["greeting_timeout_ms"]
    response_timeout_ms: int = _DEFAULT_TIMING["response_timeout_ms"]
    hangup_after_ms: int | None = None
    hangup_after_last_turn_ms: int | None = None


def split_utterances(ulaw: bytes, params: SplitParams = SplitParams()) -> list[tuple[int, int]]:
    """``(start_ms, end_ms)`` of each stretch of speech, frame-aligned: loud 20 ms frames merged across
    quiet shorter than ``min_silence_ms``; stretches shorter than ``min_utterance_ms`` are dropped."""
    fb = FRAME_MS * ULAW_BYTES_PER_MS
    n_frames = len(ulaw) // fb
    if n_frames == 0:
        return []
    levels_dbfs = frame_levels_dbfs(ulaw_to_pcm16(ulaw[: n_frames * fb]), fb)
    loud = np.flatnonzero(levels_dbfs > params.silence_threshold_dbfs)
    spans: list[list[int]] = []
    max_gap_frames = math.ceil(params.min_silence_ms / FRAME_MS)
    for frame in loud.tolist():
        if spans and frame - spans[-1][1] < max_gap_frames:
            spans[-1][1] = frame + 1
        else:
            spans.append([frame, frame + 1])
    return [(a * FRAME_MS, b * FRAME_MS) for a, b in spans if (b - a) * FRAME_MS >= params.min_utterance_ms]


class _Checker:
    """Collects problems for one file instead of stopping at the first."""

    def __init__(self, where: Path, problems: list[str]) -> None:
        self.where = where
        self.problems = problems

    def fail(self, what: str) -> None:
        self.problems.append(f"{self.where}: {what}")

    def unknown_keys(self, table: dict[str, Any], allowed: set[str], context: str) -> None:
        for key in sorted(set(table) - allowed):
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(f"unknown key {key!r} in {context}{hint}")

    def ms(self, table: dict[str, Any], key: str, context: str, *, optional: bool = True) -> int | None:
        if key not in table:
            if not optional:
                self.fail(f"{context} needs {key!r}")
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            self.fail(f"{context}: {key} = {value!r} must be a non-negative number of milliseconds")
            return None
        return round(value)

    def flag(self, table: dict[str, Any], key: str, context: str) -> bool | None:
        if key not in table:
            return None
        if not isinstance(table[key], bool):
            self.fail(f"{context}: {key} = {table[key]!r} must be true or false")
            return None
        return bool(table[key])

    def dtmf(self, table: dict[str, Any], context: str) -> str:
        value = table.get("dtmf", "")
        if not isinstance(value, str) or any(ch not in _DTMF_KEYS for ch in value):
            self.fail(f"{context}: dtmf = {value!r} must be a string of telephone keys 0-9 * # A-D")
            return ""
        return value


def _turn_options(check: _Checker, table: dict[str, Any], defaults: dict[str, Any], context: str) -> dict[str, Any]:
    """Merge one turn's options over the defaults; a barge-in ignores the defaults' other timing."""
    wait = check.flag(table, "wait_for_agent", context)
    pause = check.ms(table, "pause_before_ms", context)
    barge = check.ms(table, "barge_in_after_ms", context)
    if barge is not None and (wait or pause is not None):
        check.fail(f"{context}: barge_in_after_ms cannot be combined with wait_for_agent or pause_before_ms")
    if barge is not None:
        return {
            "wait_for_agent": False,
            "pause_before_ms": 0,
            "barge_in_after_ms": barge,
            "dtmf": check.dtmf(table, context),
        }
    return {
        "wait_for_agent": defaults["wait_for_agent"] if wait is None else wait,
        "pause_before_ms": defaults["pause_before_ms"] if pause is None else pause,
        "barge_in_after_ms": defaults.get("barge_in_after_ms"),
        "dtmf": check.dtmf(table, context) or defaults.get("dtmf", ""),
    }


def _read_toml(check: _Checker) -> dict[str, Any] | None:
    try:
        with check.where.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        check.fail(f"not valid TOML: {exc}")
    except OSError as exc:
        check.fail(f"cannot read: {exc.strerror or exc}")
    return None


def _build_scenario(recording: Path, ulaw: bytes, toml_path: Path | None, problems: list[str]) -> Scenario | None:
    check = _Checker(toml_path or recording, problems)
    before = len(problems)
    data: dict[str, Any] = {}
    if toml_path is not None:
        loaded = _read_toml(check)
        if loaded is None:
            return None
        data = loaded
    check.unknown_keys(data, _TOP_KEYS, "the scenario")
    recording_ms = len(ulaw) / ULAW_BYTES_PER_MS
    split = _split_params(check, data)
    defaults = _defaults(check, data)
    tables, mode = _turn_tables(check, data)
    turns: list[Turn] = []
    if mode == "turns":
        turns = _explicit_turns(check, tables, defaults, ulaw)
    elif mode == "silence" and len(problems) == before:
        turns = _silence_turns(check, tables, defaults, ulaw, split)
    timing = {
        key: check.ms(data, key, "the scenario")
        for key in ("agent_silence_ms", "greeting_timeout_ms", "response_timeout_ms")
    }
    hangup = check.ms(data, "hangup_after_ms", "the scenario")
    after_last = check.ms(data, "hangup_after_last_turn_ms", "the scenario")
    if len(problems) > before:
        return None
    return Scenario(
        name=recording.stem,
        recording_path=recording,
        scenario_path=toml_path,
        recording_ms=recording_ms,
        turns=tuple(turns),
        agent_silence_ms=_default(timing["agent_silence_ms"], _DEFAULT_TIMING["agent_silence_ms"]),
        greeting_timeout_ms=_default(timing["greeting_timeout_ms"], _DEFAULT_TIMING["greeting_timeout_ms"]),
        response_timeout_ms=_default(timing["response_timeout_ms"], _DEFAULT_TIMING["response_timeout_ms"]),
        hangup_after_ms=hangup,
        hangup_after_last_turn_ms=after_last,
    )


def _split_params(check: _Checker, data: dict[str, Any]) -> SplitParams:
    threshold = data.get("silence_threshold_dbfs", _DEFAULT_SPLIT[0])
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -120 <= threshold < 0:
        check.fail(f"silence_threshold_dbfs = {threshold!r} must be a level in dBFS between -120 and 0, e.g. -40")
        threshold = _DEFAULT_SPLIT[0]
    min_silence = check.ms(data, "min_silence_ms", "the scenario")
    min_utterance = check.ms(data, "min_utterance_ms", "the scenario")
    return SplitParams(
        silence_threshold_dbfs=float(threshold),
        min_silence_ms=_DEFAULT_SPLIT[1] if min_silence is None else max(FRAME_MS, min_silence),
        min_utterance_ms=_DEFAULT_SPLIT[2] if min_utterance is None else min_utterance,
    )


def _defaults(check: _Checker, data: dict[str, Any]) -> dict[str, Any]:
    table = data.get("defaults", {})
    if not isinstance(table, dict):
        check.fail("[defaults] must be a table")
        table = {}
    check.unknown_keys(table, _OPTION_KEYS, "[defaults]")
    return _turn_options(check, table, _DEFAULT_OPTIONS, "[defaults]")


def _turn_tables(check: _Checker, data: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The [[turn]] tables and how the recording is split: ``turns`` (explicit spans), ``silence``, or ``""``
    when the split cannot be decided (a problem was recorded)."""
    tables = data.get("turn", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        check.fail("turn must be an array of tables ([[turn]])")
        tables = []
    explicit = any("start_ms" in t or "end_ms" in t for t in tables)
    mode = data.get("split", "turns" if explicit else "silence")
    if mode not in ("silence", "turns"):
        check.fail(f"split = {mode!r} must be 'silence' or 'turns'")
    elif mode == "silence" and explicit:
        check.fail("split = 'silence' but [[turn]] tables give start_ms/end_ms; drop one or the other")
    elif mode == "turns" and not tables:
        check.fail("split = 'turns' needs [[turn]] tables with start_ms and end_ms")
    else:
        return tables, str(mode)
    return tables, "turns" if explicit else ""


def _explicit_turns(check: _Checker, tables: list[dict[str, Any]], defaults: dict[str, Any], ulaw: bytes) -> list[Turn]:
    recording_ms = len(ulaw) / ULAW_BYTES_PER_MS
    turns: list[Turn] = []
    for i, table in enumerate(tables):
        context = f"[[turn]] #{i + 1}"
        check.unknown_keys(table, _TURN_KEYS, context)
        options = _turn_options(check, table, defaults, context)
        start, end = check.ms(table, "start_ms", context), check.ms(table, "end_ms", context)
        if ("start_ms" in table) != ("end_ms" in table):
            check.fail(f"{context} needs both start_ms and end_ms (or neither, for a dtmf-only turn)")
            continue
        if "start_ms" not in table:
            if not options["dtmf"]:
                check.fail(f"{context} has no start_ms/end_ms and no dtmf: nothing to do")
            turns.append(Turn(i, b"", None, None, **options))
            continue
        if start is None or end is None:
            continue
        if end - start < FRAME_MS:
            check.fail(f"{context}: end_ms {end} must be at least {FRAME_MS} ms after start_ms {start}")
        elif end > recording_ms + FRAME_MS:
            check.fail(f"{context}: end_ms {end} is past the end of the recording ({recording_ms:.0f} ms)")
        else:
            audio = ulaw[start * ULAW_BYTES_PER_MS : end * ULAW_BYTES_PER_MS]
            turns.append(Turn(i, audio, start, end, **options))
    return turns


def _silence_turns(
    check: _Checker, tables: list[dict[str, Any]], defaults: dict[str, Any], ulaw: bytes, split: SplitParams
) -> list[Turn]:
    spans = split_utterances(ulaw, split)
    if not spans:
        check.fail(
            f"no speech found above {split.silence_threshold_dbfs} dBFS in {len(ulaw) / ULAW_BYTES_PER_MS:.0f} ms "
            "of audio (lower silence_threshold_dbfs, or give [[turn]] start_ms/end_ms)"
        )
    if len(tables) > len(spans):
        check.fail(f"{len(tables)} [[turn]] tables but only {len(spans)} utterances found by silence")
    turns: list[Turn] = []
    for i, (start, end) in enumerate(spans):
        table = tables[i] if i < len(tables) else {}
        context = f"[[turn]] #{i + 1}"
        check.unknown_keys(table, _OPTION_KEYS, f"{context} (split by silence: no start_ms/end_ms)")
        options = _turn_options(check, table, defaults, context)
        audio = ulaw[start * ULAW_BYTES_PER_MS : end * ULAW_BYTES_PER_MS]
        turns.append(Turn(i, audio, start, end, **options))
    return turns


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def load_folder(folder: str | Path) -> list[Scenario]:
    """Load and check every recording in ``folder`` with its scenario; raise one :class:`ScenarioError`
    listing every problem, or return the scenarios sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise ScenarioError([f"{root}: not a directory of recordings"])
    problems: list[str] = []
    recordings = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in RECORDING_SUFFIXES)
    tomls = {p.stem: p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".toml"}
    stems = [p.stem for p in recordings]
    for stem in sorted({s for s in stems if stems.count(s) > 1}):
        problems.append(f"{root / stem}.*: several recordings share the name {stem!r}; one scenario cannot fit both")
    for stem, path in sorted(tomls.items()):
        if stem not in stems:
            problems.append(f"{path}: scenario has no recording beside it ({stem}.wav or {stem}.ulaw)")
    if not recordings:
        suffixes = ", ".join(RECORDING_SUFFIXES)
        problems.append(f"{root}: no recordings found (looked for {suffixes})")
    scenarios: list[Scenario] = []
    for path in recordings:
        try:
            ulaw = load_recording(path)
        except AudioFormatError as exc:
            problems.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
            continue
        scenario = _build_scenario(path, ulaw, tomls.get(path.stem), problems)
        if scenario is not None:
            scenarios.append(scenario)
    if problems:
        raise ScenarioError(problems)
    return scenarios
