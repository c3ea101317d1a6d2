"""Offline speech for the simulators: text-to-speech and speech-to-text behind two small protocols.

Owns the :class:`Synthesizer` and :class:`Recognizer` protocols, their real backends and their fallbacks:

- :class:`EspeakSynthesizer`: eSpeak NG (``espeakng-loader`` ships ``libespeak-ng`` and its data), driven
  through ctypes, resampled with soxr HQ from the engine's native 22050 Hz.
- :class:`PocketsphinxRecognizer`: pocketsphinx with its bundled en-US acoustic model and dictionary, the
  general language model by default or a small one compiled from ``phrases`` (far more accurate on the
  sentences of a scripted conversation, see :data:`DEMO_PHRASES`).
- :class:`ToneSynthesizer` and :class:`DurationRecognizer`: labelled stand-ins (``real=False``) used when the
  optional ``voice`` extra is not installed.

Nothing here downloads anything. Both real backends block the calling thread (synthesis costs a few
milliseconds per second of speech; recognition about 0.35 s per second with the general language model,
0.05 s with a phrase model), so asyncio code
should call them through :func:`asyncio.to_thread`. :func:`make_synthesizer` and :func:`make_recognizer`
pick a backend and log the choice once.
"""

from __future__ import annotations

import _ctypes
import ctypes
import importlib
import logging
import re
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soxr

from gateway.codecs.g711 import require_pcm16
from gateway.errors import AudioFormatError, ConfigError, UnknownWordsError

__all__ = [
    "AGENT_VOICE",
    "CALLER_RATE_WPM",
    "CALLER_VOICE",
    "DEMO_PHRASES",
    "DurationRecognizer",
    "EspeakSynthesizer",
    "PocketsphinxRecognizer",
    "Recognizer",
    "Synthesizer",
    "ToneSynthesizer",
    "make_recognizer",
    "make_synthesizer",
]

log = logging.getLogger(__name__)

AGENT_VOICE = "en-us"
"""The simulated agent's eSpeak NG voice."""
CALLER_VOICE = "en-us+f1"
"""The demo caller's voice: a female variant, so the two sides are told apart in a stereo recording."""
CALLER_RATE_WPM = 155
"""The demo caller speaks a little slower than the agent (170 wpm)."""

DEMO_PHRASES: tuple[str, ...] = (
    "hello can you hear me",
    "hello",
    "hi there",
    "can you hear me",
    "yes i can hear you",
    "what is the weather like today",
    "what is the weather like tomorrow",
    "is it going to rain",
    "can you tell me a long story",
    "tell me a story",
    "can you tell me a joke",
    "sorry stop",
    "stop",
    "tell me something short instead",
    "tell me something else",
    "thank you goodbye",
    "thank you",
    "goodbye",
    "yes please",
    "no thanks",
    "i am fine thank you",
    "how are you",
    "what time is it",
    "who are you",
    "what can you do",
    "sorry stop tell me something short instead",
)
"""Sentences of the scripted demo conversation and common phone small talk, for ``phrases``."""

_VOICE_HINT = "install the 'voice' extra: pip install 'evi-phone-gateway[voice]'"
_MIN_RATE_HZ = 4000
_MAX_RATE_HZ = 192_000
_SAMPLE_BYTES = 2

# eSpeak NG speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_ESPEAK_BUFFER_MS = 200
_ESPEAK_SEED = 1
_MIN_WPM, _MAX_WPM = 80, 450

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_ESPEAK_LOCK = threading.Lock()
"""libespeak-ng keeps its state in globals and is not re-entrant: one synthesis at a time per process."""

_PS_RATE_HZ = 16_000
_PS_LOGLEVEL = "ERROR"
_WORD_RE = re.compile(r"[a-z']+")

_logged_choices: set[str] = set()


class Synthesizer(Protocol):
    """Turns text into linear16 mono speech."""

    name: str
    real: bool

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        """``text`` spoken as 16-bit little-endian mono PCM at ``rate_hz``; empty text gives no audio."""
        ...


