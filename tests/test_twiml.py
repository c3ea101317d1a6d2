"""TwiML for the voice webhook: <Connect><Stream> with parameters, and the stream URL from the public URL."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gateway.errors import ConfigError
from gateway.wire.twiml import MAX_PARAMETER_CHARS, connect_stream_twiml, stream_url_from_public_url

STREAM_URL = "wss://voice.example.com/twilio/media"
CALLBACK_URL = "https://voice.example.com/twilio/stream-status"


def _stream(twiml: str) -> ET.Element:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    [connect] = list(root)
    assert connect.tag == "Connect"
    [stream] = list(connect)
    assert stream.tag == "Stream"
    return stream


def test_connect_stream_structure() -> None:
    """The document is Response > Connect > Stream with the url, callback and one Parameter per entry."""
    twiml = connect_stream_twiml(STREAM_URL, {"token": "t0k", "tenant": "acme"}, CALLBACK_URL)
    stream = _stream(twiml)
    assert stream.attrib == {
        "url": STREAM_URL,
        "statusCallback": CALLBACK_URL,
        "statusCallbackMethod": "POST",
    }
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "token", "value": "t0k"}),
        ("Parameter", {"name": "tenant", "value": "acme"}),
    ]


def test_nothing_follows_connect() -> None:
    """No verb follows </Connect>, so the call ends when the media socket closes."""
    twiml = connect_stream_twiml(STREAM_URL, {"token": "x"}, CALLBACK_URL)
    root = ET.fromstring(twiml)
    assert [child.tag for child in root] == ["Connect"]
    assert twiml.rstrip().endswith("</Connect></Response>")


def test_without_status_callback_has_no_callback_attributes() -> None:
    """Without a status callback URL the Stream carries only its url."""
    stream = _stream(connect_stream_twiml(STREAM_URL, {}))
    assert stream.attrib == {"url": STREAM_URL}
    assert list(stream) == []


def test_parameter_values_are_xml_escaped() -> None:
    """Values with &, <, > and quotes are escaped in the XML and read back unchanged."""
    value = "a&b<c>d\"e'f"
    twiml = connect_stream_twiml(STREAM_URL, {"note": value})
    assert "a&amp;b&lt;c" in twiml
    [param] = list(_stream(twiml))
    assert param.attrib == {"name": "note", "value": value}


def test_ws_url_is_allowed_for_local_use() -> None:
    """A ws:// stream URL (loopback tests with the caller emulator) is accepted."""
    assert _stream(connect_stream_twiml("ws://127.0.0.1:8080/twilio/media", {})).get("url") == (
        "ws://127.0.0.1:8080/twilio/media"
    )


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://voice.example.com/twilio/media", "wss://"),
        ("http://voice.example.com/twilio/media", "wss://"),
        ("voice.example.com/twilio/media", "wss://"),
        ("wss:///twilio/media", "no host"),
        ("wss://voice.example.com/twilio/media?token=abc", "query string"),
        ("wss://voice.example.com/twilio/media?", "query string"),
        ("wss://voice.example.com/twilio/media#x", "query string or fragment"),
        ("wss://voice.example.com:port/twilio/media", "not a valid URL"),
    ],
)
def test_bad_stream_urls_are_config_errors(url: str, fragment: str) -> None:
    """A stream URL Twilio would refuse (not wss, query string, no host) raises ConfigError saying why."""
    with pytest.raises(ConfigError, match=fragment):
        connect_stream_twiml(url, {})


@pytest.mark.parametrize("callback", ["/twilio/stream-status", "wss://voice.example.com/cb", "https://"])
def test_bad_status_callback_is_config_error(callback: str) -> None:
    """A statusCallback that is not an absolute http(s) URL raises ConfigError."""
    with pytest.raises(ConfigError, match="statusCallback"):
        connect_stream_twiml(STREAM_URL, {}, callback)


def test_parameter_length_limit() -> None:
    """Name plus value of 499 characters is accepted; 500 is refused (twilio-media-streams.md §3.1: under 500)."""
    name = "token"
    longest_ok = "v" * (MAX_PARAMETER_CHARS - 1 - len(name))
    [param] = list(_stream(connect_stream_twiml(STREAM_URL, {name: longest_ok})))
    assert param.get("value") == longest_ok
    with pytest.raises(ValueError, match="under 500"):
        connect_stream_twiml(STREAM_URL, {name: longest_ok + "v"})


def test_empty_parameter_name_is_refused() -> None:
    """A parameter with an empty name is refused."""
    with pytest.raises(ValueError, match="empty"):
        connect_stream_twiml(STREAM_URL, {"": "x"})


def test_non_text_parameter_value_is_refused() -> None:
    """A parameter value that is not a string is refused rather than stringified."""
    with pytest.raises(ValueError, match="strings"):
        connect_stream_twiml(STREAM_URL, {"n": 5})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("public_url", "path", "expected"),
    [
        ("https://voice.example.com", "/twilio/media", "wss://voice.example.com/twilio/media"),
        ("https://voice.example.com/", "/twilio/media", "wss://voice.example.com/twilio/media"),
        ("http://127.0.0.1:8080", "/twilio/media", "ws://127.0.0.1:8080/twilio/media"),
        ("https://voice.example.com:8443/gw/", "twilio/media", "wss://voice.example.com:8443/gw/twilio/media"),
        ("HTTPS://Voice.Example.com", "/media", "wss://Voice.Example.com/media"),
        ("https://[::1]:9000", "/twilio/media", "wss://[::1]:9000/twilio/media"),
    ],
)
def test_stream_url_from_public_url(public_url: str, path: str, expected: str) -> None:
    """https maps to wss and http to ws, host and port kept, base path and path joined by one slash."""
    assert stream_url_from_public_url(public_url, path) == expected


def test_stream_url_from_public_url_default_path() -> None:
    """The default path is the /twilio/media route."""
    assert stream_url_from_public_url("https://voice.example.com") == STREAM_URL


@pytest.mark.parametrize(
    ("public_url", "fragment"),
    [
        ("ftp://voice.example.com", "https:// or http://"),
        ("wss://voice.example.com", "https:// or http://"),
        ("voice.example.com", "https:// or http://"),
        ("https://", "no host"),
        ("https://voice.example.com/?x=1", "query string"),
        ("https://voice.example.com/#top", "fragment"),
        ("https://user:pw@voice.example.com", "credentials"),
        ("https://voice.example.com:99999", "not a valid URL"),
    ],
)
def test_bad_public_urls_are_config_errors(public_url: str, fragment: str) -> None:
    """A public URL that cannot give a valid stream URL raises ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=fragment):
        stream_url_from_public_url(public_url)


def test_derived_stream_url_is_accepted_by_twiml_builder() -> None:
    """The derived stream URL goes straight into connect_stream_twiml."""
    url = stream_url_from_public_url("https://voice.example.com:8443/base")
    assert _stream(connect_stream_twiml(url, {"token": "t"})).get("url") == url
