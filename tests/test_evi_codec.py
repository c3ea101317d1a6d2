"""EviCodec: EVI frames ⇄ neutral upstream events, checked against the official ``hume`` SDK (evi-protocol.md §10)."""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import pydantic
import pytest
from hume.core.pydantic_utilities import parse_obj_as
from hume.empathic_voice import types as sdk
from hume.empathic_voice.chat.types import PublishEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import AudioFormatError, CallStateError, UpstreamProtocolError
from gateway.ids import ResponseId
from gateway.wire import evi_messages as evi
from gateway.wire.evi_codec import EviCodec
from gateway.wire.upstream import (
    AssistantAudio,
    AssistantText,
    AssistantTurnEnd,
    SessionStart,
    ToolCall,
    UpstreamFault,
    UpstreamNotice,
    UpstreamReady,
    UpstreamUnknown,
    UserInterrupted,
    UserTranscript,
)

CODEC = EviCodec()


def _wav(rate_hz: int = 24000, samples: int = 480) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(bytes(range(256)) * (samples * 2 // 256) + bytes(samples * 2 % 256))
    return buf.getvalue()


def _published(frame: str, expected: type[Any]) -> Any:
    """Parse an outgoing frame with the SDK, require the expected class and no unknown fields."""
    parsed: Any = parse_obj_as(PublishEvent, json.loads(frame))  # type: ignore[arg-type]
    assert type(parsed) is expected
    assert parsed.model_extra == {}
    audio = getattr(parsed, "audio", None)
    if audio is not None:
        assert audio.model_extra == {}
    return parsed


def _sdk_json(model: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(model.dict()))
    return result


def _frame(model: Any) -> str:
    """A server frame as the SDK's model would serialise it."""
    return json.dumps(model.dict())


# ---------------------------------------------------------------------------------------------------
# Encoding (core → EVI)
# ---------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1200).map(lambda b: b[: len(b) // 2 * 2]))
def test_encode_audio_matches_sdk_and_model(pcm16: bytes) -> None:
    """encode_audio equals the model's JSON and the SDK's AudioInput, and carries the exact PCM bytes."""
    frame = CODEC.encode_audio(pcm16)
    b64 = base64.b64encode(pcm16).decode()
    assert frame == evi.AudioInput(data=b64).to_json()
    _published(frame, sdk.AudioInput)
    assert json.loads(frame) == _sdk_json(sdk.AudioInput(data=b64))
    assert base64.b64decode(json.loads(frame)["data"], validate=True) == pcm16


def test_encode_audio_rejects_odd_byte_count() -> None:
    """Half a 16-bit sample is a local bug and raises AudioFormatError."""
    with pytest.raises(AudioFormatError, match="even byte count, got 321"):
        CODEC.encode_audio(bytes(321))


def test_encode_session_start_matches_sdk() -> None:
    """SessionStart becomes the SDK's session_settings with linear16 audio, variables and session id."""
    frame = CODEC.encode_session_start(
        SessionStart(
            input_rate_hz=8000,
            channels=1,
            variables={"name": "Jo", "city": "Zürich"},
            custom_session_id="CA1",
        )
    )
    _published(frame, sdk.SessionSettings)
    expected = sdk.SessionSettings(
        audio=sdk.AudioConfiguration(encoding="linear16", sample_rate=8000, channels=1),
        variables={"name": "Jo", "city": "Zürich"},
        custom_session_id="CA1",
    )
    assert json.loads(frame) == _sdk_json(expected)


def test_encode_session_start_omits_empty_options() -> None:
    """Without variables or session id, session_settings carries only the audio format (as Hume's proxy)."""
    frame = CODEC.encode_session_start(
        SessionStart(input_rate_hz=16000, channels=1, variables={}, custom_session_id=None)
    )
    _published(frame, sdk.SessionSettings)
    assert json.loads(frame) == {
        "type": "session_settings",
        "audio": {"encoding": "linear16", "sample_rate": 16000, "channels": 1},
    }


@pytest.mark.parametrize(("rate_hz", "channels"), [(0, 1), (-8000, 1), (8000, 0)])
def test_session_start_rejects_impossible_format(rate_hz: int, channels: int) -> None:
    """A non-positive rate or channel count is a local bug and raises CallStateError."""
    with pytest.raises(CallStateError, match="must be positive"):
        SessionStart(input_rate_hz=rate_hz, channels=channels, variables={}, custom_session_id=None)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (CODEC.encode_user_text("Hi, it's Jo ☎"), sdk.UserInput(text="Hi, it's Jo ☎")),
        (
            CODEC.encode_tool_response("t1", '{"temp": 21}'),
            sdk.ToolResponseMessage(tool_call_id="t1", content='{"temp": 21}'),
        ),
        (CODEC.encode_tool_error("t2", "timeout"), sdk.ToolErrorMessage(tool_call_id="t2", error="timeout")),
        (
            CODEC.encode_tool_error("t3", "timeout", "Weather is unavailable right now"),
            sdk.ToolErrorMessage(tool_call_id="t3", error="timeout", content="Weather is unavailable right now"),
        ),
        (CODEC.encode_pause(), sdk.PauseAssistantMessage()),
        (CODEC.encode_resume(), sdk.ResumeAssistantMessage()),
    ],
    ids=["user_input", "tool_response", "tool_error", "tool_error+content", "pause", "resume"],
)
def test_encoders_match_sdk(frame: str, expected: Any) -> None:
    """Each encoder writes what the SDK's send_publish writes for the same message, and nothing more."""
    _published(frame, type(expected))
    assert json.loads(frame) == _sdk_json(expected)
    assert frame == json.dumps(json.loads(frame), separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------
# Decoding (EVI → core), fixtures built with the SDK's models
# ---------------------------------------------------------------------------------------------------


def _scores() -> dict[str, float]:
    return {name: 0.01 * i for i, name in enumerate(evi.EMOTION_NAMES)}


def _inference() -> Any:
    return parse_obj_as(sdk.Inference, {"prosody": {"scores": _scores()}})


WAV = _wav()

DECODE_CASES: list[tuple[str, Any, object]] = [
    (
        "chat_metadata",
        sdk.ChatMetadata(chat_id="chat-1", chat_group_id="grp-1", request_id="req-1"),
        UpstreamReady(session_id="chat-1", group_id="grp-1", request_id="req-1"),
    ),
    (
        "audio_output",
        sdk.AudioOutput(id="resp-1", index=2, data=base64.b64encode(WAV).decode()),
        AssistantAudio(response_id=ResponseId("resp-1"), index=2, wav=WAV),
    ),
    (
        "assistant_message",
        sdk.AssistantMessage(
            id="resp-1",
            message=sdk.ChatMessage(role="assistant", content="It is sunny."),
            models=_inference(),
            from_text=False,
            is_quick_response=False,
        ),
        AssistantText(response_id=ResponseId("resp-1"), text="It is sunny."),
    ),
    (
        "assistant_message no id, no content",
        sdk.AssistantMessage(
            message=sdk.ChatMessage(role="assistant"),
            models=sdk.Inference(),
            from_text=True,
            is_quick_response=True,
        ),
        AssistantText(response_id=None, text=""),
    ),
    ("assistant_end", sdk.AssistantEnd(), AssistantTurnEnd()),
    ("user_interruption", sdk.UserInterruption(time=1718000000123), UserInterrupted(time_ms=1718000000123)),
    (
        "user_message final",
        sdk.UserMessage(
            message=sdk.ChatMessage(role="user", content="What's the weather?"),
            models=_inference(),
            time=sdk.MillisecondInterval(begin=100, end=1400),
            from_text=False,
            interim=False,
        ),
        UserTranscript(text="What's the weather?", interim=False),
    ),
    (
        "user_message interim",
        sdk.UserMessage(
            message=sdk.ChatMessage(role="user", content="What's"),
            models=sdk.Inference(),
            time=sdk.MillisecondInterval(begin=100, end=600),
            from_text=False,
            interim=True,
        ),
        UserTranscript(text="What's", interim=True),
    ),
    (
        "tool_call function",
        sdk.ToolCallMessage(
            name="weather",
            parameters='{"city":"Paris"}',
            tool_call_id="c1",
            response_required=True,
            tool_type="function",
        ),
        ToolCall(
            name="weather",
            tool_call_id="c1",
            parameters_json='{"city":"Paris"}',
            response_required=True,
            builtin=False,
        ),
    ),
    (
        "tool_call builtin",
        sdk.ToolCallMessage(
            name="hang_up", parameters="{}", tool_call_id="c2", response_required=False, tool_type="builtin"
        ),
        ToolCall(name="hang_up", tool_call_id="c2", parameters_json="{}", response_required=False, builtin=True),
    ),
    (
        "error",
        sdk.WebSocketError(
            code="I0118", slug="transcription_disconnected", message="Transcription socket disconnected."
        ),
        UpstreamFault(
            code="I0118",
            slug="transcription_disconnected",
            message="Transcription socket disconnected.",
            request_id=None,
            fatal=True,
        ),
    ),
    (
        "error-not-fatal",
        sdk.WebSocketError(code="E0101", slug="invalid_message", message="Missing field."),
        UpstreamFault(code="E0101", slug="invalid_message", message="Missing field.", request_id=None, fatal=False),
    ),
    (
        "assistant_prosody",
        sdk.AssistantProsody(id="resp-1", models=_inference()),
        UpstreamNotice("assistant_prosody"),
    ),
    (
        "session_settings echo",
        sdk.SessionSettings(audio=sdk.AudioConfiguration(sample_rate=8000, channels=1)),
        UpstreamNotice("session_settings"),
    ),
    (
        "tool_response builtin",
        sdk.ToolResponseMessage(tool_call_id="c3", content="results", tool_name="web_search", tool_type="builtin"),
        UpstreamNotice("tool_response"),
    ),
    (
        "tool_error builtin",
        sdk.ToolErrorMessage(tool_call_id="c4", error="failed", tool_type="builtin"),
        UpstreamNotice("tool_error"),
    ),
]


@pytest.mark.parametrize(("name", "model", "expected"), DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_decode_sdk_fixture(name: str, model: Any, expected: object) -> None:
    """Each SDK-built server frame decodes to the neutral event carrying the same facts."""
    assert CODEC.decode(_frame(model)) == expected
    assert CODEC.decode(_frame(model).encode()) == expected


def test_decode_covers_every_server_type() -> None:
    """The decode cases exercise every message type of the SDK's SubscribeEvent union."""
    sdk_types = {m.model_fields["type"].default for m in sdk.SubscribeEvent.__args__}  # type: ignore[attr-defined]
    assert {type(c[1]).model_fields["type"].default for c in DECODE_CASES} == sdk_types


def test_decoded_audio_is_the_wav_file() -> None:
    """audio_output decodes to the whole WAV file, whose header still says 24 kHz (§4.2: read the rate)."""
    event = CODEC.decode(_frame(sdk.AudioOutput(id="r", index=0, data=base64.b64encode(WAV).decode())))
    assert isinstance(event, AssistantAudio)
    with wave.open(io.BytesIO(event.wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (24000, 1, 2, 480)


def test_unknown_type_is_tolerated() -> None:
    """A frame of a type EVI may add later decodes to UpstreamUnknown, not an error."""
    assert CODEC.decode('{"type":"assistant_thinking","text":"hmm"}') == UpstreamUnknown("assistant_thinking")


def test_ignored_kinds_are_not_validated() -> None:
    """A drifted schema in a message the core ignores still gives a notice instead of ending the call."""
    assert CODEC.decode('{"type":"assistant_prosody","models":"gone"}') == UpstreamNotice("assistant_prosody")
    with pytest.raises(pydantic.ValidationError):
        parse_obj_as(sdk.AssistantProsody, {"type": "assistant_prosody", "models": "gone"})


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("not json", "not valid JSON"),
        ("null", "must be a JSON object"),
        ('{"data":"AAAA"}', "no 'type'"),
        ('{"type":"audio_output","id":"r","index":0,"data":"AA@A"}', "audio_output.data is not valid base64"),
        ('{"type":"audio_output","id":"r","index":0,"data":"AAA"}', "audio_output.data is not valid base64"),
        (
            '{"type":"audio_output","id":"r","index":0,"data":"AAAA\\n"}',
            "audio_output.data is not valid base64",
        ),
        ('{"type":"audio_output","index":0,"data":"AAAA"}', "'audio_output' has an invalid field 'id'"),
        (
            '{"type":"audio_output","id":"r","index":null,"data":"AAAA"}',
            "'audio_output' has an invalid field 'index'",
        ),
        ('{"type":"audio_output","id":"r","index":0,"data":7}', "'audio_output' has an invalid field 'data'"),
        ('{"type":"chat_metadata","chat_group_id":"g"}', "'chat_metadata' has an invalid field 'chat_id'"),
        ('{"type":"user_interruption"}', "'user_interruption' has an invalid field 'time'"),
        ('{"type":"error","code":"E0100","message":"bad"}', "'error' has an invalid field 'slug'"),
        (
            '{"type":"tool_call","name":"n","parameters":"{}","tool_call_id":"c","tool_type":"function"}',
            "'tool_call' has an invalid field 'response_required'",
        ),
    ],
)
def test_decode_rejects_malformed_frames(frame: str, needle: str) -> None:
    """Malformed frames of kinds the core acts on raise UpstreamProtocolError naming the problem."""
    with pytest.raises(UpstreamProtocolError) as info:
        CODEC.decode(frame)
    assert needle in str(info.value)


def _reference_audio(obj: dict[str, Any]) -> AssistantAudio:
    """The slow path: full model validation, then strict base64."""
    message = evi.parse_server_message(json.dumps(obj))
    assert isinstance(message, evi.AudioOutput)
    return AssistantAudio(ResponseId(message.id), message.index, evi.decode_audio_data(message.data))


_odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from(["r1", "2", "", "AAAA", "AA==", "AA=", "@@@@", "UklGRg=="]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={"id": _odd_values, "index": _odd_values, "data": _odd_values}))
def test_audio_fast_path_equals_model_path(fields: dict[str, Any]) -> None:
    """The hand-written audio_output path accepts and rejects exactly what the pydantic model path does."""
    obj = {"type": "audio_output", **fields}
    try:
        expected: object = _reference_audio(obj)
    except UpstreamProtocolError:
        expected = UpstreamProtocolError
    try:
        actual: object = CODEC.decode(json.dumps(obj))
    except UpstreamProtocolError:
        actual = UpstreamProtocolError
    assert actual == expected


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80),
        st.builds(
            lambda kind, extra: json.dumps({"type": kind, **extra}),
            st.sampled_from([c[1].dict()["type"] for c in DECODE_CASES]) | st.text(max_size=8),
            st.dictionaries(
                st.sampled_from(["id", "index", "data", "chat_id", "chat_group_id", "time", "message", "models"]),
                st.none()
                | st.booleans()
                | st.integers()
                | st.text(max_size=6)
                | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
                max_size=5,
            ),
        ),
    )
)
def test_decode_raises_only_protocol_errors(frame: str | bytes) -> None:
    """Arbitrary input decodes to an event or raises UpstreamProtocolError, never anything else."""
    try:
        CODEC.decode(frame)
    except UpstreamProtocolError as exc:
        assert str(exc)


