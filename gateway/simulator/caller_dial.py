"""How the caller emulator sets a call up, as Twilio does: signed webhook, TwiML, signed stream upgrade.

Owns twilio-media-streams.md §0 steps 1–3 for :class:`~gateway.simulator.caller.TwilioCaller`: the form
POST with Twilio's parameters signed per §3.6 (§4), reading ``<Connect><Stream>`` and its ``<Parameter>``
children (§3.1), and the WebSocket upgrade with the lowercase ``x-twilio-signature`` (§3.6). Anything that
stops the call from being set up is a :class:`DialError` naming the stage; anything Twilio would only warn
about is passed to a ``violation`` callback and recorded.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from gateway.errors import DialError
from gateway.simulator.recording import CallRecord
from gateway.wire.twilio_signature import sign_request

__all__ = [
    "API_VERSION",
    "MAX_WS_MESSAGE_BYTES",
    "WEBHOOK_USER_AGENT",
    "open_stream",
    "post_webhook",
    "read_twiml",
]

API_VERSION = "2010-04-01"
WEBHOOK_USER_AGENT = "TwilioProxy/1.1"
MAX_WS_MESSAGE_BYTES = 16 * 1024 * 1024
_PARAMETER_MAX_CHARS = 500  # §3.1: name + value must be under 500 characters

Violation = Callable[[str], None]


async def post_webhook(
    session: aiohttp.ClientSession,
    record: CallRecord,
    violation: Violation,
    *,
    webhook_url: str,
    auth_token: str | None,
    params: dict[str, str],
    timeout_s: float,
    method: str = "POST",
    signed_url: str | None = None,
) -> str:
    """§0 step 1, §4: Twilio's parameters as a form POST (or in the query of a GET), signed per §3.6 over
    the full URL, which goes out exactly as signed (its percent-encoding untouched); returns the TwiML."""
    record.webhook_params = params
    headers = {"User-Agent": WEBHOOK_USER_AGENT}
    url, form, signed = webhook_url, params, signed_url or webhook_url
    if method == "GET":
        query = ("&" if "?" in webhook_url else "?") + urlencode(params)
        url, form, signed = url + query, {}, signed + query
    if auth_token is not None:
        headers["X-Twilio-Signature"] = sign_request(auth_token, signed, form)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    record.webhook_sent_s = asyncio.get_running_loop().time()
    try:
        async with session.request(
            method, URL(url, encoded=True), data=form or None, headers=headers, allow_redirects=False, timeout=timeout
        ) as resp:
            status, content_type, body = resp.status, resp.content_type, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DialError(f"webhook {method} {webhook_url} failed: {exc!r}", stage="webhook") from exc
    record.webhook_status = status
    if status != 200:
        raise DialError(
            f"webhook {method} {webhook_url} answered HTTP {status}, not 200 with TwiML", stage="webhook", status=status
        )
    record.twiml = body
    if content_type not in ("text/xml", "application/xml"):
        violation(f"webhook answered Content-Type {content_type!r}; TwiML needs text/xml (§4)")
    return body


def read_twiml(twiml: str, webhook_url: str, record: CallRecord, violation: Violation) -> str:
    """§3.1: ``<Response><Connect><Stream url>`` with ``<Parameter>`` children; returns the stream URL."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise DialError(f"TwiML is not well-formed XML: {exc}", stage="twiml") from None
    if root.tag != "Response":
        raise DialError(f"TwiML root is <{root.tag}>, not <Response>", stage="twiml")
    verbs = list(root)
    connect_at = next((i for i, verb in enumerate(verbs) if verb.tag == "Connect"), None)
    if connect_at is None:
        found = ", ".join(f"<{v.tag}>" for v in verbs) or "nothing"
        raise DialError(f"TwiML has no <Connect> (found {found})", stage="twiml")
    for verb in verbs:
        verb.tail = None
    record.twiml_before_connect = [ET.tostring(v, encoding="unicode") for v in verbs[:connect_at]]
    record.twiml_after_connect = [ET.tostring(v, encoding="unicode") for v in verbs[connect_at + 1 :]]
    streams = [child for child in verbs[connect_at] if child.tag == "Stream"]
    if len(streams) != 1:
        raise DialError(f"<Connect> holds {len(streams)} <Stream> elements, need exactly 1", stage="twiml")
    stream = streams[0]
    record.stream_attributes = dict(stream.attrib)
    url = stream.get("url")
    if not url:
        raise DialError("<Stream> has no url attribute", stage="twiml")
    if stream.get("track", "inbound_track") != "inbound_track":
        violation(f"<Connect><Stream track={stream.get('track')!r}>: Twilio error 31941 (§3.1)")
    for param in stream:
        if param.tag != "Parameter":
            continue
        name, value = param.get("name"), param.get("value")
        if name is None or value is None:
            raise DialError("<Parameter> needs both name and value attributes", stage="twiml")
        if len(name) + len(value) >= _PARAMETER_MAX_CHARS:
            violation(f"<Parameter name={name!r}> is {len(name) + len(value)} chars; limit 499 (§3.1)")
        record.custom_parameters[name] = value
    record.stream_url = _resolve_stream_url(url, webhook_url, violation)
    return record.stream_url


def _resolve_stream_url(url: str, webhook_url: str, violation: Violation) -> str:
    """Absolute ws/wss URLs are used exactly as written (that is what gets signed); others resolved."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        absolute = urlsplit(urljoin(webhook_url, url))
        scheme = {"http": "ws", "https": "wss"}.get(absolute.scheme)
        if scheme is None or parts.scheme:
            raise DialError(f"<Stream url={url!r}>: Twilio needs a wss URL (error 31922)", stage="twiml")
        parts = absolute._replace(scheme=scheme)
        url = urlunsplit(parts)
    if parts.query:
        violation(f"<Stream url={url!r}> has a query string; Twilio's handshake breaks (31920, P9)")
    return url


async def open_stream(
    session: aiohttp.ClientSession, url: str, *, auth_token: str | None, timeout_s: float
) -> aiohttp.ClientWebSocketResponse:
    """§0 step 3: upgrade with lowercase ``x-twilio-signature`` over the URL with no params (§3.6)."""
    headers = {}
    if auth_token is not None:
        headers["x-twilio-signature"] = sign_request(auth_token, url, {})
    try:
        async with asyncio.timeout(timeout_s):
            return await session.ws_connect(
                url,
                headers=headers,
                compress=0,
                max_msg_size=MAX_WS_MESSAGE_BYTES,
                autoclose=True,
                autoping=True,
                heartbeat=None,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout_s),
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise DialError(
            f"stream upgrade to {url} answered HTTP {exc.status}", stage="stream", status=exc.status
        ) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DialError(f"stream connect to {url} failed: {exc!r}", stage="stream") from exc
