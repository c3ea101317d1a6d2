"""EVI ⇄ neutral upstream events: the Hume implementation of UpstreamCodec (evi-protocol.md §2–§6, §8).

Owns the mapping from EVI chat messages to the events in ``gateway.wire.upstream`` and the frames the core
sends. Encoded frames equal what the SDK's ``send_publish`` writes (compact JSON, ``type`` included,
unset fields omitted).

Hot paths: ``encode_audio`` runs about 50 times a second per call and ``audio_output`` arrives several
times a second, so both skip pydantic when the input is well-typed; anything unusual falls back to the
models, so both paths accept and reject exactly the same frames.

Messages the core does not act on (assistant_prosody, session_settings echo, built-in tool results) become
UpstreamNotice without field validation: schema drift in a message nobody reads must not end a call.
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING, Any

from gateway.codecs.g711 import require_pcm16
from gateway.ids import ResponseId
from gateway.wire.evi_messages import (
    AssistantEnd,
    AssistantInput,
    AssistantMessage,
    AudioConfiguration,
    AudioOutput,
    ChatMetadata,
    PauseAssistantMessage,
    ResumeAssistantMessage,
    SessionSettings,
    ToolCallMessage,
    ToolErrorMessage,
    ToolResponseMessage,
    UnknownMessage,
    UserInput,
    UserInterruption,
    UserMessage,
    WebSocketError,
    decode_audio_data,
    load_json_object,
    validate_server_object,
)
from gateway.wire.upstream import (
    AssistantAudio,
    AssistantText,
    AssistantTurnEnd,
    SessionStart,
    ToolCall,
    UpstreamCodec,
    UpstreamEvent,
    UpstreamFault,
    UpstreamNotice,
    UpstreamReady,
    UpstreamUnknown,
    UserInterrupted,
    UserTranscript,
)

__all__ = ["EviCodec"]

_WHAT = "EVI server message"
# §3: known messages the core ignores. tool_response/tool_error from the server report built-in tools (§6).
_NOTICE_KINDS = frozenset({"assistant_prosody", "session_settings", "tool_response", "tool_error"})
_AUDIO_PREFIX = '{"type":"audio_input","data":"'
_AUDIO_SUFFIX = '"}'
_PAUSE = PauseAssistantMessage().to_json()
# docs/evi-protocol.md §8 "Errors": the errors after which the chat does not go on (EVI ends it, or every
# later message would fail the same way). Any other error is reported and the call continues; EVI closes
# the socket itself when it cannot continue.
FATAL_ERROR_CODES = frozenset({"I0118", "E0705"})
_RESUME = ResumeAssistantMessage().to_json()


class EviCodec:
    """Hume EVI chat codec; stateless, so one instance may serve every call."""

    __slots__ = ()

    def decode(self, text: str | bytes) -> UpstreamEvent:
        """One EVI frame as a neutral event; raises UpstreamProtocolError on malformed input."""
        obj = load_json_object(text, _WHAT)
        kind: str = obj["type"]
        if kind == "audio_output":
            return _decode_audio_output(obj)
        if kind in _NOTICE_KINDS:
            return UpstreamNotice(kind)
        message = validate_server_object(obj, _WHAT)
        match message:
            case ChatMetadata():
                return UpstreamReady(
                    session_id=message.chat_id, group_id=message.chat_group_id, request_id=message.request_id
                )
            case AssistantMessage():
                response_id = ResponseId(message.id) if message.id is not None else None
                return AssistantText(response_id=response_id, text=message.message.content or "")
            case AssistantEnd():
                return AssistantTurnEnd()
            case UserInterruption():
                return UserInterrupted(time_ms=message.time)
            case UserMessage():
                return UserTranscript(text=message.message.content or "", interim=message.interim)
            case ToolCallMessage():
                return ToolCall(
                    name=message.name,
                    tool_call_id=message.tool_call_id,
                    parameters_json=message.parameters,
                    response_required=message.response_required,
                    builtin=message.tool_type == "builtin",
                )
            case WebSocketError():
                return UpstreamFault(
                    code=message.code,
                    slug=message.slug,
                    message=message.message,
                    request_id=message.request_id,
                    fatal=message.code in FATAL_ERROR_CODES,
                )
            case UnknownMessage():
                return UpstreamUnknown(kind)
            case _:
                return UpstreamNotice(kind)

    def encode_session_start(self, start: SessionStart) -> str:
        """§2.2: declare linear16 input at the call's rate before any audio (§1.4)."""
        settings = SessionSettings(
            audio=AudioConfiguration(encoding="linear16", sample_rate=start.input_rate_hz, channels=start.channels),
            variables=dict(start.variables) or None,
            custom_session_id=start.custom_session_id,
        )
        return settings.to_json()

    def encode_audio(self, pcm16: bytes) -> str:
        """§2.1 ``audio_input``; equals ``AudioInput(data=b64).to_json()``."""
        if len(pcm16) % 2:  # the per-frame path: require_pcm16's check, without the call
            require_pcm16(pcm16)
        return _AUDIO_PREFIX + binascii.b2a_base64(pcm16, newline=False).decode("ascii") + _AUDIO_SUFFIX

    def encode_user_text(self, text: str) -> str:
        """§2.3 ``user_input``."""
        return UserInput(text=text).to_json()

    def encode_tool_response(self, tool_call_id: str, content: str) -> str:
        """§2.5 ``tool_response``."""
        return ToolResponseMessage(tool_call_id=tool_call_id, content=content).to_json()

    def encode_tool_error(self, tool_call_id: str, error: str, content: str | None = None, code: str = "") -> str:
        """§2.6 ``tool_error``."""
        return ToolErrorMessage(tool_call_id=tool_call_id, error=error, content=content, code=code or None).to_json()

    def encode_assistant_text(self, text: str) -> str:
        """§2.4 ``assistant_input``: EVI says ``text`` verbatim."""
        return AssistantInput(text=text).to_json()

    def encode_pause(self) -> str:
        """§2.7 ``pause_assistant_message``."""
        return _PAUSE

    def encode_resume(self) -> str:
        """§2.7 ``resume_assistant_message``."""
        return _RESUME


def _decode_audio_output(obj: dict[str, Any]) -> AssistantAudio:
    # §4.2: data is base64 of a whole WAV file; the core parses it.
    response_id = obj.get("id")
    index = obj.get("index")
    data = obj.get("data")
    if not (type(response_id) is str and type(index) is int and type(data) is str):
        message = validate_server_object(obj, _WHAT)
        assert isinstance(message, AudioOutput)
        response_id, index, data = message.id, message.index, message.data
    return AssistantAudio(response_id=ResponseId(response_id), index=index, wav=decode_audio_data(data))


if TYPE_CHECKING:
    _conforms: UpstreamCodec = EviCodec()
