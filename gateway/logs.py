"""Logging helpers: secrets never reach a log line, even from libraries logging at DEBUG, and no string from a
peer can start a line of its own or fill the log (:func:`untrusted`, :class:`EscapeUntrusted`)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, TextIO, TypeAlias

# Header lines ("> X-Hume-Api-Key: …"), query values (api_key=…, access_token=…) and HTTP auth headers.
_SECRET_PATTERNS = (
    re.compile(r"(?i)((?:x-hume-api-key|authorization|x-twilio-signature)\s*:\s*)\S.*"),
    re.compile(r"(?i)((?:api_key|apikey|access_token|accesstoken|language_model_api_key)(?:%5D)?=)[^&\s]+"),
)


def redact(text: str) -> str:
    """``text`` with credential values replaced by ``***``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with :func:`redact` before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def redacting_logger(name: str) -> logging.Logger:
    """A logger (for a library's ``logger=`` argument) whose records are redacted."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())
    return logger


# ---------------------------------------------------------------------------------------------------
# Values from peers (operations.md §3)
# ---------------------------------------------------------------------------------------------------

LIMIT_CHARS = 4_000
"""How much of one value (an argument of a log call, an ``extra`` field) a line shows."""

MESSAGE_LIMIT_CHARS = 16_000
"""How much of one whole message a line shows (the bound for messages a library formats itself)."""

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
"""The attributes every record has; any other attribute is an ``extra`` field."""

_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _shown(text: str, limit_chars: int, keep: str = "") -> str:
    """``text`` with every character :meth:`str.isprintable` refuses (other than those in ``keep``) escaped, at
    most ``limit_chars`` long, then ``…(+N chars)`` when ``N`` characters of ``text`` were left out."""
    if len(text) <= limit_chars and text.isprintable():
        return text
    head = text[:limit_chars]
    if head.isprintable():
        shown, used = head, len(head)
    else:
        parts: list[str] = []
        size = used = 0
        for char in head:
            piece = char if char.isprintable() or char in keep else _escape_char(char)
            if size + len(piece) > limit_chars:
                break
            parts.append(piece)
            size += len(piece)
            used += 1
        shown = "".join(parts)
    rest = len(text) - used
    return f"{shown}…(+{rest} chars)" if rest else shown


class _Shown(str):
    """A value made safe by :func:`untrusted`: ``%s`` shows it, ``%r`` the safe form of the value's ``repr``."""

    _repr: str

    def __new__(cls, text: str, shown_repr: str) -> _Shown:
        self = super().__new__(cls, text)
        self._repr = shown_repr
        return self

    def __repr__(self) -> str:
        return self._repr


def untrusted(value: object, limit_chars: int = LIMIT_CHARS) -> str:
    """``value`` (a string, bytes, or anything :func:`str` accepts) as it may appear in a log line: each control
    character, line or paragraph separator and other non-printable character written as ``\\n``, ``\\r``,
    ``\\t``, ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, at most ``limit_chars`` characters, then
    ``…(+N chars)`` for the ``N`` characters left out. Bytes are read as UTF-8, other bytes as ``\\xNN``. Under
    ``%r`` the result shows the value's ``repr`` the same way. A result passed to this function again, or
    logged, is left as it is."""
    if isinstance(value, _Shown):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        text, text_repr = raw.decode("utf-8", "backslashreplace"), repr(raw)
    else:
        text = value if isinstance(value, str) else str(value)
        text_repr = repr(value)
    return _Shown(_shown(text, limit_chars), _shown(text_repr, limit_chars))


_SAFE_TYPES = (int, float, type(None), _Shown)


