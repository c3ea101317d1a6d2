"""The aiohttp application: routes, typed app state, start-up and clean-up hooks.

Routes (docs/design.md "Routes"): ``POST /twilio/voice`` (TwiML), ``GET /twilio/media`` (Media Stream
WebSocket), ``POST /twilio/stream-status`` (stream statusCallback), ``GET /healthz``.
Security (twilio-media-streams.md §3.6): with ``TWILIO_AUTH_TOKEN`` set, the webhook, the status callback
and the WebSocket upgrade must carry a valid ``X-Twilio-Signature``; otherwise 403 and no upstream session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiDictProxy, MultiMapping

from gateway.adapters.evi_client import EviConnector
from gateway.adapters.media_socket import CallRunner, Upstream, end_of_call_line, tick_calls
from gateway.adapters.metrics import CONTENT_TYPE, AppFacts, GatewayMetrics
from gateway.adapters.recordings import Recordings
from gateway.adapters.tool_client import ToolClient
from gateway.adapters.twilio_rest import TwilioRest
from gateway.core.call import Call
from gateway.core.lines import LineDirectory, SingleLine
from gateway.logs import current_call
from gateway.numbers import load_numbers
from gateway.settings import Settings
from gateway.wire.stream_token import StreamTokens, TokenVerdict
from gateway.wire.twilio_signature import SETTINGS_HEADER, webhook_signature_ok, websocket_signature_ok
from gateway.wire.twiml import busy_twiml, connect_stream_twiml, stream_url_from_public_url
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
    lines: LineDirectory = field(default_factory=SingleLine)
    active_calls: set[CallRunner] = field(default_factory=set)
    """Every Media Stream socket being served, started or still waiting for its ``start``."""
    live_calls: int = 0
    """Calls holding a slot: their ``start`` was valid (docs/operations.md §4); the rest of active_calls wait."""
    reservations: dict[str, float] = field(default_factory=dict)
    """Slots held for calls answered by the webhook whose stream has not arrived yet: CallSid → expiry (loop s)."""
    tools: ToolClient | None = None
    twilio: TwilioRest | None = None
    calls_started: int = 0
    calls_rejected: int = 0
    calls_busy: int = 0
    draining: bool = False
    """After SIGTERM (operations.md §2): not ready, new calls get the busy answer, live calls go on."""
    numbers_error: str | None = None
    """Why the last numbers-file reload failed (the previous file stays in use); None when it loaded."""
    metrics: GatewayMetrics | None = None
    recordings: Recordings | None = None
    """Recordings and post-call webhooks (docs/recordings.md); None when neither is configured."""

    def slots_in_use(self, now: float) -> int:
        """Live calls plus unexpired reservations (expired ones are dropped here)."""
        for call_sid in [sid for sid, expiry in self.reservations.items() if expiry <= now]:
            del self.reservations[call_sid]
        return self.live_calls + len(self.reservations)

    @property
    def pending_streams(self) -> int:
        """Sockets accepted that have not yet sent a valid ``start`` (they hold no slot)."""
        return len(self.active_calls) - self.live_calls


class CallSeat:
    """One socket's claim on a call slot, taken by the call's valid ``start`` (gateway.core.params.Admission)."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self.taken = False

    def admit(self, call_sid: str) -> bool:
        """The slot the webhook reserved for ``call_sid``, else a free one; False when every slot is taken."""
        state = self._state
        reserved = state.reservations.pop(call_sid, None) is not None
        now = asyncio.get_running_loop().time()
        if not reserved and state.slots_in_use(now) >= state.settings.max_concurrent_calls:
            _refused(state, "start_at_capacity")
            return False
        state.live_calls += 1
        self.taken = True
        return True

    def release(self) -> None:
        """The call ended: its slot is free."""
        if self.taken:
            self._state.live_calls -= 1
            self.taken = False


STATE = web.AppKey("gateway_state", GatewayState)


