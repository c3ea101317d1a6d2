"""The EVI-compatible chat server for tests, demos and load tests (evi-protocol.md §1–§8).

Owns :class:`EviSimulator`: the ``/v0/evi/chat`` WebSocket endpoint (path check, API key header/query or
access-token auth with HTTP 401 otherwise, 16 MB messages), one
:class:`~gateway.simulator.evi_session.EviSession` per connection, and the ``gateway simulate-evi`` entry
point (:func:`serve_simulator`, :func:`simulate_evi_main`).

Two modes. Without an agent (the default) sessions stay silent and are scripted by hand through their
public methods (``say``, ``interrupt``, ``send_error``, ``close``, ``drop``; the bridge tests do this).
With ``agent_config`` every session runs the offline :class:`~gateway.simulator.agent.VoiceAgent`
(turn detection, speech recognition and synthesis, a scripted conversation, EVI's event messages and
optional fault injection). Any other ``agent`` coroutine can drive sessions the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import logging
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import ConfigError, UpstreamProtocolError
from gateway.simulator.agent import OUTPUT_RATES_HZ, AgentConfig, VoiceAgent
from gateway.simulator.agent_script import load_agent_script
from gateway.simulator.chat_socket import ChatSocket
from gateway.simulator.evi_rest_server import RestApi
from gateway.simulator.evi_rest_store import RestStore
from gateway.simulator.evi_session import (
    AUDIO_NOT_DECLARED,
    INVALID_BASE64,
    INVALID_JSON,
    INVALID_MESSAGE,
    Agent,
    AudioChunk,
    AuthMethod,
    DeclaredAudio,
    ErrorKind,
    EviSession,
    Inbound,
    QueryTree,
    SpeechOutcome,
    SpeechResult,
)
from gateway.simulator.loopback import serve_app
from gateway.simulator.vad import TurnParams
from gateway.wire import evi_messages as evi

__all__ = [
    "AUDIO_NOT_DECLARED",
    "CHAT_PATH",
    "INVALID_BASE64",
    "INVALID_JSON",
    "INVALID_MESSAGE",
    "MAX_MESSAGE_BYTES",
    "Agent",
    "AgentConfig",
    "AudioChunk",
    "AuthMethod",
    "DeclaredAudio",
    "ErrorKind",
    "EviSession",
    "EviSimulator",
    "Inbound",
    "QueryTree",
    "SpeechOutcome",
    "SpeechResult",
    "VoiceAgent",
    "serve_simulator",
    "simulate_evi_main",
]

logger = logging.getLogger(__name__)

CHAT_PATH = "/v0/evi/chat"  # §1.1
MAX_MESSAGE_BYTES = 16 * 2**20  # §8: 16 MB per message
UNAUTHORIZED_TEXT = "Websocket initialized with invalid credentials.\n"  # §1.3: what the SDK reports for 401
TOO_MANY_TEXT = "Too many concurrent chat connections for this account.\n"
TOKEN_PATH = "/oauth2-cc/token"  # §1.3
SEND_PATH = "/v0/evi/chat/{chat_id}/send"  # §7 control plane
# Error codes of refused chats: EVI's own are unpublished (§11.6), so these are the simulator's choices.
UNKNOWN_CHAT_GROUP = ("E0720", "chat_group_not_found")
UNKNOWN_CONFIG = ("I0100", "config_not_found")  # what bridges report for an unknown config_id (§8)
STATE_FILE_NAME = "evi-rest.sqlite3"
"""The SQLite file of EVI's REST state under ``gateway simulate-evi --state-dir``."""


