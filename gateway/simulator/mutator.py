"""The one home of mutated frames, for the fuzz tests and ``gateway bench faults``; every choice is seeded.

- **Kinds.** :class:`TwilioMutator` and :class:`EviMutator` each draw a mutation *kind* (:data:`TWILIO_KINDS`,
  :data:`EVI_KINDS`) from a :class:`random.Random` seeded with a string, so the same seed gives the same frames,
  byte for byte. A :class:`Frame` is what goes on the socket: its bytes, whether it is a binary frame, and the
  kind it came from (text frames may hold invalid UTF-8 on purpose). Twilio frames (twilio-media-streams.md §1)
  start from the stream's own clean ``media``, ``mark``, ``dtmf`` and ``start`` messages. Kinds in
  :data:`ENDING_TWILIO_KINDS` end the call by design (RFC 6455: a text frame that is not UTF-8 closes 1007, a
  frame over the gateway's 64 KiB closes 1009); every other kind must be ignored. EVI messages
  (evi-protocol.md §3, §4.2) start from ``audio_output`` WAV chunks and the other server messages.
- **Edits.** :func:`mutate` applies character-level :data:`Edit` s (replace, insert, delete, duplicate,
  truncate, with JSON syntax, digits and awkward code points) to any text: the form hypothesis draws and
  shrinks in the parser and core properties of ``tests/test_fuzz.py``.

Hostile calls that send these frames through the served gateway are :mod:`gateway.simulator.hostile`.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeAlias

from gateway.codecs.wav import write_wav
from gateway.simulator.wavgen import tone_pcm16

__all__ = [
    "ENDING_EVI_KINDS",
    "ENDING_TWILIO_KINDS",
    "EVI_KINDS",
    "SPICE",
    "TWILIO_KINDS",
    "Edit",
    "EviMutator",
    "Frame",
    "TwilioMutator",
    "mutate",
]

TWILIO_MAX_FRAME_BYTES = 64 * 1024
"""The gateway's ``twilio_max_message_bytes`` default: a frame over it closes the stream (1009)."""

TWILIO_KINDS: dict[str, float] = {
    "valid": 10, "bit_flip": 10, "truncate": 8, "wrong_type": 10, "huge_string": 3, "bad_base64": 8,
    "unknown_event": 6, "invalid_utf8": 0.08, "oversized": 0.08, "duplicate": 6, "stale": 4, "clock_jump": 3,
    "non_object": 4, "deep_nesting": 1, "binary_frame": 3, "big_number": 4, "extra_fields": 4, "mark": 6,
    "dtmf": 3, "foreign_stream": 3, "restart": 2, "padding": 3, "control_chars": 3, "empty": 2,
}  # fmt: skip
"""Mutation kinds of Twilio frames and their relative weights."""
ENDING_TWILIO_KINDS = frozenset({"invalid_utf8", "oversized"})

EVI_KINDS: dict[str, float] = {
    "valid_audio": 12, "valid_other": 6, "bad_wav": 12, "bad_base64": 8, "wrong_type": 10, "unknown_type": 6,
    "huge_text": 2, "garbage_bytes": 5, "garbage_text": 5, "truncate": 6, "bit_flip": 8, "non_object": 3,
    "deep_nesting": 1, "big_number": 3, "invalid_utf8": 0.2, "odd_audio": 4, "huge_audio": 0.1,
    "tool_call": 2, "error": 0.5, "out_of_order": 3, "chat_metadata": 1,
}  # fmt: skip
"""Mutation kinds of EVI server messages and their relative weights."""
ENDING_EVI_KINDS = frozenset({"invalid_utf8"})
"""A text frame that is not UTF-8 makes the gateway's WebSocket client fail the EVI connection (1007)."""

_WRONG_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 12345, 1.5, -0.0, 1e308, "", "abc", "-1", "1e3", "0x10", [], [1, 2], {}, {"x": 1},
)  # fmt: skip
_INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\xe2\x82", b"\x80")
_NON_OBJECTS = ("[]", "[1,2,3]", '"media"', "42", "null", "true", "-0", "1e999", '[{"event":"media"}]', "{}")
_BAD_BASE64 = ("%%%", "====", "abc", "/w=", "////\n////", "A B C", "\u00ff\u00ff", "-_-_", "A" * 161, "=", "AA==AA==")
_ODD_STRINGS = ("", " ", "\x00", "\u2028", "null", "media", "\ud7ff", "\U0001f600" * 3, "\\", '"', "A" * 300)


