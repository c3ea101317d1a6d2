"""Hume EVI chat messages, both directions, and the chat handshake (evi-protocol.md §1–§3, §8).

Owns: pydantic models of every EVI chat message (client→server §2, server→client §3), the two parse
functions, the handshake URL/header builder and URL redaction for logs. Used by the EVI codec on the
gateway side and by the EVI-compatible simulator on the server side.

Models mirror the official SDK's strictness (evi-protocol.md §10): extra fields are allowed (EVI evolves),
open enums (role, tool type, context type, built-in tool name) are plain strings, closed ones
(``encoding``, ``level``) are literals. An unknown ``type`` is never an error (§0 item 4): it parses to
UnknownMessage. Serialisation is ``model_dump(exclude_none=True, by_alias=True)`` as compact JSON, which
equals what the SDK's ``send_publish`` writes up to key order.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from gateway.errors import ConfigError, UpstreamProtocolError

__all__ = [
    "EMOTION_NAMES",
    "API_KEY_HEADER",
    "AssistantEnd",
    "AssistantInput",
    "AssistantMessage",
    "AssistantProsody",
    "AudioConfiguration",
    "AudioInput",
    "AudioOutput",
    "BuiltinToolConfig",
    "ChatMessage",
    "ChatMetadata",
    "ClientMessage",
    "Context",
    "EviModel",
    "Inference",
    "MillisecondInterval",
    "PauseAssistantMessage",
    "ProsodyInference",
    "ResumeAssistantMessage",
    "ServerMessage",
    "SessionSettings",
    "Tool",
    "ToolCallMessage",
    "ToolErrorMessage",
    "ToolResponseMessage",
    "UnknownMessage",
    "UserInput",
    "UserInterruption",
    "UserMessage",
    "VariableValue",
    "WebSocketError",
    "connect_request",
    "decode_audio_data",
    "load_json_object",
    "parse_client_message",
    "parse_server_message",
    "redact_url",
    "validate_client_object",
    "validate_server_object",
]

# §1.3: header auth keeps the key out of the URL, hence out of access logs.
API_KEY_HEADER = "X-Hume-Api-Key"

# §3: the 48 prosody scores EVI reports; all are present whenever ``prosody`` is (SDK EmotionScores aliases).
EMOTION_NAMES: tuple[str, ...] = (
    "Admiration", "Adoration", "Aesthetic Appreciation", "Amusement", "Anger", "Anxiety", "Awe",
    "Awkwardness", "Boredom", "Calmness", "Concentration", "Confusion", "Contemplation", "Contempt",
    "Contentment", "Craving", "Desire", "Determination", "Disappointment", "Disgust", "Distress", "Doubt",
    "Ecstasy", "Embarrassment", "Empathic Pain", "Entrancement", "Envy", "Excitement", "Fear", "Guilt",
    "Horror", "Interest", "Joy", "Love", "Nostalgia", "Pain", "Pride", "Realization", "Relief", "Romance",
    "Sadness", "Satisfaction", "Shame", "Surprise (negative)", "Surprise (positive)", "Sympathy",
    "Tiredness", "Triumph",
)  # fmt: skip

VariableValue: TypeAlias = str | float | bool


class EviModel(BaseModel):
    """Base of every EVI model: frozen, unknown fields kept (EVI adds fields over time)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> str:
        """Compact wire JSON: by alias, unset optional fields omitted, ``type`` included."""
        try:
            return self.model_dump_json(exclude_none=True, by_alias=True)
        except PydanticSerializationError:
            # A lone surrogate (possible in text from JSON or from tool code) has no UTF-8 form;
            # an ASCII-escaped dump carries it as a valid JSON \u escape instead of failing.
            return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        """The same content as ``to_json`` as a JSON-compatible dict."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


# ---------------------------------------------------------------------------------------------------
# Nested types
# ---------------------------------------------------------------------------------------------------


class AudioConfiguration(EviModel):
    """§2.2 ``session_settings.audio``: required for raw PCM; ``linear16`` is the only encoding (§4.1)."""

    encoding: Literal["linear16"] = "linear16"
    sample_rate: int
    channels: int
    codec: str | None = None


class Context(EviModel):
    """§2.2 ``session_settings.context``: text appended to user messages (``persistent`` or ``temporary``)."""

    text: str
    type: str | None = None


class Tool(EviModel):
    """§2.2 a session tool; ``parameters`` is a JSON schema as a string, ``type`` is ``function``."""

    type: str
    name: str
    parameters: str
    description: str | None = None
    fallback_content: str | None = None


class BuiltinToolConfig(EviModel):
    """§2.2 a built-in tool to enable (``web_search`` or ``hang_up``)."""

    name: str
    fallback_content: str | None = None


class MillisecondInterval(EviModel):
    """§3 ``user_message.time``: start and end of the utterance in ms."""

    begin: int
    end: int


class ProsodyInference(EviModel):
    """§3 prosody scores keyed by emotion name (EMOTION_NAMES)."""

    scores: dict[str, float]


class Inference(EviModel):
    """§3 ``models`` of user/assistant messages; ``prosody`` is absent for text input."""

    prosody: ProsodyInference | None = None


# ---------------------------------------------------------------------------------------------------
# Messages sent by both sides (tool results, session settings)
# ---------------------------------------------------------------------------------------------------


class ToolResponseMessage(EviModel):
    """§2.5 the result of a tool call; from the server it reports a built-in tool's result (§3)."""

    type: Literal["tool_response"] = "tool_response"
    tool_call_id: str
    content: str
    tool_name: str | None = None
    tool_type: str | None = None
    custom_session_id: str | None = None


