"""What a simulated EVI chat speaks besides messages (evi-protocol.md §1.2, §3, §4.1, §8): its errors, the audio
format it was told, and the handshake's bracketed query.

Owns :class:`ErrorKind` and the error codes a session answers with, :class:`DeclaredAudio` (the caller's format,
from the query or a ``session_settings`` message) and the :class:`AudioChunk` a session's listeners receive,
the parsing of ``session_settings[...]`` query parameters (:func:`parse_session_settings_query`,
:func:`query_audio`), and :func:`fake_prosody`. :class:`~gateway.simulator.evi_session.EviSession` and the agent
share them.

Error codes a session sends (§8; EVI publishes codes, not slugs, so the slugs are ours):

=====  ============================  ==============================================================
code   slug                          when
=====  ============================  ==============================================================
E0100  invalid_json                  a text frame is not JSON
E0101  invalid_message               valid JSON but not a valid message (no ``type``, bad field)
E0200  audio_format_not_declared     audio before any ``session_settings.audio`` (query or message);
                                     §4.1: raw PCM with no declared format is not parseable media
E0201  invalid_base64                ``audio_input.data`` is not base64
E0101  unknown_tool_call             ``tool_response``/``tool_error`` for no function call this chat awaits
=====  ============================  ==============================================================
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

from gateway.wire import evi_messages as evi
from gateway.wire.evi_messages import ClientMessage, UnknownMessage

__all__ = [
    "AUDIO_NOT_DECLARED",
    "INVALID_BASE64",
    "INVALID_JSON",
    "INVALID_MESSAGE",
    "UNKNOWN_TOOL_CALL",
    "AudioChunk",
    "DeclaredAudio",
    "ErrorKind",
    "Inbound",
    "QueryTree",
    "fake_prosody",
    "parse_session_settings_query",
    "query_audio",
]

QueryTree: TypeAlias = dict[str, "str | QueryTree"]

_BRACKET_KEY = re.compile(r"^session_settings((?:\[[^\[\]]*\])+)$")


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """An EVI error code with the slug the simulator pairs it with (see the module table)."""

    code: str
    slug: str
    message: str


INVALID_JSON = ErrorKind("E0100", "invalid_json", "Request is not valid JSON.")
INVALID_MESSAGE = ErrorKind("E0101", "invalid_message", "Message must be a JSON object with a string 'type'.")
AUDIO_NOT_DECLARED = ErrorKind(
    "E0200",
    "audio_format_not_declared",
    "Audio received before its format was declared; send session_settings.audio "
    "(encoding, sample_rate, channels) first.",
)
INVALID_BASE64 = ErrorKind("E0201", "invalid_base64", "audio_input.data is not valid base64.")
UNKNOWN_TOOL_CALL = ErrorKind("E0101", "unknown_tool_call", "No tool call with this tool_call_id awaits an answer.")


@dataclass(frozen=True, slots=True)
class DeclaredAudio:
    """The caller's audio format as declared by query (§1.2) or ``session_settings`` message (§2.2)."""

    encoding: str
    rate_hz: int
    channels: int
    source: Literal["query", "session_settings"]

    def pcm_ms(self, n_bytes: int) -> float:
        """Duration of ``n_bytes`` of 16-bit PCM in this format."""
        return n_bytes * 1000 / (2 * self.channels * self.rate_hz)


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Caller audio accepted by a session (``audio_input`` or a binary frame), in its declared format."""

    pcm16: bytes
    audio: DeclaredAudio


Inbound: TypeAlias = ClientMessage | UnknownMessage | AudioChunk
"""What a listener queue receives: every accepted client message, with audio as :class:`AudioChunk`."""


def parse_session_settings_query(pairs: list[tuple[str, str]]) -> QueryTree:
    """§1.2: ``session_settings[audio][sample_rate]=8000`` → ``{"audio": {"sample_rate": "8000"}}``."""
    tree: QueryTree = {}
    for key, value in pairs:
        match = _BRACKET_KEY.match(key)
        if match is None:
            continue
        path = match.group(1)[1:-1].split("][")
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return tree


def query_audio(tree: QueryTree) -> DeclaredAudio | None:
    """§1.2: the audio format declared in the query's ``session_settings[audio]``, if it is a usable one."""
    audio = tree.get("audio")
    if not isinstance(audio, dict):
        return None
    rate = audio.get("sample_rate")
    channels = audio.get("channels", "1")
    encoding = audio.get("encoding", "linear16")
    if not (isinstance(rate, str) and isinstance(channels, str) and isinstance(encoding, str)):
        return None
    if not (rate.isdigit() and channels.isdigit()) or int(rate) == 0 or int(channels) == 0:
        return None
    return DeclaredAudio(encoding=encoding, rate_hz=int(rate), channels=int(channels), source="query")


def fake_prosody(seed: str) -> evi.Inference:
    """§3: all 48 prosody scores (the SDK requires every one), deterministic for ``seed``."""
    rng = random.Random(seed)
    scores = {name: round(rng.random() * 0.3, 4) for name in evi.EMOTION_NAMES}
    return evi.Inference(prosody=evi.ProsodyInference(scores=scores))
