"""Logging helpers: secrets never reach a log line, even from libraries logging at DEBUG."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Protocol, TextIO

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

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the call's SIDs, any ``extra`` fields and the
    exception text. Everything is escaped by JSON, so no logged value can start a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        call = current_call.get()
        if call is not None:
            entry["call_sid"] = call.call_sid
            entry["stream_sid"] = call.stream_sid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
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
    """Root logging for the command line: ``text`` for a terminal, ``json`` for a log pipeline; secrets are
    redacted either way. Calling it again replaces the handler it installed, and only that one."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
