"""``X-Twilio-Signature`` checks: voice webhook and Media Stream upgrade (twilio-media-streams.md §3.6).

Owns: thin wrappers over the SDK's ``RequestValidator`` (no hand-rolled HMAC), plus ``sign_request``
for the caller emulator and tests. URLs are the public ones Twilio requested, never rebuilt from
request headers: behind a TLS-terminating proxy those show ``http://`` and an internal host.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from twilio.request_validator import RequestValidator

from gateway.errors import ConfigError

__all__ = ["MultiValueParams", "sign_request", "webhook_signature_ok", "websocket_signature_ok"]


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


def webhook_signature_ok(
    auth_token: str,
    url: str,
    params: Mapping[str, str] | MultiValueParams,
    signature: str | None,
) -> bool:
    """Whether ``signature`` signs the POST to ``url`` (the public URL, query included) with ``params``.

    Pass every parameter received: Twilio adds new ones without notice (§3.6).
    """
    validator = _validator(auth_token)
    if not signature:
        return False
    form = _form_params(params)
    if form is None:
        return False
    return bool(validator.validate(url, form, signature))


def websocket_signature_ok(auth_token: str, ws_url: str, signature: str | None) -> bool:
    """Whether ``signature`` (lowercase ``x-twilio-signature`` on the upgrade) signs ``ws_url``.

    §3.6: Twilio signs the ws(s) URL exactly as written in the TwiML, with no parameters. The server
    sees ``https://``/``http://`` on the request; passing that here would reject every real call.
    """
    validator = _validator(auth_token)
    if not ws_url.startswith(("wss://", "ws://")):
        raise ConfigError(f"Media Stream signatures cover the wss:// URL from the TwiML, got {ws_url!r}")
    if not signature:
        return False
    return bool(validator.validate(ws_url, {}, signature))


def sign_request(auth_token: str, url: str, params: Mapping[str, str] | MultiValueParams) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for ``url`` and ``params`` ({} for the WS upgrade)."""
    form = _form_params(params)
    if form is None:
        raise ValueError("only text parameters can be signed")
    return str(_validator(auth_token).compute_signature(url, form))
