"""X-Twilio-Signature checks for the voice webhook and the Media Stream WebSocket upgrade."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import HMAC_SHA256

from gateway.errors import ConfigError
from gateway.wire.twilio_signature import sign_request, webhook_signature_ok, websocket_signature_ok

TOKEN = "12345678901234567890123456789012"
WEBHOOK_URL = "https://voice.example.com/twilio/voice"
WS_URL = "wss://voice.example.com/twilio/media"
PARAMS = {
    "CallSid": "CA5b6b0ecf1e7a4d3b7e0c9a1f2d3e4f5a",
    "AccountSid": "AC25e16e9a716a4a1786a7c83f58e30482",
    "From": "+15550001111",
    "To": "+15550002222",
    "CallStatus": "ringing",
}


def _reference_signature(token: str, url: str, pairs: list[tuple[str, str]]) -> str:
    """twilio-media-streams.md §3.6 by hand.

    base64(HMAC-SHA1(token, url + name+value for each param sorted by name, then value)).
    """
    data = url + "".join(name + value for name, value in sorted(pairs))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_sign_request_matches_documented_algorithm() -> None:
    """sign_request computes the signature exactly as §3.6 describes it."""
    expected = _reference_signature(TOKEN, WEBHOOK_URL, list(PARAMS.items()))
    assert sign_request(TOKEN, WEBHOOK_URL, PARAMS) == expected


def test_good_webhook_signature_passes() -> None:
    """A signature made over the URL and every POST parameter validates."""
    signature = sign_request(TOKEN, WEBHOOK_URL, PARAMS)
    assert webhook_signature_ok(TOKEN, WEBHOOK_URL, PARAMS, signature)


def test_tampered_parameter_fails() -> None:
    """Changing one parameter value after signing makes the signature fail."""
    signature = sign_request(TOKEN, WEBHOOK_URL, PARAMS)
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, {**PARAMS, "From": "+15559999999"}, signature)


def test_added_or_dropped_parameter_fails() -> None:
    """A parameter added after signing, or one left out of the check, makes the signature fail."""
    signature = sign_request(TOKEN, WEBHOOK_URL, PARAMS)
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, {**PARAMS, "Extra": "1"}, signature)
    dropped = {k: v for k, v in PARAMS.items() if k != "To"}
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, dropped, signature)


def test_wrong_url_fails() -> None:
    """A signature for another URL (other path, or http instead of https) fails."""
    signature = sign_request(TOKEN, WEBHOOK_URL, PARAMS)
    assert not webhook_signature_ok(TOKEN, "https://voice.example.com/twilio/other", PARAMS, signature)
    assert not webhook_signature_ok(TOKEN, "http://voice.example.com/twilio/voice", PARAMS, signature)


def test_explicit_default_port_is_tolerated() -> None:
    """A URL written with :443 validates a signature made without it (the SDK tries both)."""
    signature = sign_request(TOKEN, WEBHOOK_URL, PARAMS)
    assert webhook_signature_ok(TOKEN, "https://voice.example.com:443/twilio/voice", PARAMS, signature)


def test_wrong_token_fails() -> None:
    """A signature made with another auth token fails."""
    signature = sign_request("another-token-another-token-0000", WEBHOOK_URL, PARAMS)
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, PARAMS, signature)


@pytest.mark.parametrize("signature", [None, "", "not-base64!", "x" * 28])
def test_missing_or_garbage_signature_fails(signature: str | None) -> None:
    """A missing, empty or garbage signature header fails without raising."""
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, PARAMS, signature)
    assert not websocket_signature_ok(TOKEN, WS_URL, signature)


def test_repeated_post_keys_are_all_signed() -> None:
    """With a repeated form key every value counts: all values validate, a missing one fails."""
    form = MultiDict([*PARAMS.items(), ("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "answered")])
    signature = sign_request(TOKEN, WEBHOOK_URL, form)
    assert signature == _reference_signature(TOKEN, WEBHOOK_URL, list(form.items()))
    assert webhook_signature_ok(TOKEN, WEBHOOK_URL, MultiDictProxy(form), signature)
    one_value = MultiDict([*PARAMS.items(), ("StatusCallbackEvent", "ringing")])
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, one_value, signature)


def test_non_text_form_value_fails() -> None:
    """A form carrying a non-text value (e.g. a file upload) is not a Twilio webhook and fails."""
    form: MultiDict[object] = MultiDict([*PARAMS.items(), ("Upload", b"bytes")])
    signature = sign_request(TOKEN, WEBHOOK_URL, PARAMS)
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, form, signature)


def test_good_websocket_signature_passes() -> None:
    """A signature over the wss URL with no parameters, as Twilio signs the upgrade, validates."""
    signature = sign_request(TOKEN, WS_URL, {})
    assert signature == _reference_signature(TOKEN, WS_URL, [])
    assert websocket_signature_ok(TOKEN, WS_URL, signature)


def test_websocket_signature_over_https_variant_fails() -> None:
    """A signature over the https:// form of the stream URL does not validate the wss:// URL."""
    signature = sign_request(TOKEN, "https://voice.example.com/twilio/media", {})
    assert not websocket_signature_ok(TOKEN, WS_URL, signature)