def make_app(
    settings: Settings,
    *,
    connect_upstream: Callable[[SessionStart], Awaitable[Upstream]] | None = None,
    codec: UpstreamCodec | None = None,
    lines: LineDirectory | None = None,
) -> web.Application:
    """Build the gateway app. ``connect_upstream``/``codec`` default to the EVI client; ``lines`` to the numbers
    file of the settings (a bad file raises ConfigError here, before anything listens)."""
    if lines is None:
        lines = load_numbers(settings.numbers_file) if settings.numbers_file is not None else SingleLine()
    app = web.Application()
    connector: EviConnector | None = None
    if connect_upstream is None:
        connector = EviConnector(settings)
        connect_upstream = connector.connect
        codec = connector.codec
    assert codec is not None, "a custom connect_upstream needs its codec"
    settings.call_params()  # a bad combination of limits fails here, before anything listens
    app[STATE] = GatewayState(
        settings=settings,
        tokens=StreamTokens(
            _token_secret(settings),
            ttl_s=settings.stream_token_ttl_s,
            clock_skew_s=min(TOKEN_CLOCK_SKEW_S, settings.stream_token_ttl_s / 2),
        ),
        connect_upstream=connect_upstream,
        codec=codec,
        lines=lines,
    )
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_get(VOICE_PATH, voice_webhook, allow_head=False)  # a number whose webhook is set to HTTP GET
    app.router.add_get(MEDIA_PATH, media_stream)
    app.router.add_post(STATUS_PATH, stream_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    if settings.admin_token is not None:
        app.router.add_get("/calls", list_calls)
        app.router.add_post("/calls/{call_sid}/say", say_on_call)
    state = app[STATE]
    state.metrics = GatewayMetrics(lambda: _facts(state))
    app.cleanup_ctx.append(_ticker)
    app.cleanup_ctx.append(_clients)
    app.cleanup_ctx.append(_gc_pauses)
    app.on_shutdown.append(_close_calls)
    return app


TOKEN_CLOCK_SKEW_S = 2.0
"""How far the clock of the replica that minted a stream token may run ahead of the one redeeming it."""


def _token_secret(settings: Settings) -> bytes:
    """GATEWAY_STREAM_TOKEN_SECRET, shared by every replica; a random key per process without it."""
    if settings.stream_token_secret is not None:
        return settings.stream_token_secret.get_secret_value().encode()
    if settings.twilio_auth_token is not None:  # tokens are checked: a stream reaching another process fails
        log.warning(
            "GATEWAY_STREAM_TOKEN_SECRET is unset: stream tokens use a random key of this process, so the webhook "
            "and the stream of a call must reach the same process; set it, the same on every replica, to run several"
        )
    return secrets.token_bytes(32)


class WallClockTokens:
    """Stream tokens redeemed against the wall clock: it is the clock every replica shares, so a token minted
    by one replica expires at the same moment on all of them (the loop's monotonic clock is per host)."""

    def __init__(self, tokens: StreamTokens) -> None:
        self._tokens = tokens

    def redeem(self, token: str, call_sid: str, now_s: float) -> TokenVerdict:
        """``now_s`` (the call's monotonic time) is not used: expiry is on ``time.time()``."""
        return self._tokens.redeem(token, call_sid, time.time())


async def _ticker(app: web.Application) -> AsyncIterator[None]:
    """Start the one ticker that paces every call's playout and deadlines; stop it at clean-up."""
    task = asyncio.create_task(tick_calls(app[STATE].active_calls), name="call-ticker")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _gc_pauses(app: web.Application) -> AsyncIterator[None]:
    """Time the garbage collector's pauses while the app runs (operations.md §1, ``gateway_gc_pause_seconds``)."""
    metrics = app[STATE].metrics
    assert metrics is not None  # make_app sets it before adding this hook
    metrics.gc_pauses.install()
    yield
    metrics.gc_pauses.remove()


async def _clients(app: web.Application) -> AsyncIterator[None]:
    """The HTTP clients calls share: tool endpoints (one pool) and Twilio's REST API (when credentials exist)."""
    state = app[STATE]
    settings = state.settings
    session = aiohttp.ClientSession()
    secret = settings.tool_signing_secret.get_secret_value().encode() if settings.tool_signing_secret else None
    state.tools = ToolClient(session, secret)
    if settings.twilio_account_sid and settings.twilio_auth_token:
        token = settings.twilio_auth_token.get_secret_value()
        state.twilio = TwilioRest(settings.twilio_account_sid, token, settings.twilio_api_url)
    if settings.recordings_dir is not None or settings.post_call_url is not None:
        state.recordings = Recordings(settings.recordings_dir, settings.post_call_url, session, secret, state.codec)
    yield
    if state.recordings is not None:
        await state.recordings.aclose()
    await session.close()
    if state.twilio is not None:
        await state.twilio.close()


def _public_base(request: web.Request) -> str:
    """The base URL Twilio used: GATEWAY_PUBLIC_URL (behind a proxy, request.url is not what was signed)."""
    configured = request.app[STATE].settings.public_url
    return configured or f"{request.url.scheme}://{request.url.host}:{request.url.port}"


def _auth_token(request: web.Request) -> str | None:
    token = request.app[STATE].settings.twilio_auth_token
    return token.get_secret_value() if token else None


def _requested_target(request: web.Request) -> tuple[str, str]:
    """The path and the ``?query`` (``""`` when none) of the request as it arrived, percent-encoding untouched:
    with GATEWAY_PUBLIC_URL in front, the URL Twilio requested and signed (twilio-media-streams.md §3.6)."""
    path, mark, query = request.raw_path.partition("?")
    if not path.startswith("/"):  # an absolute-form target, http://host/path
        path = request.rel_url.raw_path
    return path, mark + query


def _shared_key(request: web.Request) -> str | None:
    key = request.app[STATE].settings.twilio_webhook_shared_key
    return key.get_secret_value() if key else None


def _client_left(request: web.Request) -> web.HTTPBadRequest:
    """A client that went away before its body was complete: one line, no traceback (nobody is left to answer)."""
    log.info("%s %s: the client left before its body was complete", request.method, request.path)
    return web.HTTPBadRequest(text="request body incomplete")


async def _signed_params(request: web.Request) -> MultiMapping[Any]:
    """Twilio's parameters (the form of a POST, the query of a GET), after checking ``X-Twilio-Signature``
    over the full public URL, query string included, as Twilio signs it (twilio-media-streams.md §3.6)."""
    timeout_s = request.app[STATE].settings.webhook_body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):  # docs/operations.md §4: a body dribbled in holds nothing for long
            form: MultiDictProxy[Any] = await request.post()  # empty for a GET, and for a body that is not a form
            # A JSON body is signed through its SHA-256 in the query (bodySHA256); the SDK checks that hash.
            body = await request.text() if "bodySHA256" in request.query else None
    except ConnectionError:
        raise _client_left(request) from None
    except TimeoutError:
        log.info("%s %s: the body did not arrive within %g s", request.method, request.path, timeout_s)
        raise web.HTTPRequestTimeout(text=f"request body not complete within {timeout_s:g} s") from None
    params: MultiMapping[Any] = form if request.method == "POST" else request.query
    auth_token = _auth_token(request)
    if auth_token is None:
        return params
    path, query = _requested_target(request)
    if not webhook_signature_ok(
        auth_token,
        _public_base(request) + path + query,
        form,
        request.headers.get("X-Twilio-Signature"),
        settings_header=request.headers.get(SETTINGS_HEADER),
        shared_key=_shared_key(request),
        body=body,
    ):
        log.warning("%s %s: bad or missing X-Twilio-Signature from %s", request.method, path, request.remote)
        raise web.HTTPForbidden(text="invalid Twilio signature")
    return params


