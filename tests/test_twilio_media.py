"""Twilio Media Streams messages: inbound parsing, outbound builders and strict outbound shapes."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import CallStateError, TwilioProtocolError
from gateway.ids import AccountSid, CallSid, MarkName, StreamSid
from gateway.wire.twilio_media import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    MediaWire,
    OutboundClear,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    UnknownEvent,
    clear_message,
    connected_message,
    dtmf_message,
    inbound_media_message,
    mark_echo_message,
    mark_message,
    media_message,
    parse_gateway_message,
    parse_twilio_message,
    start_message,
    stop_message,
)

STREAM = StreamSid("MZ18ad3ab5a668481ce02b83e7395059f0")
ACCOUNT = AccountSid("AC25e16e9a716a4a1786a7c83f58e30482")
CALL = CallSid("CA5b6b0ecf1e7a4d3b7e0c9a1f2d3e4f5a")
ULAW_20MS = bytes(range(96, 256))  # 160 bytes


def _doc(text: str) -> str:
    return text.replace("MZ…", STREAM).replace("AC…", ACCOUNT).replace("CA…", CALL)


# Shapes exactly as twilio-media-streams.md §1 shows them, with the elided SIDs filled in.
DOC_CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
DOC_START = _doc(
    '{"event":"start","sequenceNumber":"1","streamSid":"MZ…",'
    '"start":{"streamSid":"MZ…","accountSid":"AC…","callSid":"CA…",'
    '"tracks":["inbound"],"customParameters":{"token":"tok","tenant":"acme"},'
    '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}'
)
DOC_MEDIA = _doc(
    '{"event":"media","sequenceNumber":"4","streamSid":"MZ…",'
    '"media":{"track":"inbound","chunk":"2","timestamp":"40","payload":"<base64 mu-law>"}}'
).replace("<base64 mu-law>", base64.b64encode(ULAW_20MS).decode())
DOC_DTMF = _doc('{"event":"dtmf","streamSid":"MZ…","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}')
DOC_MARK = _doc('{"event":"mark","sequenceNumber":"9","streamSid":"MZ…","mark":{"name":"r12:7"}}')
DOC_STOP = _doc('{"event":"stop","sequenceNumber":"512","streamSid":"MZ…","stop":{"accountSid":"AC…","callSid":"CA…"}}')

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=10,
)
wire_keys = st.sampled_from(
    ["sequenceNumber", "streamSid", "start", "media", "mark", "dtmf", "stop", "protocol", "version"]
)


def _media_dict(**overrides: Any) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(DOC_MEDIA)
    for key, value in overrides.items():
        if key.startswith("media."):
            msg["media"][key.removeprefix("media.")] = value
        else:
            msg[key] = value
    return msg


def test_documented_connected_parses() -> None:
    """The §1.1 connected example parses into Connected with its protocol and version."""
    assert parse_twilio_message(DOC_CONNECTED) == Connected(protocol="Call", version="1.0.0")


def test_documented_start_parses() -> None:
    """The §1.2 start example parses with string counters converted and parameters kept."""
    start = parse_twilio_message(DOC_START)
    assert isinstance(start, Start)
    assert start.sequence_number == 1
    assert (start.stream_sid, start.account_sid, start.call_sid) == (STREAM, ACCOUNT, CALL)
    assert start.tracks == ("inbound",)
    assert dict(start.custom_parameters) == {"token": "tok", "tenant": "acme"}
    assert start.media_format == MediaFormat(encoding="audio/x-mulaw", sample_rate_hz=8000, channels=1)


def test_documented_media_parses() -> None:
    """The §1.3 media example parses with chunk/timestamp as ints and the payload decoded to μ-law."""
    assert parse_twilio_message(DOC_MEDIA) == Media(
        sequence_number=4, stream_sid=STREAM, track="inbound", chunk=2, timestamp_ms=40, payload=ULAW_20MS
    )


def test_documented_dtmf_parses() -> None:
    """The §1.4 dtmf example parses, keeping its inbound_track track."""
    assert parse_twilio_message(DOC_DTMF) == Dtmf(
        sequence_number=5, stream_sid=STREAM, track="inbound_track", digit="1"
    )


def test_documented_mark_parses() -> None:
    """The §1.5 mark echo example parses with its name."""
    expected = Mark(sequence_number=9, stream_sid=STREAM, name=MarkName("r12:7"))
    assert parse_twilio_message(DOC_MARK) == expected


def test_documented_stop_parses() -> None:
    """The §1.6 stop example parses with account and call SIDs."""
    assert parse_twilio_message(DOC_STOP) == Stop(
        sequence_number=512, stream_sid=STREAM, account_sid=ACCOUNT, call_sid=CALL
    )


def test_bytes_input_parses_like_text() -> None:
    """A UTF-8 bytes frame parses the same as the text frame."""
    assert parse_twilio_message(DOC_MARK.encode()) == parse_twilio_message(DOC_MARK)


def test_counters_accept_plain_integers() -> None:
    """sequenceNumber, chunk and timestamp are accepted as JSON integers as well as strings."""
    msg = _media_dict(sequenceNumber=7, **{"media.chunk": 3, "media.timestamp": 60})
    media = parse_twilio_message(json.dumps(msg))
    assert isinstance(media, Media)
    assert (media.sequence_number, media.chunk, media.timestamp_ms) == (7, 3, 60)


def test_start_stream_sid_may_come_from_start_object_only() -> None:
    """A start without a top-level streamSid takes the SID from start.streamSid."""
    msg = json.loads(DOC_START)
    del msg["streamSid"]
    start = parse_twilio_message(json.dumps(msg))
    assert isinstance(start, Start)
    assert start.stream_sid == STREAM


def test_start_without_custom_parameters_gives_empty_mapping() -> None:
    """A start with no customParameters object parses with an empty mapping."""
    msg = json.loads(DOC_START)
    del msg["start"]["customParameters"]
    start = parse_twilio_message(json.dumps(msg))
    assert isinstance(start, Start)
    assert dict(start.custom_parameters) == {}


def test_start_custom_parameters_are_read_only() -> None:
    """The parsed customParameters cannot be modified by whoever receives the event."""
    start = parse_twilio_message(DOC_START)
    assert isinstance(start, Start)
    with pytest.raises(TypeError):
        start.custom_parameters["token"] = "forged"  # type: ignore[index]


def test_extra_fields_are_tolerated() -> None:
    """Unknown fields at any level are ignored rather than rejected."""
    msg = json.loads(DOC_START)
    msg["newTopLevel"] = {"x": 1}
    msg["start"]["newInner"] = [1, 2]
    msg["start"]["mediaFormat"]["bitDepth"] = 8
    assert parse_twilio_message(json.dumps(msg)) == parse_twilio_message(DOC_START)
    media = _media_dict(extra=True, **{"media.extra": "y"})
    assert parse_twilio_message(json.dumps(media)) == parse_twilio_message(DOC_MEDIA)


def test_unknown_event_is_returned_not_raised() -> None:
    """An event this module does not know comes back as UnknownEvent with its top-level keys."""
    event = parse_twilio_message('{"event":"transcription","streamSid":"MZ1","text":"hi"}')
    assert event == UnknownEvent(event="transcription", fields=("event", "streamSid", "text"))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not JSON"),
        ("{not json", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        ('"\ud800"', "unpaired surrogates"),
        ("[1, 2]", "not a JSON object"),
        ('"media"', "not a JSON object"),
        ('{"streamSid":"MZ1"}', "no 'event'"),
        ('{"event":5}', "'event' must be a string"),
        ('{"event":null}', "no 'event'"),
        ('{"event":"connected","protocol":"Call"}', "version"),
        ('{"event":"start","sequenceNumber":"1","streamSid":"MZ1"}', "start"),
        ('{"event":"mark","sequenceNumber":"9","streamSid":"MZ1","mark":{}}', "mark.name"),
        ('{"event":"mark","sequenceNumber":"9","streamSid":"MZ1"}', "mark"),
        ('{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ1","dtmf":{"track":"inbound_track"}}', "digit"),
        ('{"event":"dtmf","sequenceNumber":"x","streamSid":"MZ1","dtmf":{"track":"t","digit":"1"}}', "sequenceNumber"),
        ('{"event":"stop","sequenceNumber":"512","streamSid":"MZ1","stop":{"callSid":"CA1"}}', "stop.accountSid"),
        ('{"event":"stop","sequenceNumber":"512","stop":{"accountSid":"AC1","callSid":"CA1"}}', "streamSid"),
    ],
)
def test_bad_messages_raise_protocol_error_naming_the_problem(text: str | bytes, fragment: str) -> None:
    """Malformed or incomplete messages raise TwilioProtocolError whose message names what is wrong."""
    with pytest.raises(TwilioProtocolError, match=fragment):
        parse_twilio_message(text)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"media.payload": "abc"}, "media.payload"),
        ({"media.payload": "AAAA\n"}, "media.payload"),
        ({"media.payload": "AA=A"}, "media.payload"),
        ({"media.payload": "ÄÄÄÄ"}, "media.payload"),
        ({"media.payload": 12}, "media.payload"),
        ({"media.chunk": "two"}, "media.chunk"),
        ({"media.chunk": "-1"}, "media.chunk"),
        ({"media.timestamp": 4.5}, "media.timestamp"),
        ({"media.timestamp": True}, "media.timestamp"),
        ({"media.timestamp": "1" * 40}, "media.timestamp"),
        ({"sequenceNumber": -3}, "sequenceNumber"),
        ({"sequenceNumber": "٣"}, "sequenceNumber"),
        ({"streamSid": ""}, "streamSid"),
        ({"streamSid": 12}, "streamSid"),
        ({"media.track": None}, "media.track"),
        ({"media": "payload"}, "media"),
    ],
)
def test_bad_media_fields_raise_protocol_error(overrides: dict[str, Any], fragment: str) -> None:
    """Each ill-typed or missing media field, including non-strict base64, is named in the error."""
    with pytest.raises(TwilioProtocolError, match=fragment):
        parse_twilio_message(json.dumps(_media_dict(**overrides)))


def test_missing_media_field_is_named() -> None:
    """A media message without its payload says the payload is missing."""
    msg = _media_dict()
    del msg["media"]["payload"]
    with pytest.raises(TwilioProtocolError, match=r"media\.payload: Field required"):
        parse_twilio_message(json.dumps(msg))


def test_start_with_disagreeing_stream_sids_is_rejected() -> None:
    """A start whose top-level streamSid differs from start.streamSid is a protocol error."""
    msg = json.loads(DOC_START)
    msg["start"]["streamSid"] = "MZother"
    with pytest.raises(TwilioProtocolError, match="differ"):
        parse_twilio_message(json.dumps(msg))


def test_errors_do_not_echo_custom_parameter_values() -> None:
    """A rejected start does not put its (secret) customParameters values into the error text."""
    msg = json.loads(DOC_START)
    msg["start"]["customParameters"] = {"token": "SECRET-TOKEN-VALUE", "n": 5}
    with pytest.raises(TwilioProtocolError) as info:
        parse_twilio_message(json.dumps(msg))
    assert "customParameters" in str(info.value)
    assert "SECRET-TOKEN-VALUE" not in str(info.value)


@settings(max_examples=200)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_only_raises_protocol_error(text: str | bytes) -> None:
    """Any text or bytes either parses or raises TwilioProtocolError, never another exception."""
    with contextlib.suppress(TwilioProtocolError):
        parse_twilio_message(text)


@settings(max_examples=200)
@given(json_values)
def test_arbitrary_json_only_raises_protocol_error(value: Any) -> None:
    """Any JSON document either parses or raises TwilioProtocolError, never another exception."""
    with contextlib.suppress(TwilioProtocolError):
        parse_twilio_message(json.dumps(value))


@settings(max_examples=200)
@given(
    st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "other"]),
    st.dictionaries(wire_keys | st.text(max_size=8), json_values, max_size=6),
)
def test_known_events_with_random_fields_only_raise_protocol_error(event: str, fields: dict[str, Any]) -> None:
    """Known event names with random field values parse or raise TwilioProtocolError, nothing else."""
    with contextlib.suppress(TwilioProtocolError):
        parse_twilio_message(json.dumps({**fields, "event": event}))


counter_values = st.one_of(
    st.integers(min_value=-5, max_value=10**6),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from(["", "x", "1.5", " 1", "+1", "0x10", "٣", None, True, 2.0]),
)
payload_values = st.one_of(
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["", "abc", "AA==\n", "@@@@", "AAAA====", 5, None]),
)


@settings(max_examples=200)
@given(
    seq=counter_values,
    chunk=counter_values,
    timestamp=counter_values,
    payload=payload_values,
    track=st.sampled_from(["inbound", "outbound", 1, None]),
    sid=st.sampled_from([STREAM, "", 3, None]),
)
def test_media_fast_path_agrees_with_pydantic_model(
    seq: Any, chunk: Any, timestamp: Any, payload: Any, track: Any, sid: Any
) -> None:
    """The hand-written media fast path accepts exactly what MediaWire accepts, with equal results."""
    text = json.dumps(
        {
            "event": "media",
            "sequenceNumber": seq,
            "streamSid": sid,
            "media": {"track": track, "chunk": chunk, "timestamp": timestamp, "payload": payload},
        }
    )
    try:
        expected: Media | None = MediaWire.model_validate_json(text).to_event()
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(TwilioProtocolError):
            parse_twilio_message(text)
    else:
        assert parse_twilio_message(text) == expected


@settings(max_examples=200)
@given(
    seq=st.integers(min_value=0, max_value=2**40),
    chunk=st.integers(min_value=1, max_value=2**40),
    timestamp_ms=st.integers(min_value=0, max_value=2**40),
    ulaw=st.binary(max_size=400),
)
def test_inbound_media_builder_round_trips(seq: int, chunk: int, timestamp_ms: int, ulaw: bytes) -> None:
    """inbound_media_message output parses back to the same counters and μ-law bytes."""
    text = inbound_media_message(
        sequence_number=seq, stream_sid=STREAM, chunk=chunk, timestamp_ms=timestamp_ms, ulaw=ulaw
    )
    assert parse_twilio_message(text) == Media(
        sequence_number=seq,
        stream_sid=STREAM,
        track="inbound",
        chunk=chunk,
        timestamp_ms=timestamp_ms,
        payload=ulaw,
    )


def test_emulator_builders_round_trip() -> None:
    """Each emulator-side builder produces a message the parser reads back to the same values."""
    params = {"token": "a&b<c", "from": "+15550001111"}
    assert parse_twilio_message(connected_message()) == Connected(protocol="Call", version="1.0.0")
    start = parse_twilio_message(
        start_message(
            sequence_number=1, stream_sid=STREAM, account_sid=ACCOUNT, call_sid=CALL, custom_parameters=params
        )
    )
    assert start == Start(
        sequence_number=1,
        stream_sid=STREAM,
        account_sid=ACCOUNT,
        call_sid=CALL,
        tracks=("inbound",),
        custom_parameters=params,
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
    )
    assert parse_twilio_message(mark_echo_message(sequence_number=9, stream_sid=STREAM, name="r1:3")) == Mark(
        sequence_number=9, stream_sid=STREAM, name=MarkName("r1:3")
    )
    assert parse_twilio_message(dtmf_message(sequence_number=5, stream_sid=STREAM, digit="#")) == Dtmf(
        sequence_number=5, stream_sid=STREAM, track="inbound_track", digit="#"
    )
    assert parse_twilio_message(
        stop_message(sequence_number=512, stream_sid=STREAM, account_sid=ACCOUNT, call_sid=CALL)
    ) == Stop(sequence_number=512, stream_sid=STREAM, account_sid=ACCOUNT, call_sid=CALL)


def test_start_builder_can_describe_an_unsupported_format() -> None:
    """start_message carries a non-default mediaFormat so the gateway's refusal can be tested."""
    text = start_message(
        sequence_number=1,
        stream_sid=STREAM,
        account_sid=ACCOUNT,
        call_sid=CALL,
        custom_parameters={},
        encoding="audio/x-l16",
        sample_rate_hz=16000,
        channels=2,
    )
    start = parse_twilio_message(text)
    assert isinstance(start, Start)
    assert start.media_format == MediaFormat("audio/x-l16", 16000, 2)