# ------------------------------------------------------------------------------------ character edits

Edit: TypeAlias = tuple[int, int, int]
"""``(operation, position, spice)``: what :func:`mutate` does, where (modulo the length), with which character."""

SPICE = '{}[]",:\\/0123456789-+.eE tfnul\x00\x7f\u2028\ud800\U0001f600'
"""Characters an edit inserts: JSON syntax, digits, literals' letters, NUL, DEL, a line separator, a lone
surrogate and a character outside the BMP."""


def mutate(text: str, edits: list[Edit]) -> str:
    """``text`` after each edit in turn: 0 replaces the character at the position with the spice, 1 inserts
    it, 2 deletes up to 8 characters, 3 repeats up to 16 characters before the position, 4 truncates."""
    for op, pos, spice in edits:
        at = pos % (len(text) + 1)
        char = SPICE[spice % len(SPICE)]
        match op % 5:
            case 0:
                text = text[:at] + char + text[at + 1 :]
            case 1:
                text = text[:at] + char + text[at:]
            case 2:
                text = text[:at] + text[at + 1 + spice % 8 :]
            case 3:
                text = text[:at] + text[at - spice % 16 : at] + text[at:]
            case _:
                text = text[:at]
    return text


# ------------------------------------------------------------------------------------------- frames by kind


@dataclass(frozen=True, slots=True)
class Frame:
    """One WebSocket frame to send: ``data`` as a text frame (UTF-8 or, on purpose, not) or a binary frame."""

    kind: str
    data: bytes
    binary: bool = False