class Recognizer(Protocol):
    """Turns linear16 mono speech into text."""

    name: str
    real: bool

    def transcribe(self, pcm16: bytes, rate_hz: int) -> str:
        """The words heard in ``pcm16`` (16-bit little-endian mono at ``rate_hz``)."""
        ...


def _check_rate(rate_hz: int) -> None:
    if not _MIN_RATE_HZ <= rate_hz <= _MAX_RATE_HZ:
        raise AudioFormatError(f"sample rate must be {_MIN_RATE_HZ}-{_MAX_RATE_HZ} Hz, got {rate_hz}")


def _resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    if from_hz == to_hz or samples.size == 0:
        return samples
    out: np.ndarray = soxr.resample(samples, from_hz, to_hz, quality="HQ")
    return out


def _log_choice(kind: str, name: str, why: str) -> None:
    key = f"{kind}:{name}"
    if key not in _logged_choices:
        _logged_choices.add(key)
        log.info("%s: using %s (%s)", kind, name, why)


# --- eSpeak NG --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _EspeakFiles:
    library: str
    data: str


_espeak_files: _EspeakFiles | None = None


def _find_espeak() -> _EspeakFiles:
    """Locate the library and data shipped by ``espeakng-loader`` (imported on first use only)."""
    global _espeak_files
    if _espeak_files is None:
        try:
            loader: Any = importlib.import_module("espeakng_loader")
            files = _EspeakFiles(library=str(loader.get_library_path()), data=str(loader.get_data_path()))
        except (ImportError, RuntimeError) as exc:
            raise ConfigError(f"eSpeak NG is not available ({exc}); {_VOICE_HINT}") from exc
        if not Path(files.library).is_file():
            raise ConfigError(f"eSpeak NG library missing at {files.library}; {_VOICE_HINT}")
        _espeak_files = files
    return _espeak_files


def _bind(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int


def _unload(lib: ctypes.CDLL) -> None:
    if sys.platform == "win32":
        _ctypes.FreeLibrary(lib._handle)
    else:
        _ctypes.dlclose(lib._handle)


def _espeak_run(text: str, voice: str, rate_wpm: int, pitch: int | None) -> tuple[np.ndarray, int]:
    """Synthesize on a freshly loaded engine; returns int16 samples and the engine's native rate.

    libespeak-ng keeps synthesis state in C statics that no API resets (the pitch-flutter phase, the
    automatic gain), so the same text comes out slightly different on every call of a long-lived engine.
    Loading the library for each utterance (about 4 ms) makes the output a function of its inputs.
    """
    files = _find_espeak()
    chunks: list[bytes] = []

    def on_audio(wav: ctypes._Pointer[ctypes.c_short], n_samples: int, _events: int | None) -> int:
        if n_samples > 0 and wav:
            chunks.append(ctypes.string_at(wav, n_samples * _SAMPLE_BYTES))
        return 0

    callback = _SynthCallback(on_audio)
    encoded = text.encode("utf-8") + b"\x00"
    with _ESPEAK_LOCK:
        try:
            lib = ctypes.CDLL(files.library)
        except OSError as exc:
            raise ConfigError(f"cannot load eSpeak NG from {files.library} ({exc}); {_VOICE_HINT}") from exc
        try:
            try:
                _bind(lib)
            except AttributeError as exc:
                raise ConfigError(f"{files.library} is not a usable libespeak-ng ({exc}); {_VOICE_HINT}") from exc
            native_rate_hz = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, _ESPEAK_BUFFER_MS, files.data.encode(), _INITIALIZE_DONT_EXIT
            )
            if native_rate_hz <= 0:
                raise ConfigError(f"eSpeak NG failed to initialise with data at {files.data}; {_VOICE_HINT}")
            try:
                lib.espeak_SetSynthCallback(callback)
                lib.espeak_ng_SetRandSeed(_ESPEAK_SEED)
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ConfigError(f"eSpeak NG has no voice {voice!r} (try 'en-us' or 'en-us+f2')")
                lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
                if pitch is not None:
                    lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
                status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                if status != 0:
                    raise ConfigError(f"eSpeak NG synthesis failed with status {status}")
            finally:
                lib.espeak_Terminate()
        finally:
            _unload(lib)
    return np.frombuffer(b"".join(chunks), dtype="<i2"), int(native_rate_hz)


