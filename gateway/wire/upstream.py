"""The seam between the per-call core and a speech-to-speech upstream (docs/design.md "One upstream seam").

Owns: the vendor-neutral events the core receives, the command it sends at session start, and the
UpstreamCodec protocol a vendor codec implements to turn its wire text into these events and back. Nothing
here names a vendor; a codec module per vendor does the translation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from gateway.errors import CallStateError
from gateway.ids import ResponseId

__all__ = [
    "AssistantAudio",
    "AssistantText",
    "AssistantTurnEnd",
    "SessionStart",
    "ToolCall",
    "UpstreamCodec",
    "UpstreamEvent",
    "UpstreamFault",
    "UpstreamNotice",
    "UpstreamReady",
    "UpstreamUnknown",
    "UserInterrupted",
    "UserTranscript",
]


# ---------------------------------------------------------------------------------------------------
# Events (upstream → core)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamReady:
    """The session is open; ``group_id`` lets a reconnect resume the conversation."""

    session_id: str
    group_id: str | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class AssistantText:
    """One chunk of assistant text; ``response_id`` ties it to that response's audio."""

    response_id: ResponseId | None
    text: str


@dataclass(frozen=True, slots=True)
class AssistantAudio:
    """One chunk of assistant audio: a whole WAV file, unparsed; ``index`` counts within its response."""

    response_id: ResponseId
    index: int
    wav: bytes


@dataclass(frozen=True, slots=True)
class AssistantTurnEnd:
    """The upstream finished generating the current turn (sent, not necessarily played)."""


@dataclass(frozen=True, slots=True)
class UserInterrupted:
    """The caller barged in and the upstream stopped generating; queued audio must go."""

    time_ms: int | None


@dataclass(frozen=True, slots=True)
class UserTranscript:
    """What the caller said; ``interim`` transcripts may still change."""

    text: str
    interim: bool


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The assistant wants a tool run; ``builtin`` tools are run by the upstream itself."""

    name: str
    tool_call_id: str
    parameters_json: str
    response_required: bool
    builtin: bool


@dataclass(frozen=True, slots=True)
class UpstreamFault:
    """The upstream reported an error; ``fatal`` when the session cannot go on after it (the codec knows which)."""

    code: str
    slug: str
    message: str
    request_id: str | None
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamNotice:
    """A known message the core need not act on (logged by kind)."""

    kind: str


@dataclass(frozen=True, slots=True)
class UpstreamUnknown:
    """A message kind the codec does not know; logged and ignored, never fatal."""

    kind: str


UpstreamEvent: TypeAlias = (
    UpstreamReady
    | AssistantText
    | AssistantAudio
    | AssistantTurnEnd
    | UserInterrupted
    | UserTranscript
    | ToolCall
    | UpstreamFault
    | UpstreamNotice
    | UpstreamUnknown
)


# ---------------------------------------------------------------------------------------------------
# Commands (core → upstream)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionStart:
    """Settings sent before any audio: the caller audio format (16-bit PCM) and prompt variables; and how the
    session is opened: which config, and which earlier conversation to resume."""

    input_rate_hz: int
    channels: int
    variables: Mapping[str, str]
    custom_session_id: str | None
    config_id: str | None = None
    """The upstream's configuration (prompt, voice, tools) for this call; None: the gateway's default."""
    resume_group_id: str | None = None
    """Resume this conversation (after a dropped socket) instead of starting a new one."""

    def __post_init__(self) -> None:
        if self.input_rate_hz <= 0:
            raise CallStateError(f"SessionStart.input_rate_hz must be positive, got {self.input_rate_hz}")
        if self.channels <= 0:
            raise CallStateError(f"SessionStart.channels must be positive, got {self.channels}")


class UpstreamCodec(Protocol):
    """Translates one vendor's wire text to UpstreamEvent and core commands to wire text. Pure: no I/O."""

    def decode(self, text: str | bytes) -> UpstreamEvent:
        """One frame from the upstream as an event; raises UpstreamProtocolError on malformed input."""
        ...

    def encode_session_start(self, start: SessionStart) -> str:
        """The frame that configures the session; sent before any audio."""
        ...

    def encode_audio(self, pcm16: bytes) -> str:
        """One chunk of caller audio, 16-bit little-endian PCM at the rate declared at session start."""
        ...

    def encode_user_text(self, text: str) -> str:
        """Text the upstream treats as the caller's speech."""
        ...

    def encode_tool_response(self, tool_call_id: str, content: str) -> str:
        """The result of a tool call."""
        ...

    def encode_tool_error(self, tool_call_id: str, error: str, content: str | None = None, code: str = "") -> str:
        """A failed tool call; ``content`` is what the assistant is told instead of a result."""
        ...

    def encode_assistant_text(self, text: str) -> str:
        """Text the upstream speaks verbatim in the assistant's voice."""
        ...

    def encode_pause(self) -> str:
        """Stop assistant responses (e.g. while the caller is on hold)."""
        ...

    def encode_resume(self) -> str:
        """Resume assistant responses."""
        ...