def _wrong(rng: random.Random) -> Any:
    """A value of the wrong type, a fresh copy: a shared list or dict set at two places of one frame would make
    it circular."""
    return copy.deepcopy(rng.choice(_WRONG_VALUES))


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _dump(obj: Any, rng: random.Random | None = None) -> bytes:
    ascii_only = rng.random() < 0.5 if rng is not None else True
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _flip_low_bits(rng: random.Random, data: bytes) -> bytes:
    """1-4 flips of bits 0-6: ASCII stays ASCII, so the frame stays UTF-8 (bit 7 is the invalid_utf8 kind)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(7)
    return bytes(out)


def _text(rng: random.Random, n_chars: int) -> str:
    """Printable ASCII, non-ASCII letters, emoji and control characters."""
    alphabet = 'abcXYZ019 {}[]":,\\/\n\t\x00\x1b\u00e9\u4e2d\u2028\U0001f600'
    return "".join(rng.choice(alphabet) for _ in range(n_chars))


def _set_path(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = obj
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _nested(rng: random.Random) -> bytes:
    """Deep JSON nesting, under 64 KiB (a bigger frame would be the oversized kind)."""
    if rng.random() < 0.5:
        depth = rng.randint(500, 30_000)
        return b"[" * depth + b"]" * depth
    depth = rng.randint(500, 10_000)
    return b'{"a":' * depth + b"1" + b"}" * depth


def _big_digits(rng: random.Random) -> str:
    return str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(rng.randint(20, 6000)))


class TwilioMutator:
    """Mutated Media Stream frames for one started stream (its SIDs), in order; ``note_mark`` feeds it the mark
    names the gateway sent, so mark echoes can be real, stale or mangled."""

    def __init__(self, seed: str, *, stream_sid: str, account_sid: str, call_sid: str) -> None:
        self.rng = random.Random(seed)
        self.stream_sid, self.account_sid, self.call_sid = stream_sid, account_sid, call_sid
        self.sequence = 1  # the start was 1
        self.chunk = 0
        self.recent: deque[bytes] = deque(maxlen=8)
        self.marks: deque[str] = deque(maxlen=16)
        self.counts: dict[str, int] = {}

    def note_mark(self, name: str) -> None:
        """A mark name the gateway sent on this stream."""
        self.marks.append(name)

    def _media_obj(self, payload: bytes | None = None) -> dict[str, Any]:
        self.sequence += 1
        self.chunk += 1
        ulaw = payload if payload is not None else self.rng.randbytes(160)
        return {
            "event": "media",
            "sequenceNumber": str(self.sequence),
            "streamSid": self.stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(self.chunk),
                "timestamp": str(20 * (self.chunk - 1)),
                "payload": base64.b64encode(ulaw).decode("ascii"),
            },
        }

    def clean_media(self) -> bytes:
        """The stream's next well-formed ``media`` frame (advances its sequence, chunk and timestamp)."""
        data = _dump(self._media_obj())
        self.recent.append(data)
        return data

    def next(self) -> Frame:
        """One frame of a kind drawn by :data:`TWILIO_KINDS`."""
        kind = _weighted(self.rng, TWILIO_KINDS)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        frame = getattr(self, f"_{kind}")()
        return frame if isinstance(frame, Frame) else Frame(kind, frame)

    def bad_start(self, start: str) -> bytes:
        """A mutated ``start`` (sent instead of the stream's own): the gateway must close the stream (1008)."""
        obj = json.loads(start)
        body = obj["start"]
        match self.rng.randrange(6):
            case 0:
                return start.encode()[: self.rng.randrange(len(start))]
            case 1:
                body["customParameters"].pop("token", None)
            case 2:
                token = body["customParameters"].get("token", "")
                body["customParameters"]["token"] = _flip_low_bits(self.rng, token.encode() or b"x").decode()
            case 3:
                body["mediaFormat"] = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 2}
            case 4:
                body["callSid"] = _wrong(self.rng)
            case _:
                obj["start"] = _wrong(self.rng)
        return _dump(obj)

    def _valid(self) -> bytes:
        return self.clean_media()

    def _bit_flip(self) -> bytes:
        return _flip_low_bits(self.rng, self.clean_media())

    def _truncate(self) -> bytes:
        data = self.clean_media()
        return data[: self.rng.randrange(len(data))]

    def _wrong_type(self) -> bytes:
        obj = self._media_obj()
        paths = [("event",), ("sequenceNumber",), ("streamSid",), ("media",), ("media", "track"),
                 ("media", "chunk"), ("media", "timestamp"), ("media", "payload")]  # fmt: skip
        for _ in range(self.rng.randint(1, 2)):
            _set_path(obj, self.rng.choice(paths), _wrong(self.rng))
        return _dump(obj, self.rng)

    def _huge_string(self) -> bytes:
        obj = self._media_obj()
        path = self.rng.choice([("event",), ("streamSid",), ("sequenceNumber",), ("media", "track"),
                                ("media", "chunk"), ("x",)])  # fmt: skip
        size = self.rng.randint(8_000, 20_000)
        value = "A" * size if self.rng.random() < 0.5 else _text(self.rng, 50) * (size // 100)
        _set_path(obj, path, value)
        data = _dump(obj, self.rng)
        return data if len(data) < TWILIO_MAX_FRAME_BYTES else _dump(obj)[: TWILIO_MAX_FRAME_BYTES - 1]

    def _bad_base64(self) -> bytes:
        obj = self._media_obj()
        good = obj["media"]["payload"]
        obj["media"]["payload"] = self.rng.choice([*_BAD_BASE64, good + "!", good[:-1], good + "=", " " + good])
        return _dump(obj, self.rng)

    def _unknown_event(self) -> bytes:
        obj = self._media_obj()
        names = ["surprise", "MEDIA", "", "media ", "Media", "stopp", "clear", "mark2", "\u0000", "closed"]
        obj["event"] = self.rng.choice([*names, _text(self.rng, self.rng.randint(1, 40))])
        return _dump(obj, self.rng)

    def _invalid_utf8(self) -> bytes:
        data = self.clean_media()
        at = self.rng.randrange(len(data))
        return data[:at] + self.rng.choice(_INVALID_UTF8) + data[at:]

    def _oversized(self) -> bytes:
        pad = "A" * (TWILIO_MAX_FRAME_BYTES + self.rng.randint(1, 150_000))
        return _dump({"event": "media", "streamSid": self.stream_sid, "x": pad})

    def _duplicate(self) -> bytes:
        return self.rng.choice(self.recent) if self.recent else self.clean_media()

    def _stale(self) -> bytes:
        obj = self._media_obj()
        back = self.rng.randint(1, max(1, self.chunk))
        obj["media"]["timestamp"] = str(max(0, 20 * (self.chunk - 1 - back)))
        obj["media"]["chunk"] = str(max(1, self.chunk - back))
        return _dump(obj)

    def _clock_jump(self) -> bytes:
        obj = self._media_obj()
        jump = self.rng.choice([40, 1_000, 60_000, 10**9, 2**31, 2**63, -20, -(10**6)])
        obj["media"]["timestamp"] = str(20 * (self.chunk - 1) + jump)
        if self.rng.random() < 0.5:
            obj["media"]["chunk"] = str(self.chunk + self.rng.choice([2, 1000, 2**40, -5]))
        if self.rng.random() < 0.3:
            obj["sequenceNumber"] = str(self.sequence + self.rng.choice([2, 10**6, -3]))
        return _dump(obj)

    def _non_object(self) -> bytes:
        return self.rng.choice(_NON_OBJECTS).encode()

    def _deep_nesting(self) -> bytes:
        return _nested(self.rng)

    def _binary_frame(self) -> Frame:
        if self.rng.random() < 0.5:
            return Frame("binary_frame", self.clean_media(), binary=True)
        return Frame("binary_frame", self.rng.randbytes(self.rng.randint(1, 2048)), binary=True)

    def _big_number(self) -> bytes:
        obj = self._media_obj()
        field = self.rng.choice(["sequenceNumber", "chunk", "timestamp"])
        digits = _big_digits(self.rng)
        raw = self.rng.choice([digits, "-" + digits, "1e999", "NaN", "Infinity", "1.0000001"])
        holder = obj if field == "sequenceNumber" else obj["media"]
        if self.rng.random() < 0.5:
            holder[field] = raw  # Twilio sends these counters as strings
            return _dump(obj)
        holder[field] = "@@NUM@@"
        return _dump(obj).replace(b'"@@NUM@@"', raw.encode())  # a bare JSON number (or a literal JSON lacks)

    def _extra_fields(self) -> bytes:
        obj = self._media_obj()
        obj[_text(self.rng, 6)] = _wrong(self.rng)
        obj["media"]["extra"] = {"nested": [1, 2, {"deeper": None}]}
        data = _dump(obj)
        if self.rng.random() < 0.4:  # a repeated key: JSON readers keep the last one
            data = data.replace(b'{"event":"media"', b'{"event":"stop","event":"media"', 1)
        return data

    def _mark(self) -> bytes:
        self.sequence += 1
        name: Any = self.rng.choice(self.marks) if self.marks and self.rng.random() < 0.6 else None
        if name is None or self.rng.random() < 0.4:
            name = self.rng.choice([*_ODD_STRINGS, _text(self.rng, self.rng.randint(1, 2000)), 7, None, ["m"]])
        body: Any = {"name": name} if self.rng.random() < 0.9 else _wrong(self.rng)
        return _dump({"event": "mark", "sequenceNumber": str(self.sequence), "streamSid": self.stream_sid,
                      "mark": body}, self.rng)  # fmt: skip

    def _dtmf(self) -> bytes:
        self.sequence += 1
        digit = self.rng.choice(["1", "#", "*", "D", "x", "", "12", None, 5, "\u0661", "\x00"])
        return _dump({"event": "dtmf", "sequenceNumber": str(self.sequence), "streamSid": self.stream_sid,
                      "dtmf": {"track": "inbound_track", "digit": digit}}, self.rng)  # fmt: skip

    def _foreign_stream(self) -> bytes:
        obj = self._media_obj()
        other = "MZ" + "".join(self.rng.choice("0123456789abcdef") for _ in range(32))
        if self.rng.random() < 0.3:
            return _dump({"event": "stop", "sequenceNumber": obj["sequenceNumber"], "streamSid": other,
                          "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})  # fmt: skip
        obj["streamSid"] = other
        return _dump(obj)

    def _restart(self) -> bytes:
        self.sequence += 1
        if self.rng.random() < 0.3:
            return b'{"event":"connected","protocol":"Call","version":"1.0.0"}'
        call_sid = self.call_sid if self.rng.random() < 0.5 else "CA" + "0" * 32
        return _dump({
            "event": "start", "sequenceNumber": str(self.sequence), "streamSid": self.stream_sid,
            "start": {"streamSid": self.stream_sid, "accountSid": self.account_sid, "callSid": call_sid,
                      "tracks": ["inbound"], "customParameters": {"token": "v1.replayed"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        })  # fmt: skip

    def _padding(self) -> bytes:
        data = self.clean_media()
        pad = b" \t\r\n" * self.rng.randint(1, 4000)
        return self.rng.choice([pad + data + pad, "\ufeff".encode() + data, data + b" xyz", data + data])

    def _control_chars(self) -> bytes:
        data = self.clean_media()
        at = data.find(b'"media"')
        return data[:at] + b'"me\x00\x1b\ndia"' + data[at + 7 :]

    def _empty(self) -> bytes:
        return b""


# ------------------------------------------------------------------------------------------- EVI messages


def _wav_header(rng: random.Random, pcm: bytes) -> bytes:
    """A WAV whose header lies: a bad magic, format, channel count, rate, width or chunk size."""
    fmt_tag, channels, rate, bits = 1, 1, 24000, 16
    magic_riff, magic_wave, data_len = b"RIFF", b"WAVE", len(pcm)
    match rng.randrange(8):
        case 0:
            magic_riff = rng.choice([b"RIFX", b"RIF", b"\x00\x00\x00\x00"])
        case 1:
            magic_wave = rng.choice([b"WAVX", b"AVI ", b""])
        case 2:
            fmt_tag = rng.choice([3, 0x55, 0xFFFE, 0])
        case 3:
            channels = rng.choice([0, 3, 9, 0xFFFF])
        case 4:
            rate = rng.choice([0, 1, 7, 10**9 % 2**32, 2**32 - 1])
        case 5:
            bits = rng.choice([0, 8, 24, 33])
        case 6:
            data_len = rng.choice([len(pcm) * 4, 2**32 - 1, len(pcm) + 1])
        case _:
            pcm = pcm[: rng.randrange(max(1, len(pcm)))] + b"\x01"  # odd byte count
            data_len = len(pcm)
    block = max(1, channels * bits // 8) % 2**16
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) % 2**32, block, bits)
    body = magic_wave + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_len) + pcm
    return magic_riff + struct.pack("<I", (len(body)) % 2**32) + body


class EviMutator:
    """Mutated EVI server messages for one chat, in order (response ids and chunk indexes move on as EVI's)."""

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)
        self.response = 0
        self.index = 0
        self.counts: dict[str, int] = {}
        tone = tone_pcm16(330.0, 40, 24000, amplitude=0.2)
        self._tone_pcm = tone
        self._tone_b64 = base64.b64encode(write_wav(tone, 24000)).decode("ascii")

    def next(self) -> Frame:
        """One frame of a kind drawn by :data:`EVI_KINDS`."""
        kind = _weighted(self.rng, EVI_KINDS)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        frame = getattr(self, f"_{kind}")()
        return frame if isinstance(frame, Frame) else Frame(kind, frame)

    def _audio(self, data: str) -> dict[str, Any]:
        if self.rng.random() < 0.05:
            self.response += 1
            self.index = 0
        self.index += 1
        return {"type": "audio_output", "id": f"fz-{self.response}", "index": self.index - 1, "data": data}

    def _other(self) -> dict[str, Any]:
        rid = f"fz-{self.response}"
        return self.rng.choice([
            {"type": "assistant_message", "id": rid, "message": {"role": "assistant", "content": "Hi."},
             "models": {}, "from_text": False, "is_quick_response": False},
            {"type": "assistant_end"},
            {"type": "assistant_prosody", "id": rid, "models": {}},
            {"type": "user_message", "message": {"role": "user", "content": "hello"}, "models": {},
             "time": {"begin": 0, "end": 500}, "from_text": False, "interim": self.rng.random() < 0.5},
            {"type": "user_interruption", "time": 1_700_000_000_000},
        ])  # fmt: skip

    def _valid_audio(self) -> bytes:
        return _dump(self._audio(self._tone_b64))

    def _valid_other(self) -> bytes:
        return _dump(self._other())

    def _bad_wav(self) -> bytes:
        wav = self.rng.randbytes(self.rng.randint(0, 64)) if self.rng.random() < 0.1 else None
        data = wav if wav is not None else _wav_header(self.rng, self._tone_pcm)
        return _dump(self._audio(base64.b64encode(data).decode("ascii")))

    def _bad_base64(self) -> bytes:
        good = self._tone_b64
        return _dump(self._audio(self.rng.choice([*_BAD_BASE64, good + "!", good[:-3], "\u00e9" + good])), self.rng)

    def _wrong_type(self) -> bytes:
        obj = self._audio(self._tone_b64) if self.rng.random() < 0.5 else self._other()
        key = self.rng.choice(sorted(obj))
        obj[key] = _wrong(self.rng)
        return _dump(obj, self.rng)

    def _unknown_type(self) -> bytes:
        obj = self._other()
        obj["type"] = self.rng.choice(["surprise", "AUDIO_OUTPUT", "", "audio_output ", _text(self.rng, 20)])
        if self.rng.random() < 0.2:
            del obj["type"]
        return _dump(obj, self.rng)

    def _huge_text(self) -> bytes:
        size = self.rng.choice([70_000, 300_000, 1_000_000])
        text = "A" * size if self.rng.random() < 0.5 else _text(self.rng, 64) * (size // 64)
        return _dump({"type": "assistant_message", "id": f"fz-{self.response}",
                      "message": {"role": "assistant", "content": text}, "models": {}, "from_text": False,
                      "is_quick_response": False}, self.rng)  # fmt: skip

    def _garbage_bytes(self) -> Frame:
        return Frame("garbage_bytes", self.rng.randbytes(self.rng.randint(1, 4096)), binary=True)

    def _garbage_text(self) -> bytes:
        return _text(self.rng, self.rng.randint(1, 3000)).encode("utf-8")

    def _truncate(self) -> bytes:
        data = self._valid_audio()
        return data[: self.rng.randrange(len(data))]

    def _bit_flip(self) -> bytes:
        return _flip_low_bits(self.rng, self._valid_audio() if self.rng.random() < 0.6 else self._valid_other())

    def _non_object(self) -> bytes:
        return self.rng.choice(_NON_OBJECTS).encode()

    def _deep_nesting(self) -> bytes:
        return _nested(self.rng)

    def _big_number(self) -> bytes:
        obj = self._audio(self._tone_b64)
        obj["index"] = "@@NUM@@"
        raw = self.rng.choice([_big_digits(self.rng), "1e999", "NaN", "-1", "1.5"])
        return _dump(obj).replace(b'"@@NUM@@"', raw.encode())

    def _invalid_utf8(self) -> bytes:
        data = self._valid_other()
        at = self.rng.randrange(len(data))
        return data[:at] + self.rng.choice(_INVALID_UTF8) + data[at:]

    def _odd_audio(self) -> bytes:
        rate = self.rng.choice([8000, 11025, 16000, 44100, 48000, 96000])
        channels = self.rng.choice([1, 2])
        ms = self.rng.choice([0, 1, 20, 200, 1000])
        pcm = tone_pcm16(440.0, ms, rate, amplitude=0.2) * channels if ms else b""
        pcm = pcm[: len(pcm) - len(pcm) % (2 * channels)]
        return _dump(self._audio(base64.b64encode(write_wav(pcm, rate, channels)).decode("ascii")))

    def _huge_audio(self) -> bytes:
        pcm = bytes(4 * 2**20 + 2 * self.rng.randint(0, 2**19))  # decodes to more than max_audio_output_bytes
        return _dump(self._audio(base64.b64encode(write_wav(pcm, 48000)).decode("ascii")))

    def _tool_call(self) -> bytes:
        names = ["lookup_order", "transfer_call", "made_up", "", _text(self.rng, 80)]
        name = "hang_up" if self.rng.random() < 0.03 else self.rng.choice(names)  # hang_up ends the call: rare
        tool_type = self.rng.choice(["function", "builtin", "xyz"])
        params = self.rng.choice(["{}", '{"destination":"nowhere"}', "not json", '{"order_id":' + "1" * 50 + "}"])
        return _dump({"type": "tool_call", "name": name, "parameters": params,
                      "tool_call_id": f"tc-{self.rng.randrange(10**6)}", "response_required": self.rng.random() < 0.7,
                      "tool_type": tool_type}, self.rng)  # fmt: skip

    def _error(self) -> bytes:
        code = self.rng.choice(["E0100", "I0100", "E0710", "W0001", "", "ZZZZZ", _text(self.rng, 12)])
        return _dump({"type": "error", "code": code, "slug": _text(self.rng, 10), "message": _text(self.rng, 200),
                      "request_id": "r"}, self.rng)  # fmt: skip

    def _out_of_order(self) -> bytes:
        obj = self._audio(self._tone_b64)
        match self.rng.randrange(3):
            case 0:
                obj["id"] = f"never-started-{self.rng.randrange(1000)}"
            case 1:
                obj["index"] = max(0, obj["index"] - self.rng.randint(1, 5))
            case _:
                return _dump({"type": "user_interruption", "time": self.rng.randrange(2**40)})
        return _dump(obj)

    def _chat_metadata(self) -> bytes:
        return _dump({"type": "chat_metadata", "chat_id": _text(self.rng, 8), "chat_group_id": _text(self.rng, 8),
                      "request_id": None})  # fmt: skip
