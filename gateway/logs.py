"""Logging helpers: secrets never reach a log line, even from libraries logging at DEBUG."""

from __future__ import annotations

import logging
import re

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
