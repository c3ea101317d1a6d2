"""TwiML for the voice webhook, built with the ``twilio`` SDK (twilio-media-streams.md §3.1–§3.3, §3.7).

Owns: the ``<Connect><Stream>`` document and the stream URL derived from the public base URL. Nothing
follows ``</Connect>``: when the media socket closes, the call ends (§3.2: ``<Connect>`` blocks until
then), so no path leaves a caller on a silent line.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit, urlunsplit

from twilio.twiml.voice_response import Connect, VoiceResponse

from gateway.errors import ConfigError

__all__ = ["MAX_PARAMETER_CHARS", "busy_twiml", "connect_stream_twiml", "dial_twiml", "stream_url_from_public_url"]

# §3.1: each <Parameter>'s name plus value must be under 500 characters.
MAX_PARAMETER_CHARS = 500

_STREAM_SCHEMES = ("wss", "ws")  # Twilio accepts only wss (error 31922); ws is for local loopback tests
_CALLBACK_SCHEMES = ("https", "http")
_WS_SCHEME_FOR = {"https": "wss", "http": "ws"}


def _split(url: str, what: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError as exc:
        raise ConfigError(f"{what} is not a valid URL ({exc}): {url!r}") from None
    return parts


def _check_stream_url(stream_url: str) -> None:
    parts = _split(stream_url, "stream URL")
    if parts.scheme not in _STREAM_SCHEMES:
        raise ConfigError(f"stream URL must start with wss:// (or ws:// for local tests), got {stream_url!r}")
    if not parts.hostname:
        raise ConfigError(f"stream URL has no host: {stream_url!r}")
    if "?" in stream_url or "#" in stream_url:
        # §3.1 / P9: a query string breaks the handshake (31920); per-call data goes in <Parameter>.
        raise ConfigError(f"stream URL must not have a query string or fragment: {stream_url!r}")


def _check_callback_url(url: str) -> None:
    parts = _split(url, "stream statusCallback")
    if parts.scheme not in _CALLBACK_SCHEMES or not parts.hostname:
        raise ConfigError(f"stream statusCallback must be an absolute http(s) URL, got {url!r}")  # §3.1


def _check_parameter(name: str, value: str) -> None:
    if not isinstance(name, str) or not isinstance(value, str):
        raise ValueError(f"<Parameter> name and value must be strings, got {name!r}: {type(value).__name__}")
    if not name:
        raise ValueError("<Parameter> name must not be empty")
    if len(name) + len(value) >= MAX_PARAMETER_CHARS:
        raise ValueError(
            f"<Parameter> {name!r}: name plus value is {len(name) + len(value)} characters; "
            f"Twilio requires under {MAX_PARAMETER_CHARS}"
        )


def connect_stream_twiml(
    stream_url: str,
    parameters: Mapping[str, str],
    status_callback_url: str | None = None,
) -> str:
    """``<Response><Connect><Stream url=…><Parameter …/>…</Stream></Connect></Response>``, nothing after.

    Raises ConfigError for a stream URL that is not ws(s) or has a query string, or a callback URL
    that is not absolute http(s); ValueError for a parameter Twilio would refuse.
    """
    _check_stream_url(stream_url)
    if status_callback_url is not None:
        _check_callback_url(status_callback_url)
    for name, value in parameters.items():
        _check_parameter(name, value)

    response = VoiceResponse()
    connect = Connect()
    if status_callback_url is None:
        stream = connect.stream(url=stream_url)
    else:
        stream = connect.stream(url=stream_url, status_callback=status_callback_url, status_callback_method="POST")
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())


def stream_url_from_public_url(public_url: str, path: str = "/twilio/media") -> str:
    """The media socket URL for a public base URL: https→wss, http→ws, same host and port, ``path`` joined.

    ``https://voice.example.com/gw`` with the default path gives ``wss://voice.example.com/gw/twilio/media``.
    """
    parts = _split(public_url, "public URL")
    scheme = _WS_SCHEME_FOR.get(parts.scheme)
    if scheme is None:
        raise ConfigError(f"public URL must start with https:// or http://, got {public_url!r}")
    if not parts.hostname:
        raise ConfigError(f"public URL has no host: {public_url!r}")
    if "?" in public_url or "#" in public_url:
        raise ConfigError(f"public URL must not have a query string or fragment: {public_url!r}")
    if "@" in parts.netloc:
        raise ConfigError("public URL must not carry credentials (user:password@host)")
    joined = parts.path.rstrip("/") + "/" + path.lstrip("/")
    url = urlunsplit((scheme, parts.netloc, joined, "", ""))
    _check_stream_url(url)
    return url


def dial_twiml(target: str, *, caller_id: str | None = None) -> str:
    """``<Dial>`` to an E.164 number or a ``sip:`` URI: the TwiML a transfer moves the live call to.

    docs/twilio-media-streams.md "REST call update": updating a call with new TwiML ends its ``<Connect>``
    (Twilio sends ``stop`` on the stream) and runs the new document.
    """
    response = VoiceResponse()
    dial = response.dial(caller_id=caller_id) if caller_id else response.dial()
    if target.startswith("sip:"):
        dial.sip(target)
    else:
        dial.number(target)
    return str(response)


def busy_twiml(message: str, *, overflow_number: str = "") -> str:
    """The answer to a call the gateway has no room for: dial the overflow number if set, else say why and
    hang up — never a silent line."""
    if overflow_number:
        return dial_twiml(overflow_number)
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)
