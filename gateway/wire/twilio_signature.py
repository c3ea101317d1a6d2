"""``X-Twilio-Signature`` checks: voice webhook and Media Stream upgrade (twilio-media-streams.md §3.6).

Owns: thin wrappers over the SDK's ``RequestValidator`` (no hand-rolled HMAC), plus ``sign_request``
for the caller emulator and tests. URLs are the public ones Twilio requested, query string included and
still percent-encoded, never rebuilt from request headers: behind a TLS-terminating proxy those show
``http://`` and an internal host. Two modes: the auth token with HMAC-SHA1 (the default), and a Webhooks
Rule's SharedKey with the algorithm its ``X-Twilio-Webhooks-Signature-Settings`` header names (HMAC-SHA256).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import HMAC_SHA1, SIGNATURE_SETTINGS_HEADER, RequestValidator, get_signature_algorithm

from gateway.errors import ConfigError

__all__ = [
    "SETTINGS_HEADER",
    "MultiValueParams",
    "sign_request",
    "webhook_signature_ok",
    "websocket_signature_ok",
]

SETTINGS_HEADER: str = SIGNATURE_SETTINGS_HEADER
"""§3.6: present when a Webhooks Rule signs with a shared key: ``key=<id>,algorithm=HMAC_SHA256``."""


class MultiValueParams(Protocol):
    """Form parameters with repeated names, e.g. aiohttp's ``await request.post()``."""

    def __iter__(self) -> Iterator[str]: ...

    def getall(self, key: str, /) -> Sequence[object]: ...


class _FormParams:
    """Name → all values, in the shape RequestValidator reads (``set(params)`` and ``getall``)."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)

    def getall(self, key: str) -> list[str]:
        return self._values[key]


def _form_params(params: Mapping[str, str] | MultiValueParams) -> _FormParams | None:
    """Every value as text, repeated names kept (§3.6: values of a repeated name are all signed).

    None when a value is not text (a file upload, say): no Twilio webhook looks like that.
    """
    received: dict[str, list[object]] = {}
    if hasattr(params, "getall"):
        for name in params:
            if name not in received:
                received[name] = list(params.getall(name))
    else:
        received = {name: [value] for name, value in params.items()}
    values: dict[str, list[str]] = {}
    for name, items in received.items():
        texts = [v for v in items if isinstance(v, str)]
        if len(texts) != len(items):
            return None
        values[name] = texts
    return _FormParams(values)


def _validator(auth_token: str) -> RequestValidator:
    if not auth_token:
        # With an empty key anyone can compute a valid signature.
        raise ConfigError("Twilio auth token is empty; signatures cannot be checked")
    return RequestValidator(auth_token)


def _key_and_algorithm(auth_token: str, settings_header: str | None, shared_key: str | None) -> tuple[str, str] | None:
    """§3.6: without ``X-Twilio-Webhooks-Signature-Settings`` the auth token and HMAC-SHA1; with it (a Webhooks
    Rule matched) the SharedKey secret and the algorithm the header names. None: no shared key to check with."""
    if not settings_header:
        return auth_token, HMAC_SHA1
    if not shared_key:
        return None
    return shared_key, get_signature_algorithm(settings_header)


def webhook_signature_ok(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | MultiValueParams,
    signature: str | None,
    *,
    settings_header: str | None = None,
    shared_key: str | None = None,
    body: str | None = None,
) -> bool:
    """Whether ``signature`` signs the request to ``url`` (the public URL, query included, as requested) with
    ``params`` (the POST form; ``{}`` for a GET, whose parameters are in the query).

    Pass every parameter received: Twilio adds new ones without notice (§3.6). With ``settings_header``
    (a Webhooks Rule matched) the key is ``shared_key`` and the algorithm the header names (HMAC-SHA256);
    without a shared key such a request cannot be checked and is refused. ``body``: the raw body of a
    request whose URL carries ``bodySHA256`` (a JSON body): the SDK checks its hash, and ``params`` is unused.
    """
    chosen = _key_and_algorithm(auth_token, settings_header, shared_key)
    validator = _validator(auth_token if chosen is None else chosen[0])
    if chosen is None or not signature:
        return False
    signed: _FormParams | str | None
    if body is not None:
        if "bodySHA256" not in parse_qs(urlsplit(url).query):
            return False  # a body is signed only through its hash in the URL
        signed = body
    else:
        signed = _form_params(params)
    if signed is None:
        return False
    return bool(validator.validate(url, signed, signature, algorithm=chosen[1]))


def websocket_signature_ok(
    auth_token: str,
    ws_url: str,
    signature: str | None,
    *,
    settings_header: str | None = None,
    shared_key: str | None = None,
) -> bool:
    """Whether ``signature`` (lowercase ``x-twilio-signature`` on the upgrade) signs ``ws_url``.

    §3.6: Twilio signs the ws(s) URL exactly as written in the TwiML, with no parameters. The server
    sees ``https://``/``http://`` on the request; passing that here would reject every real call. The
    shared-key header is honoured as on webhooks, in case a Webhooks Rule covers the stream URL (unconfirmed).
    """
    chosen = _key_and_algorithm(auth_token, settings_header, shared_key)
    validator = _validator(auth_token if chosen is None else chosen[0])
    if not ws_url.startswith(("wss://", "ws://")):
        raise ConfigError(f"Media Stream signatures cover the wss:// URL from the TwiML, got {ws_url!r}")
    if chosen is None or not signature:
        return False
    return bool(validator.validate(ws_url, {}, signature, algorithm=chosen[1]))


def sign_request(
    auth_token: str, url: str, params: Mapping[str, str] | MultiValueParams, *, algorithm: str = HMAC_SHA1
) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for ``url`` and ``params`` ({} for the WS upgrade and
    for GET webhooks); ``algorithm`` ``HMAC_SHA256`` with a Webhooks Rule's shared key as ``auth_token``."""
    form = _form_params(params)
    if form is None:
        raise ValueError("only text parameters can be signed")
    return str(_validator(auth_token).compute_signature(url, form, algorithm=algorithm))