class EviSimulator:
    """An EVI chat server on a local port; ``async with EviSimulator() as sim: ... sim.url ...``.

    ``api_key=None`` turns auth off. ``realtime_factor`` scales the pacing of ``audio_output`` chunks:
    0 sends them as fast as possible, 1.0 at real time, 0.5 twice as fast. ``agent`` runs once per session;
    ``agent_config`` runs a :class:`VoiceAgent` instead and sets ``output_rate_hz``, ``chunk_ms`` and
    ``realtime_factor`` from the config. With ``retain_closed_sessions=False`` (long runs) closed sessions
    leave ``sessions``, so indexes shift; with ``record_audio=False`` caller audio is counted, not kept.
    The same port serves EVI's REST API for prompts, tools and configs (``rest``), kept in ``store`` and,
    with ``state_path``, in that SQLite file across restarts (evi-protocol.md §12.6).
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        output_rate_hz: int = 24000,
        chunk_ms: int = 200,
        realtime_factor: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        agent: Agent | None = None,
        agent_config: AgentConfig | None = None,
        retain_closed_sessions: bool = True,
        record_audio: bool = True,
        secret_key: str | None = None,
        token_ttl_s: float = 1800.0,
        max_sessions: int = 5,
        store: RestStore | None = None,
        accept_unknown_configs: bool = False,
        state_path: Path | None = None,
        rest_requests_per_s: float = 100.0,
    ) -> None:
        if output_rate_hz <= 0 or chunk_ms <= 0 or realtime_factor < 0:
            raise ValueError(
                f"EviSimulator needs output_rate_hz > 0, chunk_ms > 0, realtime_factor >= 0; got "
                f"{output_rate_hz}, {chunk_ms}, {realtime_factor}"
            )
        if agent is not None and agent_config is not None:
            raise ValueError("EviSimulator takes an agent or an agent_config, not both")
        self.voice_agent = VoiceAgent(agent_config) if agent_config is not None else None
        self.api_key = api_key
        self.output_rate_hz = agent_config.output_rate_hz if agent_config else output_rate_hz
        self.chunk_ms = agent_config.chunk_ms if agent_config else chunk_ms
        self.realtime_factor = agent_config.realtime_factor if agent_config else realtime_factor
        self.host = host
        self.port = port
        self.agent: Agent | None = self.voice_agent or agent
        self.retain_closed_sessions = retain_closed_sessions
        self.record_audio = record_audio
        self.sessions: list[EviSession] = []
        self.connection_attempts = 0
        self.rejected_attempts = 0
        self.store = store if store is not None else RestStore()
        """EVI's REST state (configs, prompts, tools): a chat opened with ``config_id`` follows its config."""
        self.rest = RestApi(self.store, api_key=api_key, state_path=state_path, max_requests_per_s=rest_requests_per_s)
        """EVI's REST API over ``store`` at ``/v0/evi/{prompts,tools,configs}``; saved to ``state_path`` if set."""
        self.accept_unknown_configs = accept_unknown_configs
        self.secret_key = secret_key
        self.token_ttl_s = token_ttl_s
        self.max_sessions = max_sessions
        self.tokens_issued = 0
        self.refused_busy = 0
        self._tokens: dict[str, float] = {}  # access token → expiry (loop time)
        self._groups: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._session_added = asyncio.Event()
        self._sessions_started = 0

    async def __aenter__(self) -> EviSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """``ws://host:port/v0/evi/chat`` of the running server."""
        if self._runner is None:
            raise RuntimeError("EviSimulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{CHAT_PATH}"

    @property
    def http_url(self) -> str:
        """``http://host:port``: the REST base of the same server (``/oauth2-cc/token``)."""
        return self.url.replace("ws://", "http://", 1).removesuffix(CHAT_PATH)

    @property
    def open_sessions(self) -> int:
        """Chats connected now."""
        return sum(1 for s in self.sessions if not s.closed.is_set())

    async def start(self) -> None:
        """Listen; with ``port=0`` the OS picks a free port (read it from ``port`` or ``url``).

        With an agent config the speech backends load first (ConfigError if a forced one is missing).
        """
        if self._runner is not None:
            return
        if self.voice_agent is not None:
            await self.voice_agent.prepare()
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=[self._count_not_found])
        app.router.add_get(CHAT_PATH, self._chat)
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_post(SEND_PATH, self._control_send)
        self.rest.add_routes(app)
        if self.port:
            self._runner = web.AppRunner(app, handle_signals=False)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.port).start()
        else:
            self._runner, self.port = await serve_app(app, self.host)

    async def close(self) -> None:
        """Stop listening and close every open session (1001 going away)."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        open_now = [s for s in self.sessions if not s.closed.is_set()]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(s.close(1001, "going away") for s in open_now), return_exceptions=True)
        await runner.cleanup()

    def mint_access_token(self) -> str:
        """Mint a token this simulator accepts as ``access_token`` (§1.3), like Hume's OAuth endpoint."""
        token = secrets.token_urlsafe(24)
        self._tokens[token] = asyncio.get_running_loop().time() + self.token_ttl_s
        self.tokens_issued += 1
        return token

    async def wait_session(self, index: int = 0, timeout_s: float = 5.0) -> EviSession:
        """Wait until the ``index``-th accepted session (0-based, in accept order) exists and return it."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self.sessions) <= index:
                    await self._session_added.wait()
        except TimeoutError:
            raise TimeoutError(f"no EVI session #{index} within {timeout_s} s") from None
        return self.sessions[index]

    @web.middleware
    async def _count_not_found(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Requests for paths the simulator does not serve are refusals too (HTTP 404)."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            self.connection_attempts += 1
            self.rejected_attempts += 1
            raise

    def _authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> AuthMethod | None:
        if self.api_key is None:
            return "none"
        header = headers.get(evi.API_KEY_HEADER)
        if header is not None and hmac.compare_digest(header.encode(), self.api_key.encode()):
            return "header"
        key = query.get("api_key")
        if key is not None and hmac.compare_digest(key.encode(), self.api_key.encode()):
            return "query"
        expiry = self._tokens.get(query.get("access_token", ""))
        if expiry is not None and asyncio.get_running_loop().time() < expiry:
            return "token"
        return None

    async def _token(self, request: web.Request) -> web.Response:
        """§1.3 ``POST /oauth2-cc/token``: basic auth with the API key and secret key, client-credentials grant."""
        form = await request.post()
        expected = base64.b64encode(f"{self.api_key}:{self.secret_key}".encode()).decode()
        given = request.headers.get("Authorization", "")
        if self.api_key is None or self.secret_key is None or not hmac.compare_digest(given, f"Basic {expected}"):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = self.mint_access_token()
        ttl_s = round(self.token_ttl_s)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl_s})

    async def _control_send(self, request: web.Request) -> web.Response:
        """§7 control plane: a client message (anything but ``audio_input``) delivered into a live chat."""
        if self._authenticate(request.headers, {}) is None:
            return web.json_response({"detail": "invalid API key"}, status=HTTPStatus.UNAUTHORIZED)
        chat_id = request.match_info["chat_id"]
        session = next((s for s in self.sessions if s.chat_id == chat_id and not s.closed.is_set()), None)
        if session is None:
            return web.json_response({"detail": f"no live chat {chat_id}"}, status=HTTPStatus.NOT_FOUND)
        try:
            obj = await request.json()
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or obj["type"] == "audio_input":
                raise UpstreamProtocolError("the body must be a client message other than audio_input")
            message = evi.validate_client_object(obj)
        except (ValueError, UpstreamProtocolError) as exc:
            detail = [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]
            return web.json_response({"detail": detail}, status=HTTPStatus.UNPROCESSABLE_ENTITY)
        session.inject(message)
        return web.json_response({})

    def _attach_config(self, session: EviSession) -> str | None:
        """Give the session its config (§12.4); why it is refused, if it names a config that does not exist."""
        config_id = session.config_id
        if not config_id:
            return None
        raw_version = session.query.get("config_version")
        version = int(raw_version) if raw_version and raw_version.isdigit() else None
        session.evi_config = self.store.config(config_id, version)
        if session.evi_config is None and not self.accept_unknown_configs:
            return f"config {config_id} (version {raw_version or 'latest'}) not found"
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.connection_attempts += 1
        query_pairs = parse_qsl(request.query_string, keep_blank_values=True)
        auth = self._authenticate(request.headers, dict(query_pairs))
        if auth is None:
            self.rejected_attempts += 1
            return web.Response(status=HTTPStatus.UNAUTHORIZED, text=UNAUTHORIZED_TEXT)
        if self.open_sessions >= self.max_sessions:
            # §8: an account holds 5 chats at once by default; more are refused before the upgrade.
            self.rejected_attempts += 1
            self.refused_busy += 1
            return web.Response(status=HTTPStatus.TOO_MANY_REQUESTS, text=TOO_MANY_TEXT)
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, compress=False)
        await ws.prepare(request)
        session = EviSession(
            self,
            ChatSocket(ws, request),
            self._sessions_started,
            auth,
            query_pairs,
            request.headers,
            listening=self.voice_agent is not None,
        )
        self._sessions_started += 1
        self.sessions.append(session)
        self._session_added.set()
        self._session_added = asyncio.Event()
        try:
            resumed = session.resumed_chat_group_id
            refusal = self._attach_config(session)
            if resumed is not None and resumed not in self._groups:
                await session.refuse(*UNKNOWN_CHAT_GROUP, f"no chat group {resumed!r} to resume")
            elif refusal is not None:
                await session.refuse(*UNKNOWN_CONFIG, refusal)
            else:
                self._groups.add(session.chat_group_id)
                await session.run(self.agent)
        finally:
            if not self.retain_closed_sessions:
                self.sessions.remove(session)
        return ws


async def serve_simulator(
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: str | None = None,
    agent_config: AgentConfig | None = None,
    *,
    agent: Agent | None = None,
    on_ready: Callable[[EviSimulator], None] | None = None,
    secret_key: str | None = None,
    max_sessions: int = 5,
    state_path: Path | None = None,
) -> None:
    """Run an EVI simulator until cancelled (``gateway simulate-evi``); closed sessions and audio are not kept."""
    async with EviSimulator(
        api_key=api_key,
        state_path=state_path,
        secret_key=secret_key,
        max_sessions=max_sessions,
        host=host,
        port=port,
        agent=agent,
        agent_config=agent_config,
        retain_closed_sessions=False,
        record_audio=False,
    ) as simulator:
        logger.info("EVI simulator listening on %s (auth %s)", simulator.url, "on" if api_key else "off")
        if on_ready is not None:
            on_ready(simulator)
        await asyncio.Future[None]()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway simulate-evi",
        description="Serve an EVI-compatible agent at ws://HOST:PORT/v0/evi/chat (offline speech, scripted replies).",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    add("--port", type=int, default=8765, help="listen port, 0 = any free port (default 8765)")
    add("--api-key", default="test-key", help="key clients must send as X-Hume-Api-Key or api_key (default test-key)")
    add("--no-auth", action="store_true", help="accept clients without a key")
    add("--secret-key", help="with the API key: serve access tokens at POST /oauth2-cc/token (client credentials)")
    add("--state-dir", metavar="DIR", help="keep EVI's REST state (configs, prompts, tools) in DIR/evi-rest.sqlite3")
    add("--max-sessions", type=int, default=5, help="chats open at once; more get HTTP 429 (EVI's default: 5)")
    add("--silent", action="store_true", help="no agent: sessions only record what they receive")
    add("--agent-script", metavar="PATH", help="agent script TOML (default: the bundled config/agent.example.toml)")
    add("--cheap", action="store_true", help="no speech recognition or synthesis (durations and tones; load tests)")
    add("--output-rate-hz", type=int, choices=OUTPUT_RATES_HZ, default=24000, help="audio_output WAV rate")
    add("--chunk-ms", type=int, default=200, help="audio per audio_output message (default 200)")
    add("--realtime-factor", type=float, default=0.5, help="seconds to send 1 s of speech (default 0.5; 0 = at once)")
    add("--synthesizer", choices=("auto", "espeak", "tones"), default="auto")
    add("--recognizer", choices=("auto", "pocketsphinx", "duration"), default="auto")
    add("--end-of-turn-silence-ms", type=int, default=800)
    add("--speech-detection-threshold", type=float, default=0.5)
    add("--prefix-padding-ms", type=int, default=300)
    add("--min-interruption-ms", type=int, default=800)
    add("--inactivity-timeout-s", type=float, default=120.0, help="0 = off (default 120)")
    add("--max-duration-s", type=float, default=1800.0, help="0 = off (default 1800)")
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--delay-first-audio-ms", type=float, default=0.0, help="hold back each response's audio")
    faults.add_argument("--stall-mid-response", type=int, metavar="N", help="stop each response after N chunks")
    faults.add_argument("--close-after-s", type=float, help="close each chat after this long")
    faults.add_argument("--close-code", type=int, default=1011, help="code for --close-after-s (default 1011)")
    faults.add_argument("--error-after-s", type=float, help="send an error message after this long")
    faults.add_argument("--drop-after-s", type=float, help="abort the TCP connection after this long")
    return parser


def agent_config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The :class:`AgentConfig` that ``gateway simulate-evi`` options describe (ConfigError if invalid)."""
    turn = TurnParams(
        end_of_turn_silence_ms=args.end_of_turn_silence_ms,
        speech_detection_threshold=args.speech_detection_threshold,
        prefix_padding_ms=args.prefix_padding_ms,
        min_interruption_ms=args.min_interruption_ms,
    )
    return AgentConfig(
        script=load_agent_script(args.agent_script),
        turn=turn,
        output_rate_hz=args.output_rate_hz,
        chunk_ms=args.chunk_ms,
        realtime_factor=args.realtime_factor,
        synthesizer=args.synthesizer,
        recognizer=args.recognizer,
        cheap=args.cheap,
        inactivity_timeout_s=args.inactivity_timeout_s or None,
        max_duration_s=args.max_duration_s or None,
        delay_first_audio_ms=args.delay_first_audio_ms,
        stall_mid_response=args.stall_mid_response,
        close_after_s=args.close_after_s,
        close_code=args.close_code,
        error_after_s=args.error_after_s,
        drop_after_s=args.drop_after_s,
    )


