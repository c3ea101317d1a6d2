"""One error tree for the whole gateway.

::

    GatewayError
    ├── ConfigError                  bad or missing settings; raised at start-up only
    │   ├── ScenarioError            bad load-test recordings or scenario files, all listed at once
    │   └── UnknownWordsError        speech-recognition phrases use words the dictionary lacks
    ├── SignatureError               X-Twilio-Signature missing or wrong (webhook or WebSocket upgrade)
    ├── CallStateError               local misuse of the core: a bug in our code, never the peer's fault
    ├── AudioFormatError             audio we cannot decode (bad WAV, odd byte count, wrong sample width)
    ├── UpstreamConnectError         EVI refused or could not be reached; also a ConnectionError, and its
    │                                message never holds credentials
    ├── TwilioRestError              Twilio's REST API refused a request or could not be reached
    ├── EviRestError                 EVI's REST API refused a request or could not be reached (status 0)
    ├── SessionClosedError           waited on a simulated EVI session that closed
    ├── CapacityRunError             the capacity benchmark could not run (a child process died or hung)
    ├── CallFailure                  a load-test call or turn did not go as its scenario said (for Locust)
    └── RemoteProtocolError          a peer broke its protocol; the core turns it into a close with a reason
        ├── TwilioProtocolError      e.g. media before start, bad mediaFormat, invalid JSON
        ├── UpstreamProtocolError    e.g. malformed audio_output, impossible message order
        └── DialError                the caller emulator could not set up a call

Remote errors never escape the core as exceptions: they become close actions and are recorded as the
call's end reason. Unknown message types are logged and ignored, never raised.
"""

from __future__ import annotations

from typing import Literal


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Settings are missing or invalid."""


class SignatureError(GatewayError):
    """A Twilio request signature is missing or does not match."""


class CallStateError(GatewayError):
    """The core was driven in a way its state table forbids (our bug)."""


class AudioFormatError(GatewayError, ValueError):
    """Audio bytes cannot be decoded as the declared format."""


class RemoteProtocolError(GatewayError):
    """A peer sent something its protocol does not allow."""


class TwilioProtocolError(RemoteProtocolError):
    """Twilio (or whatever is on the Media Stream socket) broke the Media Streams protocol."""


class UpstreamProtocolError(RemoteProtocolError):
    """The speech-to-speech upstream (EVI) broke its protocol."""


class ScenarioError(ConfigError):
    """One or more recordings or scenario files are unusable; ``problems`` lists ``"file: problem"``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) with the load-test recordings:\n{lines}")


class UnknownWordsError(ConfigError):
    """Recognition ``phrases`` use words the pronunciation dictionary lacks (the caller's mistake, never a fallback)."""


class UpstreamConnectError(GatewayError, ConnectionError):
    """The upstream session could not be opened (the message never contains credentials)."""


class TwilioRestError(GatewayError):
    """A Twilio REST request (e.g. moving a call) failed; the message says why, never with credentials."""


class EviRestError(GatewayError):
    """An EVI REST request failed: ``status`` (0 when EVI could not be reached) and a readable message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SessionClosedError(GatewayError):
    """A simulator session closed while a test was waiting for something from its client."""


class CapacityRunError(GatewayError):
    """The capacity benchmark could not run (a child process died or never answered)."""


class CallFailure(GatewayError):
    """A load-test call or turn that did not go as its scenario said, as reported to Locust."""


class DialError(RemoteProtocolError):
    """The call could not be set up: webhook refused, TwiML unusable, or stream handshake refused."""

    def __init__(
        self, message: str, *, stage: Literal["webhook", "twiml", "stream"], status: int | None = None
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.status = status