async def voice_webhook(request: web.Request) -> web.Response:
    """Answer a call with ``<Connect><Stream>`` carrying a signed single-use stream token."""
    state = request.app[STATE]
    params = await _signed_params(request)
    base = _public_base(request)
    call_sid = str(params.get("CallSid", ""))
    if not call_sid:
        raise web.HTTPBadRequest(text="CallSid missing")
    now = asyncio.get_running_loop().time()
    full = call_sid not in state.reservations and state.slots_in_use(now) >= state.settings.max_concurrent_calls
    if full or state.draining:
        # Admission happens here, before the call is answered: the caller hears why, or reaches the overflow line.
        line = state.lines.line_for(str(params.get("To", "")) or None)
        state.calls_busy += 1
        why = "draining" if state.draining else "overflow" if line.overflow_number else "busy"
        _refused(state, why)
        calls = len(state.active_calls)
        log.warning("voice webhook: %s (%d calls), call %s gets the busy answer", why, calls, call_sid)
        return web.Response(
            text=busy_twiml(line.busy_message, overflow_number=line.overflow_number), content_type="text/xml"
        )
    state.reservations[call_sid] = now + state.settings.stream_token_ttl_s
    parameters = {"token": state.tokens.mint(call_sid, time.time())}
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
    # The stream URL of the TwiML (no query); a query on the upgrade is covered too, so it must be signed.
    ws_url = stream_url_from_public_url(_public_base(request), MEDIA_PATH) + _requested_target(request)[1]
    if auth_token is not None and not websocket_signature_ok(
        auth_token,
        ws_url,
        request.headers.get("X-Twilio-Signature"),
        settings_header=request.headers.get(SETTINGS_HEADER),
        shared_key=_shared_key(request),
    ):
        log.warning("media stream: bad or missing x-twilio-signature from %s", request.remote)
        state.calls_rejected += 1
        raise web.HTTPForbidden(text="invalid Twilio signature")
    now = asyncio.get_running_loop().time()
    # docs/operations.md §4: a socket takes a call slot only with a valid start (its reservation, if the webhook
    # made one, else a free slot); until then it counts against its own small bound and start_timeout_s.
    if not state.reservations and state.slots_in_use(now) >= settings.max_concurrent_calls:
        log.warning("media stream: at capacity (%d calls), refusing", settings.max_concurrent_calls)
        state.calls_rejected += 1
        _refused(state, "upgrade_at_capacity")
        raise web.HTTPServiceUnavailable(text="at capacity")
    if state.pending_streams >= settings.max_pending_streams:
        log.warning("media stream: %d sockets already wait for their start, refusing", state.pending_streams)
        state.calls_rejected += 1
        _refused(state, "too_many_pending_streams")
        raise web.HTTPServiceUnavailable(text="too many streams waiting to start")
    # twilio-media-streams.md P13: no compression; frames bounded. The keepalive (docs/operations.md §4) is the
    # runner's own: aiohttp's heartbeat restarts its timer on every frame received, a callback per frame.
    ws = web.WebSocketResponse(
        compress=False, max_msg_size=settings.twilio_max_message_bytes, heartbeat=None, autoping=False
    )
    await ws.prepare(request)
    now = asyncio.get_running_loop().time()
    tokens = WallClockTokens(state.tokens) if auth_token is not None else None
    seat = CallSeat(state)
    call = Call(settings.call_params(), state.codec, tokens, now=now, lines=state.lines, admission=seat)
    transport = request.transport
    runner = CallRunner(
        call,
        ws,
        state.connect_upstream,
        run_tool=state.tools.run if state.tools is not None else None,
        move_call=state.twilio.transfer if state.twilio is not None else None,
        metrics=state.metrics,
        recordings=state.recordings,
        send_timeout_s=settings.send_timeout_s,
        twilio_queue_bytes=settings.twilio_send_queue_bytes,
        abort_twilio=transport.abort if transport is not None else None,
        twilio_ping_interval_s=settings.twilio_heartbeat_s,
    )
    state.active_calls.add(runner)
    state.calls_started += 1
    current_call.set(call)  # this request's task and every task of the call log with its SIDs
    try:
        await runner.run()
    finally:
        state.active_calls.discard(runner)
        seat.release()
        stats = call.statistics(asyncio.get_running_loop().time())
        if state.metrics is not None:
            state.metrics.observe(call.observed.take())
            state.metrics.call_ended(stats)
        log.info("%s", end_of_call_line(stats))
    return ws


