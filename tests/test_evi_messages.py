"""EVI wire models, parsers and handshake, checked against the official ``hume`` SDK (evi-protocol.md §10)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pydantic
import pytest
from hume import AsyncHumeClient
from hume.core.pydantic_utilities import parse_obj_as
from hume.empathic_voice import types as sdk
from hume.empathic_voice.chat.types import PublishEvent
from hume.empathic_voice.types import SubscribeEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError, UpstreamProtocolError
from gateway.testing import undeclared_fields
from gateway.wire import evi_messages as evi

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _scores(seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {name: round(rng.random(), 6) for name in evi.EMOTION_NAMES}


def _sdk_json(model: Any) -> dict[str, Any]:
    """What the SDK's ``send_publish`` writes for ``model``, as a dict."""
    result: dict[str, Any] = json.loads(json.dumps(model.dict()))
    return result


# ---------------------------------------------------------------------------------------------------
# Client → server messages (§2), SDK PublishEvent as the oracle
# ---------------------------------------------------------------------------------------------------

_TOOL_SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})

CLIENT_CASES: list[tuple[str, evi.EviModel, Any]] = [
    ("audio_input", evi.AudioInput(data="AAAA"), sdk.AudioInput(data="AAAA")),
    (
        "audio_input+session",
        evi.AudioInput(data="AAECAw==", custom_session_id="s1"),
        sdk.AudioInput(data="AAECAw==", custom_session_id="s1"),
    ),
    (
        "session_settings audio",
        evi.SessionSettings(audio=evi.AudioConfiguration(encoding="linear16", sample_rate=8000, channels=1)),
        sdk.SessionSettings(audio=sdk.AudioConfiguration(encoding="linear16", sample_rate=8000, channels=1)),
    ),
    (
        "session_settings full",
        evi.SessionSettings(
            audio=evi.AudioConfiguration(sample_rate=16000, channels=1, codec="pcm"),
            system_prompt="You are a phone agent.",
            context=evi.Context(text="Caller is a VIP", type="persistent"),
            variables={"name": "Jo", "vip": True, "balance": 12.5},
            voice_id="voice-1",
            language_model_api_key="lm-key",
            tools=[evi.Tool(type="function", name="weather", parameters=_TOOL_SCHEMA, description="Weather")],
            builtin_tools=[evi.BuiltinToolConfig(name="hang_up"), evi.BuiltinToolConfig(name="web_search")],
            metadata={"k": "v"},
            custom_session_id="s2",
        ),
        sdk.SessionSettings(
            audio=sdk.AudioConfiguration(sample_rate=16000, channels=1, codec="pcm"),
            system_prompt="You are a phone agent.",
            context=sdk.Context(text="Caller is a VIP", type="persistent"),
            variables={"name": "Jo", "vip": True, "balance": 12.5},
            voice_id="voice-1",
            language_model_api_key="lm-key",
            tools=[sdk.Tool(type="function", name="weather", parameters=_TOOL_SCHEMA, description="Weather")],
            builtin_tools=[sdk.BuiltinToolConfig(name="hang_up"), sdk.BuiltinToolConfig(name="web_search")],
            metadata={"k": "v"},
            custom_session_id="s2",
        ),
    ),
    ("user_input", evi.UserInput(text="Hello there"), sdk.UserInput(text="Hello there")),
    ("assistant_input", evi.AssistantInput(text="One moment."), sdk.AssistantInput(text="One moment.")),
    (
        "tool_response",
        evi.ToolResponseMessage(tool_call_id="t1", content='{"temp": 21}'),
        sdk.ToolResponseMessage(tool_call_id="t1", content='{"temp": 21}'),
    ),
    (
        "tool_error",
        evi.ToolErrorMessage(tool_call_id="t2", error="timeout", content="Weather is unavailable", code="E1"),
        sdk.ToolErrorMessage(tool_call_id="t2", error="timeout", content="Weather is unavailable", code="E1"),
    ),
    (
        "tool_error warn",
        evi.ToolErrorMessage(tool_call_id="t3", error="x", level="warn", tool_type="function"),
        sdk.ToolErrorMessage(tool_call_id="t3", error="x", level="warn", tool_type="function"),
    ),
    ("pause", evi.PauseAssistantMessage(), sdk.PauseAssistantMessage()),
    (
        "resume",
        evi.ResumeAssistantMessage(custom_session_id="s3"),
        sdk.ResumeAssistantMessage(custom_session_id="s3"),
    ),
]


