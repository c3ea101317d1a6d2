"""Run the real gateway on loopback next to simulator peers (used by tests, `gateway demo` and load tests).

``running_gateway`` binds 127.0.0.1 on a free port first, so ``GATEWAY_PUBLIC_URL`` can name the real port
and signatures are checked exactly as in production.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.adapters.app import MEDIA_PATH, STATE, VOICE_PATH, GatewayState, make_app
from gateway.settings import Settings, load_settings


@dataclass
class RunningGateway:
    """A gateway serving on loopback."""

    app: web.Application
    settings: Settings
    port: int
    auth_token: str | None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        """The voice webhook Twilio would POST to."""
        return self.base_url + VOICE_PATH

    @property
    def media_url(self) -> str:
        """The Media Stream WebSocket URL, as written in the TwiML."""
        return f"ws://127.0.0.1:{self.port}{MEDIA_PATH}"

    @property
    def state(self) -> GatewayState:
        """The app's shared state (active calls, counters)."""
        return self.app[STATE]


@asynccontextmanager
async def running_gateway(
    evi_url: str,
    *,
    hume_api_key: str | None = "test-key",
    auth_token: str | None = "",
    **overrides: Any,
) -> AsyncIterator[RunningGateway]:
    """Serve the gateway on 127.0.0.1, bridged to ``evi_url``.

    ``auth_token=""`` generates a random Twilio auth token (signatures enforced); ``None`` runs insecure.
    """
    if auth_token == "":
        auth_token = secrets.token_hex(16)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    settings = load_settings(
        None,
        environ={},
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        evi_url=evi_url,
        hume_api_key=hume_api_key,
        twilio_auth_token=auth_token,
        **overrides,
    )
    app = make_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield RunningGateway(app=app, settings=settings, port=port, auth_token=auth_token)
    finally:
        await runner.cleanup()