class ToolErrorMessage(EviModel):
    """§2.6 a failed tool call; ``content`` is what the LLM gets instead of a result."""

    type: Literal["tool_error"] = "tool_error"
    tool_call_id: str
    error: str
    content: str | None = None
    code: str | None = None
    level: Literal["warn"] | None = None
    tool_type: str | None = None
    custom_session_id: str | None = None


class SessionSettings(EviModel):
    """§2.2 per-chat settings; the server may also send one (§1.4, meaning unconfirmed)."""

    type: Literal["session_settings"] = "session_settings"
    audio: AudioConfiguration | None = None
    system_prompt: str | None = None
    context: Context | None = None
    variables: dict[str, VariableValue] | None = None
    voice_id: str | None = None
    language_model_api_key: str | None = None
    tools: list[Tool] | None = None
    builtin_tools: list[BuiltinToolConfig] | None = None
    metadata: dict[str, Any] | None = None
    custom_session_id: str | None = None


# ---------------------------------------------------------------------------------------------------
# Client → server (§2)
# ---------------------------------------------------------------------------------------------------


class AudioInput(EviModel):
    """§2.1 one chunk of user audio, base64 of the format declared in ``session_settings.audio``."""

    type: Literal["audio_input"] = "audio_input"
    data: str
    custom_session_id: str | None = None


class UserInput(EviModel):
    """§2.3 text treated as the user's speech."""

    type: Literal["user_input"] = "user_input"
    text: str
    custom_session_id: str | None = None


class AssistantInput(EviModel):
    """§2.4 text EVI speaks verbatim."""

    type: Literal["assistant_input"] = "assistant_input"
    text: str
    custom_session_id: str | None = None


class PauseAssistantMessage(EviModel):
    """§2.7 stop assistant responses; EVI keeps transcribing."""

    type: Literal["pause_assistant_message"] = "pause_assistant_message"
    custom_session_id: str | None = None


class ResumeAssistantMessage(EviModel):
    """§2.7 resume assistant responses after a pause."""

    type: Literal["resume_assistant_message"] = "resume_assistant_message"
    custom_session_id: str | None = None


# ---------------------------------------------------------------------------------------------------
# Server → client (§3)
# ---------------------------------------------------------------------------------------------------


class ChatMetadata(EviModel):
    """§1.4 first server message; ``chat_group_id`` resumes the conversation (§7)."""

    type: Literal["chat_metadata"] = "chat_metadata"
    chat_id: str
    chat_group_id: str
    request_id: str | None = None
    custom_session_id: str | None = None


class ToolCallMessage(EviModel):
    """§6 the LLM wants a tool run; ``parameters`` is the arguments as JSON text."""

    type: Literal["tool_call"] = "tool_call"
    name: str
    parameters: str
    tool_call_id: str
    response_required: bool
    tool_type: str
    custom_session_id: str | None = None


class ChatMessage(EviModel):
    """§3 the transcript part of user/assistant messages."""

    role: str
    content: str | None = None
    tool_call: ToolCallMessage | None = None
    tool_result: ToolResponseMessage | ToolErrorMessage | None = None


class UserMessage(EviModel):
    """§3 a user transcript; ``interim`` ones come only with ``verbose_transcription=true``."""

    type: Literal["user_message"] = "user_message"
    message: ChatMessage
    models: Inference
    time: MillisecondInterval
    from_text: bool
    interim: bool
    language: str | None = None
    custom_session_id: str | None = None