@pytest.mark.parametrize(("name", "ours", "theirs"), CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_client_message_matches_sdk(name: str, ours: evi.EviModel, theirs: Any) -> None:
    """Every client message we write parses as the SDK's class with no unknown field and equals its JSON."""
    frame = ours.to_json()
    obj = json.loads(frame)
    parsed: Any = parse_obj_as(PublishEvent, obj)  # type: ignore[arg-type]
    assert type(parsed) is type(theirs)
    assert undeclared_fields(parsed) == []
    assert obj == _sdk_json(theirs)


@pytest.mark.parametrize(("name", "ours", "theirs"), CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_client_parser_accepts_sdk_frames(name: str, ours: evi.EviModel, theirs: Any) -> None:
    """parse_client_message reads the SDK's own frames back into our model, field for field."""
    parsed = evi.parse_client_message(json.dumps(theirs.dict()))
    assert type(parsed) is type(ours)
    assert parsed == ours


def test_to_json_is_compact() -> None:
    """to_json writes compact JSON with ``type`` and without unset optional fields."""
    assert evi.AudioInput(data="AAAA").to_json() == '{"type":"audio_input","data":"AAAA"}'


def test_to_json_survives_lone_surrogates() -> None:
    """Text with a lone surrogate serialises as a JSON escape instead of raising."""
    frame = evi.UserInput(text="a\ud800b").to_json()
    assert frame.isascii()
    assert json.loads(frame)["text"] == "a\ud800b"


def test_sdk_rejects_a_typo_only_the_extras_check_catches() -> None:
    """The extras check is what catches the Audio guide's ``format`` typo, which the SDK itself accepts."""
    parsed: Any = parse_obj_as(
        PublishEvent,  # type: ignore[arg-type]
        {"type": "session_settings", "audio": {"format": "linear16", "sample_rate": 8000, "channels": 1}},
    )
    assert undeclared_fields(parsed) == [".audio: ['format']"]


# ---------------------------------------------------------------------------------------------------
# Server → client messages (§3), SDK SubscribeEvent as the oracle
# ---------------------------------------------------------------------------------------------------


def _server_cases() -> list[tuple[str, evi.EviModel, type[Any]]]:
    prosody = evi.Inference(prosody=evi.ProsodyInference(scores=_scores(1)))
    tool_call = evi.ToolCallMessage(
        name="weather",
        parameters='{"city": "Paris"}',
        tool_call_id="call-1",
        response_required=True,
        tool_type="function",
    )
    return [
        (
            "chat_metadata",
            evi.ChatMetadata(chat_id="chat-1", chat_group_id="grp-1", request_id="req-1"),
            sdk.ChatMetadata,
        ),
        (
            "user_message",
            evi.UserMessage(
                message=evi.ChatMessage(role="user", content="What's the weather?"),
                models=prosody,
                time=evi.MillisecondInterval(begin=1200, end=2750),
                from_text=False,
                interim=False,
                language="en",
            ),
            sdk.UserMessage,
        ),
        (
            "user_message interim",
            evi.UserMessage(
                message=evi.ChatMessage(role="user", content="What's the"),
                models=evi.Inference(),
                time=evi.MillisecondInterval(begin=1200, end=1900),
                from_text=False,
                interim=True,
            ),
            sdk.UserMessage,
        ),
        (
            "assistant_message",
            evi.AssistantMessage(
                id="resp-1",
                message=evi.ChatMessage(role="assistant", content="It is sunny in Paris."),
                models=evi.Inference(prosody=evi.ProsodyInference(scores=_scores(2))),
                from_text=False,
                is_quick_response=False,
            ),
            sdk.AssistantMessage,
        ),
        (
            "assistant_message tool",
            evi.AssistantMessage(
                message=evi.ChatMessage(
                    role="tool",
                    tool_call=tool_call,
                    tool_result=evi.ToolResponseMessage(tool_call_id="call-1", content="sunny"),
                ),
                models=evi.Inference(),
                from_text=False,
                is_quick_response=True,
            ),
            sdk.AssistantMessage,
        ),
        ("assistant_prosody", evi.AssistantProsody(id="resp-1", models=prosody), sdk.AssistantProsody),
        ("audio_output", evi.AudioOutput(id="resp-1", index=3, data="UklGRg=="), sdk.AudioOutput),
        ("assistant_end", evi.AssistantEnd(), sdk.AssistantEnd),
        ("user_interruption", evi.UserInterruption(time=1718000000123), sdk.UserInterruption),
        ("tool_call", tool_call, sdk.ToolCallMessage),
        (
            "tool_response builtin",
            evi.ToolResponseMessage(
                tool_call_id="call-2", content="results", tool_name="web_search", tool_type="builtin"
            ),
            sdk.ToolResponseMessage,
        ),
        (
            "tool_error builtin",
            evi.ToolErrorMessage(tool_call_id="call-3", error="search failed", tool_type="builtin"),
            sdk.ToolErrorMessage,
        ),
        (
            "error",
            evi.WebSocketError(
                code="I0118",
                slug="transcription_disconnected",
                message="Transcription socket disconnected.",
                request_id="r9",
            ),
            sdk.WebSocketError,
        ),
        (
            "session_settings echo",
            evi.SessionSettings(audio=evi.AudioConfiguration(sample_rate=8000, channels=1), custom_session_id="s1"),
            sdk.SessionSettings,
        ),
    ]


SERVER_CASES = _server_cases()


def test_emotion_names_match_sdk() -> None:
    """EMOTION_NAMES lists exactly the 48 score names of the SDK's EmotionScores, in order."""
    sdk_names = tuple(f.alias for f in sdk.EmotionScores.model_fields.values())
    assert sdk_names == evi.EMOTION_NAMES


@pytest.mark.parametrize(("name", "ours", "sdk_class"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_server_message_parses_with_sdk(name: str, ours: evi.EviModel, sdk_class: type[Any]) -> None:
    """Every server message our models build (as the simulator will) parses as the SDK's class, no extras."""
    obj = json.loads(ours.to_json())
    parsed: Any = parse_obj_as(SubscribeEvent, obj)  # type: ignore[arg-type]
    assert type(parsed) is sdk_class
    assert undeclared_fields(parsed) == []
    assert _sdk_json(parsed) == obj


@pytest.mark.parametrize(("name", "ours", "sdk_class"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_server_parser_accepts_sdk_frames(name: str, ours: evi.EviModel, sdk_class: type[Any]) -> None:
    """parse_server_message reads frames written by the SDK's models into our model, field for field."""
    sdk_model = parse_obj_as(sdk_class, json.loads(ours.to_json()))
    parsed = evi.parse_server_message(json.dumps(sdk_model.dict()).encode())
    assert type(parsed) is type(ours)
    assert parsed == ours


def test_unknown_type_is_tolerated_where_the_sdk_fails() -> None:
    """An unknown ``type`` gives UnknownMessage with the raw object, where the SDK raises (§0 item 4)."""
    frame = '{"type":"assistant_thinking","id":"r1","detail":{"x":1}}'
    with pytest.raises(pydantic.ValidationError):
        parse_obj_as(SubscribeEvent, json.loads(frame))  # type: ignore[arg-type]
    parsed = evi.parse_server_message(frame)
    assert parsed == evi.UnknownMessage(
        type="assistant_thinking", raw={"type": "assistant_thinking", "id": "r1", "detail": {"x": 1}}
    )
    assert evi.parse_client_message('{"type":"chat_metadata"}') == evi.UnknownMessage(
        type="chat_metadata", raw={"type": "chat_metadata"}
    )


def test_extra_fields_are_kept() -> None:
    """A known message with fields we do not model still parses and keeps them (EVI evolves)."""
    parsed = evi.parse_server_message('{"type":"audio_output","id":"r","index":0,"data":"","is_final_chunk":true}')
    assert isinstance(parsed, evi.AudioOutput)
    assert parsed.model_extra == {"is_final_chunk": True}


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"audio_output"', "must be a JSON object, got str"),
        ('{"id": "x"}', "no 'type'"),
        ('{"type": 7}', "'type' must be a string"),
        ('{"type": "chat_metadata", "chat_id": "c"}', "'chat_metadata' has an invalid field 'chat_group_id'"),
        (
            '{"type": "audio_output", "id": "r", "data": "AAAA"}',
            "'audio_output' has an invalid field 'index'",
        ),
        ('{"type": "audio_output", "id": "r", "index": "first", "data": "AAAA"}', "field 'index'"),
        (
            json.dumps(
                {
                    "type": "tool_call",
                    "name": "n",
                    "parameters": "{}",
                    "response_required": True,
                    "tool_type": "function",
                }
            ),
            "'tool_call_id'",
        ),
        (
            json.dumps(
                {
                    "type": "user_message",
                    "message": {"content": "hi"},
                    "models": {},
                    "time": {"begin": 0, "end": 1},
                    "from_text": False,
                    "interim": False,
                }
            ),
            "'message.role'",
        ),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_server_parser_rejects_malformed_input(frame: str | bytes, needle: str) -> None:
    """Malformed frames raise UpstreamProtocolError whose message names what is wrong."""
    with pytest.raises(UpstreamProtocolError, match="EVI server message") as info:
        evi.parse_server_message(frame)
    assert needle in str(info.value)


def test_client_parser_names_type_and_field() -> None:
    """parse_client_message rejects a bad encoding and names the message type and field."""
    frame = '{"type": "session_settings", "audio": {"encoding": "mulaw", "sample_rate": 8000, "channels": 1}}'
    with pytest.raises(UpstreamProtocolError, match=r"'session_settings' has an invalid field 'audio.encoding'"):
        evi.parse_client_message(frame)


def test_errors_do_not_echo_payloads() -> None:
    """Validation errors describe the field but do not copy the (possibly huge) input into the message."""
    payload = "Z" * 5000
    with pytest.raises(UpstreamProtocolError) as info:
        evi.parse_server_message(json.dumps({"type": "audio_output", "id": "r", "index": payload, "data": "x"}))
    assert payload not in str(info.value)


def test_decode_audio_data_is_strict() -> None:
    """decode_audio_data decodes canonical base64 and rejects junk, whitespace and bad padding."""
    assert evi.decode_audio_data("AAEC") == b"\x00\x01\x02"
    for bad in ("AA EC", "AAEC\n", "AAE", "A===", "@@@@"):
        with pytest.raises(UpstreamProtocolError, match="not valid base64"):
            evi.decode_audio_data(bad)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_known_types = st.sampled_from(
    sorted({str(type(case[1]).model_fields["type"].default) for case in [*CLIENT_CASES, *SERVER_CASES]})
)
_objects = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    _known_types | st.text(max_size=10),
    st.dictionaries(
        st.sampled_from(
            ["id", "index", "data", "message", "models", "time", "audio", "chat_id", "chat_group_id"]
            + ["tool_call_id", "content", "error", "code", "slug", "text", "interim", "from_text"]
        ),
        _json_values,
        max_size=6,
    ),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60), _objects.map(json.dumps)))
def test_parsers_raise_only_protocol_errors(frame: str | bytes) -> None:
    """Arbitrary input either parses or raises UpstreamProtocolError, never anything else."""
    for parse in (evi.parse_server_message, evi.parse_client_message):
        with suppress(UpstreamProtocolError):
            parse(frame)


# ---------------------------------------------------------------------------------------------------
# Handshake (§1.1–§1.3), SDK ChatClient.connect as the oracle
# ---------------------------------------------------------------------------------------------------

EVI_URL = "wss://api.hume.ai/v0/evi/chat"

# The SDK's connect imports websockets' deprecated legacy client; that is its business, not ours.
_SDK_DEPRECATIONS = pytest.mark.filterwarnings(
    "ignore:websockets.legacy is deprecated:DeprecationWarning",
    "ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning",
)


async def _sdk_handshake(
    monkeypatch: pytest.MonkeyPatch, client_api_key: str | None, **kwargs: Any
) -> tuple[str, dict[str, str]]:
    recorded: list[tuple[str, dict[str, str]]] = []

    @asynccontextmanager
    async def fake_connect(url: str, extra_headers: dict[str, str]) -> AsyncIterator[object]:
        recorded.append((url, dict(extra_headers)))
        yield object()

    monkeypatch.setattr("hume.empathic_voice.chat.client.websockets_client_connect", fake_connect)
    client = AsyncHumeClient(api_key=client_api_key)
    async with client.empathic_voice.chat.connect(**kwargs):
        pass
    assert len(recorded) == 1
    return recorded[0]


def _query(url: str) -> list[tuple[str, str]]:
    return sorted(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def _base(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc, parts.path


_AUTH_HEADERS = {"x-hume-api-key"}


def _auth_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() in _AUTH_HEADERS}


@_SDK_DEPRECATIONS
async def test_handshake_with_api_key_matches_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an API key, URL query and auth header equal the SDK's, and the key is only in the header."""
    settings_query = {
        "audio": {"encoding": "linear16", "sample_rate": 8000, "channels": 1},
        "variables": {"name": "Jo", "vip": True},
        "context": {"text": "Caller is a VIP", "type": "persistent"},
        "custom_session_id": "call-CA123",
    }
    sdk_url, sdk_headers = await _sdk_handshake(
        monkeypatch,
        "secret-key-123",
        config_id="cfg-1",
        verbose_transcription=True,
        session_settings=sdk.ConnectSessionSettings.model_validate(settings_query),
    )
    url, headers = evi.connect_request(
        EVI_URL,
        config_id="cfg-1",
        api_key="secret-key-123",
        access_token=None,
        verbose_transcription=True,
        session_settings_query=settings_query,
    )
    assert _base(url) == _base(sdk_url)
    assert _query(url) == _query(sdk_url)
    assert headers == _auth_headers(sdk_headers) == {"X-Hume-Api-Key": "secret-key-123"}
    assert "secret-key-123" not in unquote(url)
    assert ("session_settings[audio][sample_rate]", "8000") in _query(url)
    assert ("verbose_transcription", "true") in _query(url)


@_SDK_DEPRECATIONS
async def test_handshake_with_access_token_matches_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an access token and resume options, the URL query equals the SDK's and no key header is sent."""
    sdk_url, sdk_headers = await _sdk_handshake(
        monkeypatch,
        None,
        access_token="tok-abc",
        config_id="cfg-2",
        config_version=3,
        event_limit=10,
        resumed_chat_group_id="grp-9",
        verbose_transcription=False,
        allow_connection=True,
    )
    url, headers = evi.connect_request(
        EVI_URL,
        config_id="cfg-2",
        api_key=None,
        access_token="tok-abc",
        resumed_chat_group_id="grp-9",
        verbose_transcription=False,
        config_version=3,
        event_limit=10,
        allow_connection=True,
    )
    assert _base(url) == _base(sdk_url)
    assert _query(url) == _query(sdk_url)
    assert headers == _auth_headers(sdk_headers) == {}
    assert ("verbose_transcription", "false") in _query(url)


@_SDK_DEPRECATIONS
async def test_minimal_handshake_matches_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """With only an API key and a config id, the URL carries just ``config_id``, as the SDK's does."""
    sdk_url, sdk_headers = await _sdk_handshake(monkeypatch, "k", config_id="cfg-3")
    url, headers = evi.connect_request(EVI_URL, config_id="cfg-3", api_key="k", access_token=None)
    assert url == sdk_url == f"{EVI_URL}?config_id=cfg-3"
    assert headers == _auth_headers(sdk_headers)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=8, max_size=40).filter(lambda s: s.strip() == s and "\x00" not in s))
def test_api_key_never_in_url(api_key: str) -> None:
    """Whatever the key, it goes in the header and the URL is exactly the one built without any key.

    Comparing with the keyless URL (rather than searching the URL for the key) can only fail for a real
    leak: a drawn key such as ``/v0/evi/`` is a substring of every URL without being leaked.
    """
    url, headers = evi.connect_request(EVI_URL, config_id="c", api_key=api_key, access_token=None)
    keyless_url, keyless_headers = evi.connect_request(EVI_URL, config_id="c", api_key=None, access_token=None)
    assert headers == {"X-Hume-Api-Key": api_key}
    assert keyless_headers == {}
    assert url == keyless_url


def test_handshake_keeps_existing_query() -> None:
    """A base URL that already has a query keeps it and gets ours appended."""
    url, _ = evi.connect_request("ws://127.0.0.1:9000/v0/evi/chat?x=1", config_id="c", api_key=None, access_token=None)
    assert url == "ws://127.0.0.1:9000/v0/evi/chat?x=1&config_id=c"


@pytest.mark.parametrize(
    ("base_url", "query", "needle"),
    [
        ("https://api.hume.ai/v0/evi/chat", None, "ws:// or wss://"),
        ("wss:///v0/evi/chat", None, "ws:// or wss://"),
        (
            "wss://api.hume.ai/v0/evi/chat",
            {"audio": {"sample_rate": b"8000"}},
            "session_settings[audio][sample_rate]",
        ),
        ("wss://api.hume.ai/v0/evi/chat", {"variables": {1: "x"}}, "non-string key"),
    ],
)
def test_handshake_rejects_bad_settings(base_url: str, query: dict[str, Any] | None, needle: str) -> None:
    """A non-WebSocket URL or a settings value that cannot go in a query raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        evi.connect_request(base_url, config_id=None, api_key=None, access_token=None, session_settings_query=query)
    assert needle in str(info.value)


def test_handshake_bad_url_error_is_redacted() -> None:
    """The error for a bad URL does not leak a token that was put in it."""
    with pytest.raises(ConfigError) as info:
        evi.connect_request("https://h/x?access_token=tok-secret", config_id=None, api_key=None, access_token=None)
    assert "tok-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "wss://api.hume.ai/v0/evi/chat?access_token=tok&config_id=c1",
            "wss://api.hume.ai/v0/evi/chat?access_token=***&config_id=c1",
        ),
        ("wss://h/chat?api_key=k&apiKey=k2", "wss://h/chat?api_key=***&apiKey=***"),
        (
            "wss://h/chat?session_settings%5Blanguage_model_api_key%5D=lm&session_settings%5Bvoice_id%5D=v",
            "wss://h/chat?session_settings%5Blanguage_model_api_key%5D=***&session_settings%5Bvoice_id%5D=v",
        ),
        ("wss://user:pw@h/chat", "wss://user:***@h/chat"),
        ("wss://h/chat?flag&config_id=c", "wss://h/chat?flag&config_id=c"),
        ("wss://api.hume.ai/v0/evi/chat", "wss://api.hume.ai/v0/evi/chat"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """redact_url masks token, key and password values and leaves everything else byte for byte."""
    assert evi.redact_url(url) == expected


def test_redact_url_masks_our_own_handshake() -> None:
    """The URL connect_request builds for token auth, once redacted, no longer contains the token."""
    url, _ = evi.connect_request(
        EVI_URL,
        config_id="c",
        api_key=None,
        access_token="T0KEN/with+odd=chars",
        session_settings_query={"language_model_api_key": "lm-secret"},
    )
    redacted = evi.redact_url(url)
    assert "T0KEN" not in unquote(redacted)
    assert "lm-secret" not in unquote(redacted)
    assert "config_id=c" in redacted