def test_typical_turn_transcript() -> None:
    """A typical EVI turn (§3) decodes to the event sequence the core expects, in order."""
    frames = [
        _frame(sdk.ChatMetadata(chat_id="c", chat_group_id="g")),
        _frame(
            sdk.UserMessage(
                message=sdk.ChatMessage(role="user", content="Hello"),
                models=_inference(),
                time=sdk.MillisecondInterval(begin=0, end=800),
                from_text=False,
                interim=False,
            )
        ),
        _frame(
            sdk.AssistantMessage(
                id="A",
                message=sdk.ChatMessage(role="assistant", content="Hi there."),
                models=_inference(),
                from_text=False,
                is_quick_response=False,
            )
        ),
        _frame(sdk.AudioOutput(id="A", index=0, data=base64.b64encode(WAV).decode())),
        _frame(sdk.AudioOutput(id="A", index=1, data=base64.b64encode(WAV).decode())),
        _frame(sdk.AssistantProsody(id="A", models=_inference())),
        _frame(sdk.AssistantEnd()),
    ]
    kinds = [type(CODEC.decode(f)).__name__ for f in frames]
    assert kinds == [
        "UpstreamReady",
        "UserTranscript",
        "AssistantText",
        "AssistantAudio",
        "AssistantAudio",
        "UpstreamNotice",
        "AssistantTurnEnd",
    ]