class EspeakSynthesizer:
    """eSpeak NG speech; deterministic (same text, voice and rate give the same bytes) and thread-safe."""

    real: bool = True

    def __init__(self, voice: str = AGENT_VOICE, rate_wpm: int = 170, pitch: int | None = None) -> None:
        if not _MIN_WPM <= rate_wpm <= _MAX_WPM:
            raise ConfigError(f"eSpeak NG speaking rate must be {_MIN_WPM}-{_MAX_WPM} wpm, got {rate_wpm}")
        if pitch is not None and not 0 <= pitch <= 99:
            raise ConfigError(f"eSpeak NG pitch must be 0-99, got {pitch}")
        if not voice or "\x00" in voice:
            raise ConfigError(f"eSpeak NG voice name must be a non-empty string, got {voice!r}")
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.pitch = pitch
        self.name = f"espeak-ng ({voice}, {rate_wpm} wpm)"
        self._checked = False

    def check(self) -> None:
        """Load the engine and select the voice once; :class:`ConfigError` if either is unavailable."""
        if not self._checked:
            _espeak_run("", self.voice, self.rate_wpm, self.pitch)
            self._checked = True

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        """``text`` spoken by eSpeak NG as linear16 mono at ``rate_hz`` (soxr HQ from 22050 Hz)."""
        _check_rate(rate_hz)
        cleaned = " ".join(text.replace("\x00", " ").split())
        if not cleaned:
            return b""
        samples, native_rate_hz = _espeak_run(cleaned, self.voice, self.rate_wpm, self.pitch)
        self._checked = True
        resampled = _resample(samples, native_rate_hz, rate_hz)
        return np.asarray(resampled, dtype="<i2").tobytes()


# --- pocketsphinx -----------------------------------------------------------------------------------------


class _Hypothesis(Protocol):
    hypstr: str


class _Decoder(Protocol):
    def start_utt(self) -> None: ...
    def process_raw(self, data: bytes, no_search: bool = ..., full_utt: bool = ...) -> int: ...
    def end_utt(self) -> None: ...
    def hyp(self) -> _Hypothesis | None: ...


@dataclass(slots=True)
class _SharedDecoder:
    decoder: _Decoder
    lock: threading.Lock


_decoders: dict[tuple[str, ...] | None, _SharedDecoder] = {}
_decoders_lock = threading.Lock()


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _phrase_model(ps_lm: Any, phrases: tuple[str, ...], full_dict: Path, directory: Path) -> tuple[str, str]:
    """Write an ARPA trigram model of ``phrases`` and a dictionary of just their words; returns both paths.

    A dictionary cut down to the model's words keeps the decoder's start-up at ~0.1 s (with the full
    135 000-word dictionary, mapping a small ARPA model takes over 2 s).
    """
    vocabulary = {w for p in phrases for w in p.split()}
    entries = []
    with full_dict.open(encoding="utf-8") as lines:
        for line in lines:
            head = line.split(" ", 1)[0]
            if head.split("(", 1)[0] in vocabulary:
                entries.append(line)
    unknown = vocabulary - {e.split(" ", 1)[0].split("(", 1)[0] for e in entries}
    if unknown:
        raise UnknownWordsError(
            f"phrases use words missing from the pronunciation dictionary: {', '.join(sorted(unknown))}"
        )
    dict_path = directory / "phrases.dict"
    dict_path.write_text("".join(entries), encoding="utf-8")
    builder = ps_lm.ArpaBoLM(text="\n".join(phrases), add_start=True)
    builder.compute()
    lm_path = directory / "phrases.lm"
    if not builder.write_file(str(lm_path)):
        raise ConfigError(f"could not write the phrase language model to {lm_path}")
    return str(lm_path), str(dict_path)