def simulate_evi_main(argv: Sequence[str]) -> int:
    """``gateway simulate-evi [options]``: serve until interrupted; 0 on Ctrl-C, 2 on a configuration error."""
    args = _parser().parse_args(list(argv))
    try:
        config = None if args.silent else agent_config_from_args(args)
    except ConfigError as exc:
        print(f"gateway simulate-evi: {exc}", file=sys.stderr)
        return 2

    def ready(simulator: EviSimulator) -> None:
        agent = simulator.voice_agent
        speech = "silent (scripted by hand)"
        if agent is not None:
            synthesizer = agent.synthesizer.name if agent.synthesizer is not None else "tones (cheap)"
            speech = f"agent {agent.config.script.source}; voice {synthesizer}; ears {agent.recognizer.name}"
        print(f"EVI simulator on {simulator.url} - {speech}", flush=True)
        kept = f"kept in {simulator.rest.state_path}" if simulator.rest.state_path else "kept in memory"
        print(f"EVI REST API on {simulator.http_url}/v0/evi/{{configs,prompts,tools}} - {kept}", flush=True)

    api_key = None if args.no_auth else args.api_key
    state_path = None
    if args.state_dir:
        try:
            Path(args.state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"gateway simulate-evi: cannot use --state-dir {args.state_dir} ({exc})", file=sys.stderr)
            return 2
        state_path = Path(args.state_dir) / STATE_FILE_NAME
    try:
        with contextlib.suppress(KeyboardInterrupt):
            serving = serve_simulator(
                args.host,
                args.port,
                api_key,
                config,
                on_ready=ready,
                secret_key=args.secret_key,
                max_sessions=args.max_sessions,
                state_path=state_path,
            )
            asyncio.run(serving)
    except ConfigError as exc:
        print(f"gateway simulate-evi: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway simulate-evi: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    return 0
