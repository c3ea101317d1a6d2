"""One error tree for the whole gateway.

::

    GatewayError
    ├── ConfigError                  bad or missing settings; raised at start-up only
    │   └── ScenarioError            (loadtest.scenario) bad recordings or scenario files, all listed at once
    ├── SignatureError               X-Twilio-Signature missing or wrong (webhook or WebSocket upgrade)
    ├── CallStateError               local misuse of the core: a bug in our code, never the peer's fault
    ├── AudioFormatError             audio we cannot decode (bad WAV, odd byte count, wrong sample width)
    ├── UpstreamConnectError         (adapters.evi_client) EVI refused or could not be reached; also a
    │                                ConnectionError, and its message never holds credentials
    ├── SessionClosedError           (simulator.evi_session) waited on a simulated EVI session that closed
    └── RemoteProtocolError          a peer broke its protocol; the core turns it into a close with a reason
        ├── TwilioProtocolError      e.g. media before start, bad mediaFormat, invalid JSON
        ├── UpstreamProtocolError    e.g. malformed audio_output, impossible message order
        └── DialError                (simulator.caller_dial) the caller emulator could not set up a call

Remote errors never escape the core as exceptions: they become close actions and are recorded as the
call's end reason. Unknown message types are logged and ignored, never raised.
"""

from __future__ import annotations


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