def _load_decoder(phrases: tuple[str, ...] | None) -> _Decoder:
    try:
        ps: Any = importlib.import_module("pocketsphinx")
        ps_lm: Any = importlib.import_module("pocketsphinx.lm")
    except ImportError as exc:
        raise ConfigError(f"pocketsphinx is not available ({exc}); {_VOICE_HINT}") from exc
    model = Path(ps.get_model_path()) / "en-us"
    full_dict = model / "cmudict-en-us.dict"
    try:
        if phrases is None:
            return ps.Decoder(  # type: ignore[no-any-return]
                hmm=str(model / "en-us"), lm=str(model / "en-us.lm.bin"), dict=str(full_dict), loglevel=_PS_LOGLEVEL
            )
        with tempfile.TemporaryDirectory(prefix="gateway-lm-") as directory:
            lm_path, dict_path = _phrase_model(ps_lm, phrases, full_dict, Path(directory))
            return ps.Decoder(  # type: ignore[no-any-return]
                hmm=str(model / "en-us"), lm=lm_path, dict=dict_path, loglevel=_PS_LOGLEVEL
            )
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"pocketsphinx failed to load its en-US model from {model} ({exc})") from exc


def _shared_decoder(phrases: tuple[str, ...] | None) -> _SharedDecoder:
    with _decoders_lock:
        shared = _decoders.get(phrases)
        if shared is None:
            shared = _SharedDecoder(_load_decoder(phrases), threading.Lock())
            _decoders[phrases] = shared
        return shared


class PocketsphinxRecognizer:
    """pocketsphinx en-US recognition; returns lowercase words.

    ``phrases=None`` uses the model's general language model. Synthetic telephone speech fares poorly
    with it (word error rate around 0.6-0.7 on short sentences); given ``phrases``, a small trigram model
    compiled from them is used instead, which recognizes those sentences and recombinations of their
    words well (word error rate 0-0.3) but cannot produce any other word. The decoder for each phrase
    set is loaded once per process (0.3 s for the general model, under 0.1 s for a phrase model) and
    shared by all instances; decodes through it run one at a time.
    """

    real: bool = True

    def __init__(self, phrases: Sequence[str] | None = None) -> None:
        if phrases is not None:
            cleaned = tuple(" ".join(_words(p)) for p in phrases)
            if not any(cleaned):
                raise ConfigError("phrases must contain at least one word")
            self._phrases: tuple[str, ...] | None = tuple(p for p in cleaned if p)
            self.name = f"pocketsphinx (en-us, language model of {len(self._phrases)} phrases)"
        else:
            self._phrases = None
            self.name = "pocketsphinx (en-us, general language model)"

    def check(self) -> None:
        """Load the model now instead of on first use; :class:`ConfigError` if it cannot be loaded."""
        _shared_decoder(self._phrases)

    def transcribe(self, pcm16: bytes, rate_hz: int) -> str:
        """The lowercase words heard in ``pcm16``; resampled to 16 kHz (soxr HQ) for the model."""
        _check_rate(rate_hz)
        require_pcm16(pcm16)
        if not pcm16:
            return ""
        samples = _resample(np.frombuffer(pcm16, dtype="<i2"), rate_hz, _PS_RATE_HZ)
        audio = np.asarray(samples, dtype="<i2").tobytes()
        shared = _shared_decoder(self._phrases)
        with shared.lock:
            shared.decoder.start_utt()
            shared.decoder.process_raw(audio, False, True)
            shared.decoder.end_utt()
            hypothesis = shared.decoder.hyp()
        return " ".join(_words(hypothesis.hypstr)) if hypothesis is not None else ""


# --- fallbacks --------------------------------------------------------------------------------------------

_TONE_MS_PER_CHAR = 65
_TONE_MAX_MS = 6000
_TONE_FADE_MS = 10
_TONE_LEVEL = 0.25
_TONE_SCALE_HZ = (392.0, 440.0, 494.0, 587.0, 659.0, 784.0)