class AssistantMessage(EviModel):
    """§3 one chunk (sentence) of assistant text; ``id`` matches its ``audio_output`` chunks (§4.2)."""

    type: Literal["assistant_message"] = "assistant_message"
    id: str | None = None
    message: ChatMessage
    models: Inference
    from_text: bool
    is_quick_response: bool
    language: str | None = None
    custom_session_id: str | None = None


class AssistantProsody(EviModel):
    """§3 expression scores of the assistant's audio."""

    type: Literal["assistant_prosody"] = "assistant_prosody"
    id: str | None = None
    models: Inference
    custom_session_id: str | None = None


class AudioOutput(EviModel):
    """§4.2 one chunk of assistant audio: base64 of a whole WAV file; ``index`` counts within ``id``."""

    type: Literal["audio_output"] = "audio_output"
    id: str
    index: int
    data: str
    custom_session_id: str | None = None


class AssistantEnd(EviModel):
    """§5 EVI finished generating (not playing) the current turn."""

    type: Literal["assistant_end"] = "assistant_end"
    custom_session_id: str | None = None


class UserInterruption(EviModel):
    """§5 the user barged in; EVI stopped generating. ``time`` units are unconfirmed."""

    type: Literal["user_interruption"] = "user_interruption"
    time: int
    custom_session_id: str | None = None


class WebSocketError(EviModel):
    """§8 an error; treat as possibly fatal, log code, slug and request_id."""

    type: Literal["error"] = "error"
    code: str
    slug: str
    message: str
    request_id: str | None = None
    custom_session_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message whose ``type`` this module does not know; logged and ignored, never an error."""

    type: str
    raw: Mapping[str, Any]


ClientMessage: TypeAlias = (
    AudioInput
    | SessionSettings
    | UserInput
    | AssistantInput
    | ToolResponseMessage
    | ToolErrorMessage
    | PauseAssistantMessage
    | ResumeAssistantMessage
)
ServerMessage: TypeAlias = (
    ChatMetadata
    | UserMessage
    | AssistantMessage
    | AssistantProsody
    | AudioOutput
    | AssistantEnd
    | UserInterruption
    | ToolCallMessage
    | ToolResponseMessage
    | ToolErrorMessage
    | WebSocketError
    | SessionSettings
)

_CLIENT_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(Annotated[ClientMessage, Field(discriminator="type")])
_SERVER_ADAPTER: TypeAdapter[ServerMessage] = TypeAdapter(Annotated[ServerMessage, Field(discriminator="type")])


def _type_tags(*models: type[EviModel]) -> frozenset[str]:
    return frozenset(str(m.model_fields["type"].default) for m in models)


_CLIENT_TYPES = _type_tags(
    AudioInput, SessionSettings, UserInput, AssistantInput, ToolResponseMessage, ToolErrorMessage,
    PauseAssistantMessage, ResumeAssistantMessage,
)  # fmt: skip
_SERVER_TYPES = _type_tags(
    ChatMetadata, UserMessage, AssistantMessage, AssistantProsody, AudioOutput, AssistantEnd,
    UserInterruption, ToolCallMessage, ToolResponseMessage, ToolErrorMessage, WebSocketError, SessionSettings,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------


def load_json_object(text: str | bytes, what: str = "EVI message") -> dict[str, Any]:
    """Decode one text frame into a JSON object with a string ``type``.

    Raises UpstreamProtocolError if it is not JSON, not an object, or has no string ``type``.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UpstreamProtocolError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"{what} must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind is None:
        raise UpstreamProtocolError(f"{what} has no 'type' field")
    if not isinstance(kind, str):
        raise UpstreamProtocolError(f"{what} 'type' must be a string, got {type(kind).__name__}")
    return obj