def test_emulator_builders_send_counters_as_strings() -> None:
    """Emulator messages carry sequenceNumber, chunk and timestamp as strings, as Twilio does (§1.3)."""
    media = json.loads(
        inbound_media_message(sequence_number=4, stream_sid=STREAM, chunk=2, timestamp_ms=40, ulaw=b"\x7f")
    )
    assert media["sequenceNumber"] == "4"
    assert (media["media"]["chunk"], media["media"]["timestamp"]) == ("2", "40")
    start = json.loads(
        start_message(sequence_number=1, stream_sid=STREAM, account_sid=ACCOUNT, call_sid=CALL, custom_parameters={})
    )
    assert start["sequenceNumber"] == "1"
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


@settings(max_examples=100)
@given(ulaw=st.binary(max_size=2000), name=st.text(max_size=40))
def test_outbound_builders_validate_under_strict_models(ulaw: bytes, name: str) -> None:
    """media/mark/clear builders produce exactly the §2 shapes, carrying the given payload and name."""
    media = parse_gateway_message(media_message(STREAM, ulaw))
    assert isinstance(media, OutboundMedia)
    assert (media.stream_sid, media.ulaw) == (STREAM, ulaw)
    mark = parse_gateway_message(mark_message(STREAM, name))
    assert isinstance(mark, OutboundMark)
    assert (mark.stream_sid, mark.name) == (STREAM, name)
    clear = parse_gateway_message(clear_message(STREAM))
    assert isinstance(clear, OutboundClear)
    assert clear.stream_sid == STREAM


