"""The aiohttp application: routes, typed app state, start-up and clean-up hooks.

Routes (docs/design.md "Routes"): ``POST /twilio/voice`` (TwiML), ``GET /twilio/media`` (Media Stream
WebSocket), ``POST /twilio/stream-status`` (stream statusCallback), ``GET /healthz``.
Security (twilio-media-streams.md §3.6): with ``TWILIO_AUTH_TOKEN`` set, the webhook, the status callback
and the WebSocket upgrade must carry a valid ``X-Twilio-Signature``; otherwise 403 and no upstream session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.adapters.evi_client import EviConnector
from gateway.adapters.media_socket import CallRunner, Upstream, end_of_call_line, tick_calls
from gateway.core.call import Call
from gateway.settings import Settings
from gateway.wire.stream_token import StreamTokens
from gateway.wire.twilio_signature import webhook_signature_ok, websocket_signature_ok
from gateway.wire.twiml import connect_stream_twiml, stream_url_from_public_url
from gateway.wire.upstream import SessionStart, UpstreamCodec

log = logging.getLogger("gateway.http")

MEDIA_PATH = "/twilio/media"
VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/stream-status"


@dataclass
class GatewayState:
    """Everything the app shares across requests (one per app, no globals)."""

    settings: Settings
    tokens: StreamTokens
    connect_upstream: Callable[[SessionStart], Awaitable[Upstream]]
    codec: UpstreamCodec
    active_calls: set[CallRunner] = field(default_factory=set)
    calls_started: int = 0
    calls_rejected: int = 0


STATE = web.AppKey("gateway_state", GatewayState)


def make_app(
    settings: Settings,
    *,
    connect_upstream: Callable[[SessionStart], Awaitable[Upstream]] | None = None,
    codec: UpstreamCodec | None = None,
) -> web.Application:
    """Build the gateway app. ``connect_upstream``/``codec`` default to the EVI client."""
    app = web.Application()
    connector: EviConnector | None = None
    if connect_upstream is None:
        connector = EviConnector(settings)
        connect_upstream = connector.connect
        codec = connector.codec
    assert codec is not None, "a custom connect_upstream needs its codec"
    app[STATE] = GatewayState(
        settings=settings,
        tokens=StreamTokens(secrets.token_bytes(32), ttl_s=settings.stream_token_ttl_s),
        connect_upstream=connect_upstream,
        codec=codec,
    )
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_get(MEDIA_PATH, media_stream)
    app.router.add_post(STATUS_PATH, stream_status)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(_ticker)
    app.on_shutdown.append(_close_calls)
    return app


async def _ticker(app: web.Application) -> AsyncIterator[None]:
    """Start the one ticker that paces every call's playout and deadlines; stop it at clean-up."""
    task = asyncio.create_task(tick_calls(app[STATE].active_calls), name="call-ticker")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _public_base(request: web.Request) -> str:
    """The base URL Twilio used: GATEWAY_PUBLIC_URL (behind a proxy, request.url is not what was signed)."""
    configured = request.app[STATE].settings.public_url
    return configured or f"{request.url.scheme}://{request.url.host}:{request.url.port}"


def _auth_token(request: web.Request) -> str | None:
    token = request.app[STATE].settings.twilio_auth_token
    return token.get_secret_value() if token else None


async def voice_webhook(request: web.Request) -> web.Response:
    """Answer a call with ``<Connect><Stream>`` carrying a signed single-use stream token."""
    state = request.app[STATE]
    params = await request.post()
    auth_token = _auth_token(request)
    base = _public_base(request)
    if auth_token is not None and not webhook_signature_ok(
        auth_token, base + VOICE_PATH, params, request.headers.get("X-Twilio-Signature")
    ):
        log.warning("voice webhook: bad or missing X-Twilio-Signature from %s", request.remote)
        raise web.HTTPForbidden(text="invalid Twilio signature")
    call_sid = str(params.get("CallSid", ""))
    if not call_sid:
        raise web.HTTPBadRequest(text="CallSid missing")
    parameters = {"token": state.tokens.mint(call_sid, asyncio.get_running_loop().time())}
    for key, form_name in (("caller_number", "From"), ("called_number", "To")):
        if value := str(params.get(form_name, "")):
            parameters[key] = value[:64]
    twiml = connect_stream_twiml(
        stream_url_from_public_url(base, MEDIA_PATH), parameters, status_callback_url=base + STATUS_PATH
    )
    log.info("voice webhook: call %s answered with a media stream", call_sid)
    return web.Response(text=twiml, content_type="text/xml")


async def media_stream(request: web.Request) -> web.StreamResponse:
    """The Media Stream WebSocket: one call, bridged to one upstream session."""
    state = request.app[STATE]
    settings = state.settings
    auth_token = _auth_token(request)
    ws_url = stream_url_from_public_url(_public_base(request), MEDIA_PATH)
    if auth_token is not None and not websocket_signature_ok(
        auth_token, ws_url, request.headers.get("X-Twilio-Signature")
    ):
        log.warning("media stream: bad or missing x-twilio-signature from %s", request.remote)
        state.calls_rejected += 1
        raise web.HTTPForbidden(text="invalid Twilio signature")
    if len(state.active_calls) >= settings.max_concurrent_calls:
        log.warning("media stream: at capacity (%d calls), refusing", settings.max_concurrent_calls)
        state.calls_rejected += 1
        raise web.HTTPServiceUnavailable(text="at capacity")
    # twilio-media-streams.md P13: no compression; frames bounded.
    ws = web.WebSocketResponse(compress=False, max_msg_size=settings.twilio_max_message_bytes)
    await ws.prepare(request)
    now = asyncio.get_running_loop().time()
    call = Call(settings.call_params(), state.codec, state.tokens if auth_token is not None else None, now=now)
    runner = CallRunner(call, ws, state.connect_upstream)
    state.active_calls.add(runner)
    state.calls_started += 1
    try:
        await runner.run()
    finally:
        state.active_calls.discard(runner)
        log.info("%s", end_of_call_line(call, asyncio.get_running_loop().time()))
    return ws


async def stream_status(request: web.Request) -> web.Response:
    """twilio-media-streams.md §3.1: the only place a failed stream handshake's error shows up."""
    params = await request.post()
    auth_token = _auth_token(request)
    if auth_token is not None and not webhook_signature_ok(
        auth_token, _public_base(request) + STATUS_PATH, params, request.headers.get("X-Twilio-Signature")
    ):
        raise web.HTTPForbidden(text="invalid Twilio signature")
    log.info(
        "stream status: call %s stream %s %s %s",
        params.get("CallSid"),
        params.get("StreamSid"),
        params.get("StreamEvent"),
        params.get("StreamError", ""),
    )
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    """Liveness and load."""
    state = request.app[STATE]
    return web.json_response(
        {"status": "ok", "active_calls": len(state.active_calls), "calls_started": state.calls_started}
    )


async def _close_calls(app: web.Application) -> None:
    for runner in list(app[STATE].active_calls):
        runner.execute(runner.call.twilio_closed(runner.now()))