class ToneSynthesizer:
    """Stand-in for speech: one tone per word on a pentatonic scale, 65 ms per character, at most 6 s."""

    real: bool = False
    name: str = "tones (install the 'voice' extra for speech)"

    def synthesize(self, text: str, rate_hz: int) -> bytes:
        """A deterministic tone pattern lasting ~65 ms per character of ``text`` (capped at 6 s)."""
        _check_rate(rate_hz)
        words = text.split()
        budget = min(_TONE_MS_PER_CHAR * len(" ".join(words)), _TONE_MAX_MS) * rate_hz // 1000
        pieces: list[np.ndarray] = []
        fade = max(1, _TONE_FADE_MS * rate_hz // 1000)
        for index, word in enumerate(words):
            n = min((len(word) + 1) * _TONE_MS_PER_CHAR * rate_hz // 1000, budget)
            if index == len(words) - 1:
                n = budget
            if n <= 0:
                break
            budget -= n
            freq_hz = _TONE_SCALE_HZ[(sum(map(ord, word)) + index) % len(_TONE_SCALE_HZ)]
            t_s = np.arange(n) / rate_hz
            envelope = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / fade)
            pieces.append(_TONE_LEVEL * envelope * np.sin(2.0 * np.pi * freq_hz * t_s))
        if not pieces:
            return b""
        signal = np.concatenate(pieces)
        return np.round(signal * 32767.0).astype("<i2").tobytes()


class DurationRecognizer:
    """Stand-in for recognition: reports only how long the utterance was, e.g. ``[speech 1.4 s]``."""

    real: bool = False
    name: str = "duration (install the 'voice' extra for speech recognition)"

    def transcribe(self, pcm16: bytes, rate_hz: int) -> str:
        """``[speech N.N s]`` with the duration of ``pcm16``."""
        _check_rate(rate_hz)
        require_pcm16(pcm16)
        return f"[speech {len(pcm16) / _SAMPLE_BYTES / rate_hz:.1f} s]"


# --- selection --------------------------------------------------------------------------------------------

_SYNTH_CHOICES = ("auto", "espeak", "tones")
_RECOGNIZER_CHOICES = ("auto", "pocketsphinx", "duration")


def make_synthesizer(prefer: str = "auto", *, voice: str = AGENT_VOICE) -> Synthesizer:
    """``auto``: eSpeak NG if it loads, else tones; ``espeak`` or ``tones`` force one (ConfigError if unusable)."""
    if prefer not in _SYNTH_CHOICES:
        raise ConfigError(f"synthesizer must be one of {', '.join(_SYNTH_CHOICES)}, got {prefer!r}")
    if prefer == "tones":
        _log_choice("speech synthesis", ToneSynthesizer.name, "requested")
        return ToneSynthesizer()
    synthesizer = EspeakSynthesizer(voice=voice)
    try:
        synthesizer.check()
    except ConfigError as exc:
        if prefer == "espeak":
            raise
        _log_choice("speech synthesis", ToneSynthesizer.name, str(exc))
        return ToneSynthesizer()
    _log_choice("speech synthesis", synthesizer.name, "requested" if prefer == "espeak" else "found eSpeak NG")
    return synthesizer


def make_recognizer(prefer: str = "auto", *, phrases: Sequence[str] | None = None) -> Recognizer:
    """``auto``: pocketsphinx if it loads, else durations; ``pocketsphinx`` or ``duration`` force one."""
    if prefer not in _RECOGNIZER_CHOICES:
        raise ConfigError(f"recognizer must be one of {', '.join(_RECOGNIZER_CHOICES)}, got {prefer!r}")
    if prefer == "duration":
        _log_choice("speech recognition", DurationRecognizer.name, "requested")
        return DurationRecognizer()
    recognizer = PocketsphinxRecognizer(phrases)
    try:
        importlib.import_module("pocketsphinx")
    except ImportError as exc:
        if prefer == "pocketsphinx":
            raise ConfigError(f"pocketsphinx is not available ({exc}); {_VOICE_HINT}") from exc
        _log_choice("speech recognition", DurationRecognizer.name, f"pocketsphinx is not installed ({exc})")
        return DurationRecognizer()
    try:
        recognizer.check()
    except UnknownWordsError:
        raise
    except ConfigError as exc:
        if prefer == "pocketsphinx":
            raise
        _log_choice("speech recognition", DurationRecognizer.name, str(exc))
        return DurationRecognizer()
    _log_choice(
        "speech recognition", recognizer.name, "requested" if prefer == "pocketsphinx" else "found pocketsphinx"
    )
    return recognizer