async def stream_status(request: web.Request) -> web.Response:
    """twilio-media-streams.md §3.1: the only place a failed stream handshake's error shows up."""
    params = await _signed_params(request)
    log.info(
        "stream status: call %s stream %s %s %s",
        params.get("CallSid"),
        params.get("StreamSid"),
        params.get("StreamEvent"),
        params.get("StreamError", ""),
    )
    return web.Response(status=204)


def _refused(state: GatewayState, reason: str) -> None:
    if state.metrics is not None:
        state.metrics.refusals.labels(reason).inc()


def _facts(state: GatewayState) -> AppFacts:
    return AppFacts(
        active_calls=state.live_calls,
        pending_streams=state.pending_streams,
        reserved_slots=len(state.reservations),
        draining=state.draining,
        numbers_reload_failed=state.numbers_error is not None,
        counters={
            "calls_started": state.calls_started,
            **(state.recordings.counters() if state.recordings is not None else Recordings.ZERO),
        },
    )


async def readyz(request: web.Request) -> web.Response:
    """Readiness (operations.md §2): 503 while draining or after a failed numbers-file reload."""
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining", "active_calls": len(state.active_calls)}, status=503)
    if state.numbers_error is not None:
        return web.json_response({"status": "numbers file failed to reload", "error": state.numbers_error}, status=503)
    return web.json_response({"status": "ready", "active_calls": len(state.active_calls)})