def test_websocket_signature_with_wrong_token_or_path_fails() -> None:
    """The upgrade signature fails for another token or another path."""
    assert not websocket_signature_ok(TOKEN, WS_URL, sign_request("x" * 32, WS_URL, {}))
    other = sign_request(TOKEN, "wss://voice.example.com/twilio/other", {})
    assert not websocket_signature_ok(TOKEN, WS_URL, other)


def test_websocket_check_refuses_http_url() -> None:
    """Passing the http(s) URL the server sees, instead of the wss URL from the TwiML, is a ConfigError."""
    with pytest.raises(ConfigError, match="wss://"):
        websocket_signature_ok(TOKEN, "https://voice.example.com/twilio/media", "sig")


def test_empty_auth_token_is_config_error() -> None:
    """An empty auth token is refused, since anyone could forge a signature with an empty key."""
    with pytest.raises(ConfigError, match="auth token"):
        forged = _reference_signature("", WEBHOOK_URL, list(PARAMS.items()))
        webhook_signature_ok("", WEBHOOK_URL, PARAMS, forged)
    with pytest.raises(ConfigError, match="auth token"):
        websocket_signature_ok("", WS_URL, _reference_signature("", WS_URL, []))
    with pytest.raises(ConfigError, match="auth token"):
        sign_request("", WS_URL, {})


SHARED_KEY = "shared-key-secret-0123456789abcdef"
RULE_HEADER = "key=webhooks_sharedkey_01j8example,algorithm=HMAC_SHA256"


def test_query_string_is_signed_as_part_of_the_url() -> None:
    """The URL signed is the full one, query included and still encoded: another query, or the same one
    decoded, fails."""
    url = WEBHOOK_URL + "?line=a&to=client%3Aalice"
    signature = sign_request(TOKEN, url, PARAMS)
    assert signature == _reference_signature(TOKEN, url, list(PARAMS.items()))
    assert webhook_signature_ok(TOKEN, url, PARAMS, signature)
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, PARAMS, signature)
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL + "?line=a&to=client:alice", PARAMS, signature)


def test_shared_key_mode_uses_the_key_and_algorithm_the_header_names() -> None:
    """With the Webhooks Rule header, the SharedKey and HMAC-SHA256 validate; the auth token does not, nor does
    the shared-key signature without the header, nor any signature when no shared key is configured."""
    signature = sign_request(SHARED_KEY, WEBHOOK_URL, PARAMS, algorithm=HMAC_SHA256)
    reference = base64.b64encode(
        hmac.new(
            SHARED_KEY.encode(),
            (WEBHOOK_URL + "".join(k + v for k, v in sorted(PARAMS.items()))).encode(),
            hashlib.sha256,
        ).digest()
    ).decode()
    assert signature == reference
    ok = webhook_signature_ok
    assert ok(TOKEN, WEBHOOK_URL, PARAMS, signature, settings_header=RULE_HEADER, shared_key=SHARED_KEY)
    assert not ok(TOKEN, WEBHOOK_URL, PARAMS, signature, shared_key=SHARED_KEY)
    assert not ok(TOKEN, WEBHOOK_URL, PARAMS, signature, settings_header=RULE_HEADER)
    sha1 = sign_request(TOKEN, WEBHOOK_URL, PARAMS)
    assert not ok(TOKEN, WEBHOOK_URL, PARAMS, sha1, settings_header=RULE_HEADER, shared_key=SHARED_KEY)
    unknown = RULE_HEADER.replace("HMAC_SHA256", "HMAC_SHA512")
    assert not ok(TOKEN, WEBHOOK_URL, PARAMS, signature, settings_header=unknown, shared_key=SHARED_KEY)


def test_a_json_body_is_checked_by_its_hash_in_the_url() -> None:
    """With ``bodySHA256`` in the signed URL, the body it hashes validates and any other body fails; a body is
    never accepted through a URL without that hash."""
    body = '{"CallSid":"CA1"}'
    url = WEBHOOK_URL + "?bodySHA256=" + hashlib.sha256(body.encode()).hexdigest()
    signature = sign_request(TOKEN, url, {})
    assert webhook_signature_ok(TOKEN, url, {}, signature, body=body)
    assert not webhook_signature_ok(TOKEN, url, {}, signature, body='{"CallSid":"CA2"}')
    assert not webhook_signature_ok(TOKEN, WEBHOOK_URL, {}, sign_request(TOKEN, WEBHOOK_URL, {}), body=body)


def test_websocket_signature_honours_the_shared_key_header() -> None:
    """An upgrade carrying the Webhooks Rule header is checked with the SharedKey and its algorithm."""
    signature = sign_request(SHARED_KEY, WS_URL, {}, algorithm=HMAC_SHA256)
    assert websocket_signature_ok(TOKEN, WS_URL, signature, settings_header=RULE_HEADER, shared_key=SHARED_KEY)
    assert not websocket_signature_ok(TOKEN, WS_URL, signature)
    assert not websocket_signature_ok(TOKEN, WS_URL, signature, settings_header=RULE_HEADER)