def _describe(what: str, kind: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = list(first["loc"])
    if loc and loc[0] == kind:
        loc = loc[1:]
    field = ".".join(str(part) for part in loc) or "(message)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{what} {kind!r} has an invalid field {field!r}: {first['msg']}{more}"


def validate_server_object(obj: Mapping[str, Any], what: str = "EVI server message") -> ServerMessage | UnknownMessage:
    """Validate an already decoded server message object (from ``load_json_object``)."""
    kind = str(obj["type"])
    if kind not in _SERVER_TYPES:
        return UnknownMessage(type=kind, raw=obj)
    try:
        return _SERVER_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise UpstreamProtocolError(_describe(what, kind, exc)) from None


def validate_client_object(obj: Mapping[str, Any], what: str = "EVI client message") -> ClientMessage | UnknownMessage:
    """Validate an already decoded client message object (from ``load_json_object``)."""
    kind = str(obj["type"])
    if kind not in _CLIENT_TYPES:
        return UnknownMessage(type=kind, raw=obj)
    try:
        return _CLIENT_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise UpstreamProtocolError(_describe(what, kind, exc)) from None


def parse_server_message(text: str | bytes) -> ServerMessage | UnknownMessage:
    """Parse one frame EVI sent (§3). Unknown ``type`` gives UnknownMessage; malformed input raises
    UpstreamProtocolError naming the type and field."""
    return validate_server_object(load_json_object(text, "EVI server message"))


def parse_client_message(text: str | bytes) -> ClientMessage | UnknownMessage:
    """Parse one frame a client sent to EVI (§2); used by the EVI-compatible simulator."""
    return validate_client_object(load_json_object(text, "EVI client message"))


def decode_audio_data(data: str, what: str = "audio_output.data") -> bytes:
    """Strict base64 decode of an audio payload; raises UpstreamProtocolError when it is not base64."""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise UpstreamProtocolError(f"EVI {what} is not valid base64: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Handshake (§1.1–§1.3)
# ---------------------------------------------------------------------------------------------------

_Scalar: TypeAlias = str | int | float | bool


def _query_value(value: _Scalar) -> str:
    # §1.2: booleans are lowercase on the wire (httpx's rendering in the SDK).
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flatten_query(key: str, value: object, out: list[tuple[str, str]]) -> None:
    # §1.2: nested settings become ``session_settings[a][b]=v``; list items repeat the key (as the SDK does).
    if value is None:
        return
    if isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            if not isinstance(sub_key, str):
                raise ConfigError(f"EVI query parameter {key!r} has a non-string key {sub_key!r}")
            _flatten_query(f"{key}[{sub_key}]", sub_value, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _flatten_query(key, item, out)
    elif isinstance(value, str | int | float):
        out.append((key, _query_value(value)))
    else:
        raise ConfigError(f"EVI query parameter {key!r} has an unsupported value of type {type(value).__name__}")


def connect_request(
    base_url: str,
    *,
    config_id: str | None,
    api_key: str | None,
    access_token: str | None,
    resumed_chat_group_id: str | None = None,
    verbose_transcription: bool | None = None,
    session_settings_query: Mapping[str, Any] | None = None,
    config_version: int | None = None,
    event_limit: int | None = None,
    allow_connection: bool | None = None,
) -> tuple[str, dict[str, str]]:
    """Build the chat WebSocket URL and upgrade headers (§1.1–§1.3).

    The API key goes only in the ``X-Hume-Api-Key`` header, never in the URL; an access token goes in the
    ``access_token`` query parameter. ``session_settings_query`` is the query form of session settings
    (``ConnectSessionSettings``), e.g. ``{"audio": {"encoding": "linear16", "sample_rate": 8000}}``.
    Raises ConfigError for a non-ws(s) URL or a settings value that cannot go in a query.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"EVI URL must be ws:// or wss:// with a host, got {redact_url(base_url)!r}")
    pairs: list[tuple[str, str]] = []
    # Same order as the SDK's ChatClient.connect.
    if access_token:
        pairs.append(("access_token", access_token))
    scalars: tuple[tuple[str, _Scalar | None], ...] = (
        ("allow_connection", allow_connection),
        ("config_id", config_id),
        ("config_version", config_version),
        ("event_limit", event_limit),
        ("resumed_chat_group_id", resumed_chat_group_id),
        ("verbose_transcription", verbose_transcription),
    )
    pairs.extend((name, _query_value(value)) for name, value in scalars if value is not None)
    if session_settings_query is not None:
        _flatten_query("session_settings", session_settings_query, pairs)
    query = "&".join(q for q in (parts.query, urlencode(pairs)) if q)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    headers = {API_KEY_HEADER: api_key} if api_key else {}
    return url, headers


_SECRET_PARAMS = frozenset({"api_key", "access_token", "apiKey", "accessToken", "language_model_api_key"})
_MASK = "***"


def redact_url(url: str) -> str:
    """Mask secrets in a URL for logging: ``api_key``/``access_token`` query values (also nested in
    brackets) and any userinfo password."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{_MASK}@{host}"
    pieces = []
    for piece in parts.query.split("&") if parts.query else ():
        raw_key, sep, _ = piece.partition("=")
        name = unquote_plus(raw_key)
        leaf = name.rsplit("[", 1)[-1].rstrip("]") if name.endswith("]") else name
        pieces.append(f"{raw_key}={_MASK}" if sep and leaf in _SECRET_PARAMS else piece)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(pieces), parts.fragment))