async def metrics_page(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text; live calls' pending observations are taken first (operations.md §1)."""
    state = request.app[STATE]
    assert state.metrics is not None
    for runner in state.active_calls:
        state.metrics.observe(runner.call.observed.take())
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    """Liveness and load."""
    state = request.app[STATE]
    return web.json_response(
        {"status": "ok", "active_calls": len(state.active_calls), "calls_started": state.calls_started}
    )


def _check_admin(request: web.Request) -> None:
    """Bearer ``GATEWAY_ADMIN_TOKEN`` (compared in constant time); 401 otherwise."""
    token = request.app[STATE].settings.admin_token
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {token.get_secret_value()}" if token is not None else ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise web.HTTPUnauthorized(text="admin token required", headers={"WWW-Authenticate": "Bearer"})


async def list_calls(request: web.Request) -> web.Response:
    """``GET /calls``: the calls in progress with their EVI chat ids (admin)."""
    _check_admin(request)
    now = asyncio.get_running_loop().time()
    calls = []
    for runner in request.app[STATE].active_calls:
        call = runner.call
        stats = call.statistics(now)
        calls.append(
            {
                "call_sid": call.call_sid,
                "stream_sid": call.stream_sid,
                "state": stats.state,
                "from": call.custom_parameters.get("caller_number"),
                "to": call.custom_parameters.get("called_number"),
                "chat_id": call.upstream_session_id,
                "chat_group_id": call.upstream_group_id,
                "duration_s": stats.duration_s,
            }
        )
    return web.json_response({"calls": sorted(calls, key=lambda c: str(c["call_sid"]))})


MAX_SAY_CHARS = 2000


async def say_on_call(request: web.Request) -> web.Response:
    """``POST /calls/{call_sid}/say`` with JSON ``{"text": …}``: the agent says it on that call now (admin)."""
    _check_admin(request)
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='body must be JSON: {"text": "…"}') from None
    except ConnectionError:
        raise _client_left(request) from None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_SAY_CHARS:
        raise web.HTTPUnprocessableEntity(text=f"text must be a non-empty string of at most {MAX_SAY_CHARS} chars")
    call_sid = request.match_info["call_sid"]
    runner = next((r for r in request.app[STATE].active_calls if r.call.call_sid == call_sid), None)
    if runner is None:
        raise web.HTTPNotFound(text=f"no call {call_sid} in progress")
    actions = runner.call.operator_say(text, runner.now())
    if actions is None:
        raise web.HTTPConflict(text=f"call {call_sid} has no live conversation to speak in")
    runner.execute(actions)
    return web.json_response({"call_sid": call_sid, "said": True}, status=202)


async def _close_calls(app: web.Application) -> None:
    for runner in list(app[STATE].active_calls):
        runner.execute(runner.call.twilio_closed(runner.now()))