def test_outbound_media_has_nothing_but_documented_fields() -> None:
    """media_message is compact JSON with only event, streamSid and media.payload."""
    text = media_message(STREAM, b"\xff\x7f")
    assert text == '{"event":"media","streamSid":"' + STREAM + '","media":{"payload":"/38="}}'


@pytest.mark.parametrize(
    "build", [lambda: media_message("", b"\xff"), lambda: mark_message("", "m"), lambda: clear_message("")]
)
def test_outbound_builders_refuse_empty_stream_sid(build: Any) -> None:
    """Building an outbound message without a streamSid (before start, P10) is refused as our own bug."""
    with pytest.raises(CallStateError, match="streamSid"):
        build()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"event":"media","streamSid":"MZ1","media":{"payload":"AA==","track":"inbound"}}', "track"),
        (
            '{"event":"media","streamSid":"MZ1","sequenceNumber":"1","media":{"payload":"AA=="}}',
            "sequenceNumber",
        ),
        ('{"event":"media","media":{"payload":"AA=="}}', "streamSid"),
        ('{"event":"media","streamSid":"","media":{"payload":"AA=="}}', "streamSid"),
        ('{"event":"media","streamSid":"MZ1","media":{"payload":"AA="}}', "payload"),
        ('{"event":"media","streamSid":"MZ1","media":{}}', "payload"),
        ('{"event":"media","streamSid":"MZ1","media":{"payload":5}}', "payload"),
        ('{"event":"mark","streamSid":"MZ1"}', "mark"),
        ('{"event":"mark","streamSid":"MZ1","mark":{"name":"a","x":1}}', "mark.x"),
        ('{"event":"mark","streamSid":"MZ1","mark":{"name":7}}', "mark.name"),
        ('{"event":"clear","streamSid":"MZ1","extra":true}', "extra"),
        ('{"event":"clear"}', "streamSid"),
        ('{"event":"clear","streamSid":5}', "streamSid"),
        ('{"event":"dtmf","streamSid":"MZ1"}', "only 'media', 'mark' and 'clear'"),
        ('{"event":"stop","streamSid":"MZ1"}', "only 'media', 'mark' and 'clear'"),
        ('{"streamSid":"MZ1"}', "only 'media', 'mark' and 'clear'"),
        ('{"event":["clear"],"streamSid":"MZ1"}', "only 'media', 'mark' and 'clear'"),
        ("[]", "not a JSON object"),
        ("clear", "not JSON"),
        (b'{"event":"clear","streamSid":"MZ1"}', "binary frame"),
    ],
)
def test_strict_outbound_models_reject_anything_else(text: str | bytes, fragment: str) -> None:
    """parse_gateway_message refuses anything but the exact §2 shapes, naming the offending part."""
    with pytest.raises(TwilioProtocolError, match=fragment):
        parse_gateway_message(text)


@settings(max_examples=200)
@given(json_values)
def test_gateway_parser_only_raises_protocol_error(value: Any) -> None:
    """Any JSON value given to parse_gateway_message is accepted or raises TwilioProtocolError only."""
    with contextlib.suppress(TwilioProtocolError):
        parse_gateway_message(json.dumps(value))