def _safe_arg(value: object) -> object:
    """``value`` itself when it cannot carry a line break or an unbounded text, else :func:`untrusted`."""
    if isinstance(value, _SAFE_TYPES):
        return value
    if isinstance(value, str):
        return value if len(value) <= LIMIT_CHARS and value.isprintable() else untrusted(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return untrusted(value)
    if isinstance(value, BaseException):
        shown = untrusted(value)
        return value if shown == str(value) and repr(shown) == repr(value) else shown
    return value  # anything else is checked as part of the formatted message


def _safe_field(value: object) -> object:
    if isinstance(value, str | bytes | bytearray):
        return _safe_arg(value)
    if isinstance(value, Mapping):
        return {key: _safe_field(item) for key, item in value.items()}
    return value


def _traceback_text(exc_info: _ExcInfo) -> str:
    """The traceback as :meth:`logging.Formatter.formatException` writes it, except that each exception's
    message and notes (which may quote a peer) are escaped onto their line, and no line holds a control
    character."""
    _kind, exc, tb = exc_info
    if exc is None:
        return logging.Formatter().formatException(exc_info)
    top = traceback.TracebackException(type(exc), exc, tb, compact=True)
    pending, seen = [top], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        fields = vars(item)
        if isinstance(fields.get("_str"), str):
            fields["_str"] = untrusted(fields["_str"], MESSAGE_LIMIT_CHARS)
        if isinstance(item.__notes__, Sequence):
            item.__notes__ = [untrusted(note, MESSAGE_LIMIT_CHARS) for note in item.__notes__]
        pending.extend(link for link in (item.__cause__, item.__context__) if link is not None)
        pending.extend(item.exceptions or ())
    text = "".join(top.format()).removesuffix("\n")
    return _shown(text, 10 * len(text), keep="\n")


class EscapeUntrusted(logging.Filter):
    """Makes every record safe to write before a handler formats it: each string, bytes or exception argument
    goes through :func:`untrusted`, the formatted message (which may hold a library's own formatting of a
    peer's value) is escaped the same way and capped at :data:`MESSAGE_LIMIT_CHARS`, ``extra`` fields are
    escaped and capped, and the traceback text keeps its line breaks but loses every other control character.
    A record with nothing to escape is left untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._clean(record)
        except Exception as exc:  # a record that does not format must still leave one safe line
            what = untrusted(record.msg, 200) if isinstance(record.msg, str) else type(record.msg).__name__
            record.msg, record.args = f"log record not formattable ({type(exc).__name__}): {what!r}", ()
        return True

    @staticmethod
    def _clean(record: logging.LogRecord) -> None:
        changed = False
        if isinstance(record.args, Mapping):
            mapping = {key: _safe_arg(value) for key, value in record.args.items()}
            changed = any(mapping[key] is not value for key, value in record.args.items())
            if changed:
                record.args = mapping
        elif record.args:
            values = tuple(_safe_arg(value) for value in record.args)
            changed = any(new is not old for new, old in zip(values, record.args, strict=True))
            if changed:
                record.args = values
        message = record.getMessage()
        shown = _shown(message, MESSAGE_LIMIT_CHARS)
        if changed or shown != message:
            record.msg, record.args = shown, ()
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                cleaned = _safe_field(value)
                if cleaned is not value and cleaned != value:
                    setattr(record, key, cleaned)
        if record.exc_info:  # replaces any text a handler before this one cached
            record.exc_text = _traceback_text(record.exc_info)


# ---------------------------------------------------------------------------------------------------
# Call context and JSON lines (operations.md §3)
# ---------------------------------------------------------------------------------------------------


class _CallLike(Protocol):
    @property
    def call_sid(self) -> str | None: ...

    @property
    def stream_sid(self) -> str | None: ...


current_call: contextvars.ContextVar[_CallLike | None] = contextvars.ContextVar("current_call", default=None)
"""The call whose task is running. Set once when its socket is accepted: the call's SIDs are read at each
log line, so lines logged before Twilio's ``start`` carry none and every later one carries both."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the call's SIDs, any ``extra`` fields and the
    exception text. Everything is escaped by JSON, so no logged value can start a line of its own; installed by
    :func:`configure_logging`, the values are also those :class:`EscapeUntrusted` made safe."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        call = current_call.get()
        if call is not None:
            entry["call_sid"] = None if call.call_sid is None else untrusted(call.call_sid)
            entry["stream_sid"] = None if call.stream_sid is None else untrusted(call.stream_sid)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(record.exc_text or self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (it may be replaced, e.g. under test)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure_logging(level: str, log_format: str = "text") -> None:
    """Root logging for the command line: ``text`` for a terminal, ``json`` for a log pipeline; either way every
    value from a peer is escaped and capped (:class:`EscapeUntrusted`), then secrets are redacted. Calling it
    again replaces the handler it installed, and only that one."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(EscapeUntrusted())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
